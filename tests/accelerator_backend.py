"""A test accelerator: torch's PrivateUse1 device, registered from Python, whose tensors live in CPU memory.

The suite has no GPU, yet the code that only runs on an accelerator (``device.type != "cpu"`` branches, device
augmentation, memory-based batch sizing, device RNG states, autocast on the device) must run somewhere. After
:func:`register`, ``torch.device("testacc")`` is a real device type to torch (``tensor.device.type == "testacc"``,
``tensor.is_cpu`` is False, ``Module.to("testacc")``, ``torch.get_device_module("testacc")``, autocast, device
generators), and

* every tensor on it is a wrapper (:class:`AccTensor`) around a CPU tensor; every aten op runs on the CPU tensors;
* an op that mixes its tensors with non-scalar CPU tensors raises :class:`MixedDeviceError`, as CUDA would (copies
  between the devices are allowed, and so are CPU index tensors in indexing, as on CUDA);
* its device module (``torch.testacc``) answers memory queries from a configurable budget
  (:func:`set_memory_budget`: ``mem_get_info``, ``memory_allocated``, ``max_memory_allocated``,
  ``reset_peak_memory_stats``), raises ``torch.OutOfMemoryError`` past the budget, and keeps its own RNG
  (``manual_seed``, ``get_rng_state``/``set_rng_state``, ``*_all``) apart from the CPU's (a CPU generator passed
  to an op of the device is not detected: generators lose their Python type through the dispatcher);
* :data:`COUNTS` counts host/device traffic: ``to_host`` (copies to the CPU, ``.item()``), ``to_device`` (copies
  from the CPU), ``syncs`` (ops whose result size depends on the data, e.g. ``nonzero``), each with its call site.

A process registers the backend once (PrivateUse1 can be renamed once); :func:`register` is idempotent.
"""
from __future__ import annotations

import functools
import os
import traceback
import weakref
from collections import Counter
from typing import Any, Optional

import torch
from torch.utils._pytree import tree_flatten, tree_map

NAME = "testacc"
DEVICE: torch.device = torch.device("cpu")  # torch.device("testacc", 0) once registered
aten = torch.ops.aten
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

COPIES = {aten._to_copy.default, aten.copy_.default, aten._copy_from.default, aten._copy_from_and_resize.default,
          aten.lift_fresh.default, aten.lift_fresh_copy.default, aten.to.dtype_layout, aten.to.device}
INDEXING = {aten.index.Tensor, aten.index_put_.default, aten.index_put.default, aten._index_put_impl_.default,
            aten._unsafe_index.Tensor, aten._unsafe_index_put.default}  # CPU index tensors are fine (as on CUDA)
SYNCING = {aten.nonzero.default, aten.nonzero_static.default, aten.masked_select.default, aten.unique_dim.default,
           aten._unique2.default, aten.unique_consecutive.default, aten.repeat_interleave.Tensor,
           aten.equal.default, aten.is_nonzero.default, aten._assert_async.default, aten._assert_async.msg}


class MixedDeviceError(RuntimeError):
    """An op received tensors of the test accelerator and non-scalar CPU tensors."""


class _Memory:
    """Bytes held by live tensors of the device, their peak, and the budget that ``mem_get_info`` reports."""

    def __init__(self) -> None:
        self.budget = 16 * 2 ** 30
        self.allocated = 0
        self.peak = 0
        self.storages: dict[int, list[int]] = {}  # storage pointer -> [bytes, live wrappers]

    def track(self, wrapper: "AccTensor", elem: torch.Tensor) -> None:
        storage = elem.untyped_storage()
        key, nbytes = storage.data_ptr(), storage.nbytes()
        if key == 0 or nbytes == 0:
            return
        entry = self.storages.get(key)
        if entry is None:
            if self.allocated + nbytes > self.budget:
                raise torch.OutOfMemoryError(f"{NAME}: tried to allocate {nbytes} bytes with {self.allocated} of "
                                             f"{self.budget} in use (test budget)")
            entry = self.storages[key] = [nbytes, 0]
            self.allocated += nbytes
            self.peak = max(self.peak, self.allocated)
        entry[1] += 1
        weakref.finalize(wrapper, self._release, key)

    def _release(self, key: int) -> None:
        entry = self.storages.get(key)
        if entry is not None:
            entry[1] -= 1
            if entry[1] == 0:
                del self.storages[key]
                self.allocated -= entry[0]


MEMORY = _Memory()
COUNTS: Counter = Counter()
SITES: dict[str, Counter] = {"to_host": Counter(), "to_device": Counter(), "syncs": Counter()}
_OWN_GEN = torch._C.Generator("cpu")  # the device's default generator (not the CPU's)
_OWN_GEN.manual_seed(0)
_SHARED = [False]


def share_cpu_rng(shared: bool = True) -> None:
    """Draw the device's unseeded random numbers from the CPU's global generator (in a run's order, as a CPU run
    draws them: the device run then equals the CPU run) instead of the device's own generator (the default)."""
    _SHARED[0] = bool(shared)


def _device_gen() -> torch.Generator:
    return torch.default_generator if _SHARED[0] else _OWN_GEN


def _site() -> str:
    """file:line of the innermost frame of this repository's code outside tests/ (or '?')."""
    for frame in reversed(traceback.extract_stack()[:-2]):
        path = frame.filename
        if path.startswith(ROOT + os.sep) and os.sep + ".venv" + os.sep not in path and \
                not path.startswith(os.path.join(ROOT, "tests") + os.sep):
            return f"{os.path.relpath(path, ROOT)}:{frame.lineno}"
    return "?"


def _count(kind: str) -> None:
    COUNTS[kind] += 1
    SITES[kind][_site()] += 1


def reset_counts() -> None:
    COUNTS.clear()
    for sites in SITES.values():
        sites.clear()


class AccGenerator(torch._C.Generator):
    """A generator of the test accelerator (CPU-backed): ``torch.Generator(device="testacc")`` returns one."""

    @property
    def device(self) -> torch.device:  # type: ignore[override]
        return DEVICE


class AccTensor(torch.Tensor):
    """A tensor of the test accelerator: ``elem`` holds its values in CPU memory."""

    elem: torch.Tensor
    __slots__ = ["elem"]

    @staticmethod
    def __new__(cls, elem: torch.Tensor, requires_grad: bool = False) -> "AccTensor":
        out = torch.Tensor._make_wrapper_subclass(
            cls, elem.size(), strides=elem.stride(), storage_offset=elem.storage_offset(), dtype=elem.dtype,
            layout=elem.layout, device=DEVICE, requires_grad=requires_grad)
        out.elem = elem
        MEMORY.track(out, elem)
        return out

    def __reduce_ex__(self, protocol: int) -> Any:
        """Pickled as its values (``torch.save`` of a device tensor): loads as a CPU tensor, as
        ``map_location="cpu"`` loads a CUDA one, with ``weights_only=True``."""
        _count("to_host")
        return self.elem.detach().clone().__reduce_ex__(protocol)

    def tolist(self) -> Any:
        """A copy to the host (as on CUDA; ``.numpy()`` stays an error, as there)."""
        _count("to_host")
        return self.elem.tolist()

    def __repr__(self, *, tensor_contents: Any = None) -> str:
        return f"AccTensor({self.elem!r}, device='{NAME}:0')"

    @classmethod
    def __torch_dispatch__(cls, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is aten._local_scalar_dense.default:
            _count("to_host")
            return args[0].elem.item()
        if func in SYNCING:
            _count("syncs")
        if func is aten._to_copy.default or func is aten.copy_.default:
            return _copy(func, args, kwargs)
        leaves, _ = tree_flatten((args, kwargs))
        cpu = [t for t in leaves if isinstance(t, torch.Tensor) and not isinstance(t, AccTensor)
               and t.device.type == "cpu" and t.dim() > 0]
        if cpu and func not in INDEXING:
            raise MixedDeviceError(f"{func} at {_site()} mixes tensors of {NAME} with CPU tensors of shapes "
                                   f"{[tuple(t.shape) for t in cpu]}")
        if func in INDEXING and any(isinstance(t, torch.Tensor) and not isinstance(t, AccTensor) and t.dim() > 0
                                    for t in tree_flatten((args[0], args[2:] if len(args) > 2 else ()))[0]):
            raise MixedDeviceError(f"{func} at {_site()}: a CPU tensor indexed into or written to {NAME}")
        kwargs = _with_device_generator(func, kwargs)
        out = func(*tree_map(_unwrap, args), **tree_map(_unwrap, kwargs))
        if func._schema.is_mutable:  # in-place and out= ops return their own (wrapped) arguments
            mine = {id(t.elem): t for t in leaves if isinstance(t, AccTensor)}
            return tree_map(lambda r: mine.get(id(r), r) if isinstance(r, torch.Tensor) else r,
                            tree_map(lambda r: r if id(r) in mine else _wrap(r), out))
        return tree_map(_wrap, out)


def _unwrap(x: Any) -> Any:
    if isinstance(x, AccTensor):
        return x.elem
    if isinstance(x, torch.device) and x.type == NAME:
        return torch.device("cpu")
    if isinstance(x, AccGenerator):
        return x
    return x


def _wrap(x: Any) -> Any:
    return AccTensor(x) if isinstance(x, torch.Tensor) and not isinstance(x, AccTensor) else x


def _with_device_generator(func, kwargs: dict) -> dict:
    """Random ops without a generator draw from the device's default generator (not the CPU's)."""
    if any(a.name == "generator" for a in func._schema.arguments) and kwargs.get("generator") is None:
        return {**kwargs, "generator": _device_gen()}
    return kwargs


def _target(kwargs: dict) -> Optional[torch.device]:
    device = kwargs.get("device")
    return torch.device(device) if device is not None else None


def _copy(func, args, kwargs):
    """Copies between the devices (counted) and within the device."""
    if func is aten._to_copy.default:
        src = args[0]
        target = _target(kwargs) or src.device
        rest = {k: v for k, v in kwargs.items() if k != "device"}
        value = src.elem if isinstance(src, AccTensor) else src
        out = aten._to_copy.default(value, **rest, device=torch.device("cpu"))
        if target.type == NAME:
            if not isinstance(src, AccTensor):
                _count("to_device")
            return AccTensor(out)
        _count("to_host")
        return out
    dst, src = args[0], args[1]
    if isinstance(dst, AccTensor) and not isinstance(src, AccTensor):
        if src.dim() > 0 or src.device.type == "cpu":
            _count("to_device")
        dst.elem.copy_(src, *args[2:], **kwargs)
    elif isinstance(dst, AccTensor):
        dst.elem.copy_(src.elem, *args[2:], **kwargs)
    else:
        _count("to_host")
        dst.copy_(src.elem, *args[2:], **kwargs)
    return dst


def _factory(op, *args, **kwargs):
    """The PrivateUse1 kernel of every op that reaches it without a device tensor (``torch.empty(device=...)``,
    ``empty_strided``, ...): run on the CPU, wrap the result."""
    kwargs = _with_device_generator(op, kwargs)
    out = op(*tree_map(_unwrap, args), **tree_map(_unwrap, kwargs))
    return tree_map(_wrap, out)


def _copy_from(src: torch.Tensor, dst: torch.Tensor, non_blocking: bool = False) -> torch.Tensor:
    """``dst.copy_(src)`` where one side is a device tensor, called by torch's own copy kernel."""
    if isinstance(dst, AccTensor) and not isinstance(src, AccTensor):
        _count("to_device")
    elif not isinstance(dst, AccTensor):
        _count("to_host")
    (dst.elem if isinstance(dst, AccTensor) else dst).copy_(src.elem if isinstance(src, AccTensor) else src)
    return dst


class _DeviceModule:
    """``torch.testacc``: the device module that torch's device-generic APIs call."""

    @staticmethod
    def is_available() -> bool:
        return True

    @staticmethod
    def is_initialized() -> bool:
        return True

    @staticmethod
    def _is_in_bad_fork() -> bool:
        return False

    @staticmethod
    def _lazy_init() -> None:
        return None

    @staticmethod
    def device_count() -> int:
        return 1

    @staticmethod
    def current_device() -> int:
        return 0

    @staticmethod
    def set_device(device: Any) -> None:
        return None

    @staticmethod
    def synchronize(device: Any = None) -> None:
        COUNTS["synchronize"] += 1

    @staticmethod
    def empty_cache() -> None:
        return None

    @staticmethod
    def mem_get_info(device: Any = None) -> tuple[int, int]:
        return max(MEMORY.budget - MEMORY.allocated, 0), MEMORY.budget

    @staticmethod
    def memory_allocated(device: Any = None) -> int:
        return MEMORY.allocated

    @staticmethod
    def max_memory_allocated(device: Any = None) -> int:
        return MEMORY.peak

    @staticmethod
    def memory_reserved(device: Any = None) -> int:
        return MEMORY.allocated

    @staticmethod
    def reset_peak_memory_stats(device: Any = None) -> None:
        MEMORY.peak = MEMORY.allocated

    @staticmethod
    def get_rng_state(device: Any = None) -> torch.Tensor:
        return _device_gen().get_state()

    @staticmethod
    def set_rng_state(state: torch.Tensor, device: Any = None) -> None:
        _device_gen().set_state(state.cpu())

    @staticmethod
    def get_rng_state_all() -> list[torch.Tensor]:
        return [_device_gen().get_state()]

    @staticmethod
    def set_rng_state_all(states: list[torch.Tensor]) -> None:
        _device_gen().set_state(states[0].cpu())

    @staticmethod
    def manual_seed(seed: int) -> None:
        _device_gen().manual_seed(int(seed))

    manual_seed_all = manual_seed

    @staticmethod
    def seed() -> None:
        _device_gen().seed()

    seed_all = seed

    @staticmethod
    def initial_seed() -> int:
        return _device_gen().initial_seed()

    @staticmethod
    def is_bf16_supported(including_emulation: bool = True) -> bool:
        return True

    @staticmethod
    def get_amp_supported_dtype() -> list[torch.dtype]:
        return [torch.bfloat16, torch.float16]

    @staticmethod
    def get_device_name(device: Any = None) -> str:
        return "test accelerator (CPU memory)"

    @staticmethod
    def get_device_properties(device: Any = None) -> Any:
        from types import SimpleNamespace
        return SimpleNamespace(name="test accelerator", total_memory=MEMORY.budget, multi_processor_count=1)


def set_memory_budget(nbytes: int) -> None:
    """What ``mem_get_info`` reports as total memory; allocations past it raise ``torch.OutOfMemoryError``."""
    MEMORY.budget = int(nbytes)


_REGISTERED: list[Any] = []


def register() -> torch.device:
    """Register the test accelerator in this process (once) and return its device."""
    global DEVICE
    if _REGISTERED:
        return DEVICE
    from torch.utils.backend_registration import _setup_privateuseone_for_python_backend
    _setup_privateuseone_for_python_backend(NAME, backend_module=_DeviceModule())
    lib = torch.library.Library("_", "IMPL")
    lib.fallback(_factory, "PrivateUse1")
    lib.fallback(torch.library.fallthrough_kernel, "AutocastPrivateUse1")
    casts = torch.library.Library("aten", "IMPL")
    casts.impl("_copy_from", _copy_from, "PrivateUse1")  # reached below the Python key (torch.tensor(..., device=))
    casts.impl("_copy_from_and_resize", _copy_from, "PrivateUse1")
    from tests.accelerator_autocast import FP32, LOWER, PROMOTE, autocast_kernel
    for name in sorted(LOWER | FP32 | PROMOTE):
        packet = getattr(aten, name, None)
        for overload in packet.overloads() if packet is not None else ():
            op = getattr(packet, overload)
            if "out" in overload or any(a.alias_info is not None and a.alias_info.is_write
                                        for a in op._schema.arguments):
                continue  # out= and in-place variants run as called (as in CUDA's policy)
            casts.impl(name if overload == "default" else f"{name}.{overload}",
                       functools.partial(autocast_kernel, op, NAME), "AutocastPrivateUse1")
    _REGISTERED.append(casts)
    _REGISTERED.append(lib)
    DEVICE = torch.device(NAME, 0)
    _patch_generator()
    return DEVICE


def _patch_generator() -> None:
    """``torch.Generator(device="testacc")`` makes an :class:`AccGenerator` (torch has no Python hook for it)."""
    original = torch.Generator

    class Generator(original):  # type: ignore[misc, valid-type]
        def __new__(cls, device: Any = "cpu") -> torch.Generator:
            if torch.device(device).type == NAME:
                return AccGenerator("cpu")
            return original(device)

    Generator.__name__ = Generator.__qualname__ = "Generator"
    torch.Generator = Generator
