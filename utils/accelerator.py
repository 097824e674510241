"""Everything that differs by accelerator, keyed on the device type (the only module that names one).

Memory queries, synchronisation, RNG states, autocast, pinned memory, fused optimisers, TF32 switches, the
process-group backend and memory-based batch sizing go through torch's device-generic APIs
(``torch.accelerator``, ``torch.get_device_module``), so the same code serves CUDA, ``mps``, ``xpu`` and a backend
registered from Python (``torch.utils.rename_privateuse1_backend`` + ``torch._register_device_module``).

Contract: the device module of a backend (``torch.get_device_module(device.type)``) provides

* required: ``is_available()``, ``device_count()``, ``synchronize(device)``;
* RNG (checkpoints, :func:`utils.seeding.seeded`): ``get_rng_state(device)``, ``set_rng_state(state, device)``, and
  ``torch.Generator(device=...)`` works on the device;
* memory (optional): ``mem_get_info(device) -> (free, total)`` bytes, ``memory_allocated(device)``,
  ``max_memory_allocated(device)``, ``reset_peak_memory_stats(device)``; optional ``get_device_name(device)``.

Documented fallbacks where a backend lacks an operation: no ``mem_get_info`` -> the automatic batch sizes take
their CPU values; no memory counters -> peak memory is reported as unknown (None); no autocast -> a one-line error
for bf16; pinned memory only where the accelerator is torch's current one; fused optimisers only on ``cuda``,
``xpu`` and ``mps`` (elsewhere the foreach implementation); TF32 switches only act on CUDA (a no-op elsewhere).
"""
from __future__ import annotations

import contextlib
import functools
import warnings
from typing import Any, Callable, Optional, Union

import torch

from utils.errors import UserError

DeviceLike = Union[str, torch.device]
OutOfMemoryError = torch.OutOfMemoryError  # what every backend raises when an allocation fails
FUSED_OPTIMIZER_TYPES = ("cuda", "xpu", "mps")
PINNED_MEMORY_TYPES = ("cuda", "xpu")


def as_device(device: DeviceLike) -> torch.device:
    return device if isinstance(device, torch.device) else torch.device(device)


def is_accelerator(device: DeviceLike) -> bool:
    """True for any device but the CPU (and ``meta``)."""
    return as_device(device).type not in ("cpu", "meta")


def device_module(device: DeviceLike) -> Any:
    """The backend's module (``torch.cuda``, ``torch.mps``, a registered PrivateUse1 module, ...)."""
    kind = as_device(device).type
    try:
        return torch.get_device_module(kind)
    except RuntimeError:
        raise UserError(f"device type '{kind}' has no torch backend module; use --device cpu") from None


def _index(device: torch.device) -> int:
    if device.index is not None:
        return device.index
    current = getattr(device_module(device), "current_device", None)
    return int(current()) if callable(current) else 0


def _optional(device: torch.device, name: str) -> Optional[Callable]:
    return getattr(device_module(device), name, None) if is_accelerator(device) else None


def is_available(kind: str) -> bool:
    """Whether the backend ``kind`` (``cuda``, ``mps``, ...) is usable on this machine (``cpu``: always)."""
    if kind == "cpu":
        return True
    try:
        mod = device_module(kind)
    except UserError:
        return False
    return bool(getattr(mod, "is_available", lambda: False)())


def device_count(kind: str) -> int:
    """Devices of backend ``kind`` on this machine (0 when it is absent)."""
    if kind == "cpu" or not is_available(kind):
        return 0
    return int(device_module(kind).device_count())


def current_type() -> Optional[str]:
    """The accelerator torch uses on this machine (``cuda``, ``mps``, ``xpu``, a PrivateUse1 name), or None."""
    acc = torch.accelerator.current_accelerator(check_available=True)
    if acc is not None:
        return acc.type
    name = torch._C._get_privateuse1_backend_name()
    return name if name != "privateuseone" and is_available(name) else None


def default_device() -> torch.device:
    """The best available device: the machine's accelerator (device 0 of it, or the current one), else the CPU."""
    kind = current_type()
    if kind is None:
        return torch.device("cpu")
    return torch.device(kind, _index(torch.device(kind))) if kind != "mps" else torch.device("mps")


def check_device(name: str) -> torch.device:
    """``torch.device(name)``, refused in one line when the name is bad or its backend is absent."""
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UserError(f"bad --device '{name}'; use cpu, cuda, cuda:N, mps or xpu") from None
    if device.type == "meta":
        raise UserError(f"--device {name}: not a device that computes (it holds shapes only); use --device cpu or "
                        f"leave --device out to pick the best one")
    if is_accelerator(device):
        if not is_available(device.type):
            raise UserError(f"--device {name}: {device.type} is not available on this machine or in this torch build "
                            f"({torch.__version__}); use --device cpu, or leave --device out to pick the best one")
        if device.index is not None and device.index >= device_count(device.type):
            raise UserError(f"--device {name}: this machine has {device_count(device.type)} {device.type} "
                            f"device(s); pick an index below that")
    return device


def set_current(device: torch.device) -> None:
    """Make ``device`` the current device of its backend (a no-op on the CPU)."""
    if is_accelerator(device) and device.index is not None:
        setter = getattr(device_module(device), "set_device", None)
        if callable(setter):
            setter(device)


def process_group_backend(device: torch.device) -> str:
    """The collective backend for ``device``: nccl on CUDA, xccl on XPU, gloo on the CPU and anything else."""
    import torch.distributed as dist
    return dist.Backend.default_device_backend_map.get(device.type, "gloo")


# ----- synchronisation and memory -----------------------------------------------------------------------------
def synchronize(device: DeviceLike) -> None:
    """Wait for ``device``'s queued work (a no-op on the CPU)."""
    device = as_device(device)
    if is_accelerator(device):
        device_module(device).synchronize(device)


def free_memory(device: DeviceLike) -> Optional[int]:
    """Free bytes on ``device``, or None (the CPU, or a backend without ``mem_get_info``)."""
    device = as_device(device)
    query = _optional(device, "mem_get_info")
    return None if query is None else int(query(device)[0])


def memory_allocated(device: DeviceLike) -> Optional[int]:
    """Bytes held by tensors on ``device``, or None where the backend does not count them."""
    device = as_device(device)
    query = _optional(device, "memory_allocated")
    return None if query is None else int(query(device))


def reset_peak_memory(device: DeviceLike) -> None:
    """Restart the peak-memory counter of ``device`` (a no-op where there is none)."""
    device = as_device(device)
    reset = _optional(device, "reset_peak_memory_stats")
    if reset is not None:
        reset(device)


def peak_memory(device: DeviceLike) -> Optional[int]:
    """Peak bytes held by tensors on ``device`` since the last reset, or None where the backend does not count."""
    device = as_device(device)
    query = _optional(device, "max_memory_allocated")
    return None if query is None else int(query(device))


def peak_memory_mib(device: DeviceLike) -> Optional[float]:
    peak = peak_memory(device)
    return None if peak is None else peak / 2 ** 20


def device_name(device: DeviceLike) -> str:
    """The product name of ``device`` where the backend reports one, else ``str(device)``."""
    device = as_device(device)
    query = _optional(device, "get_device_name")
    return str(device) if query is None else str(query(device))


def batch_for_memory(device: DeviceLike, bytes_per_item: float, fallback: int, fraction: float = 0.5,
                     low: int = 8, high: int = 1024) -> int:
    """The largest multiple of 8 in [low, high] whose items need at most ``fraction`` of ``device``'s free memory;
    ``fallback`` where the free memory is unknown (the CPU, a backend without ``mem_get_info``)."""
    free = free_memory(device)
    return fallback if free is None else fit_batch(bytes_per_item, free, fraction, low, high)


def fit_batch(bytes_per_item: float, free_bytes: float, fraction: float = 0.5, low: int = 8, high: int = 1024) -> int:
    """The largest multiple of 8 in [low, high] whose items need at most ``fraction`` of ``free_bytes``."""
    fit = int(fraction * free_bytes // max(bytes_per_item, 1.0))
    return max(low, min(high, fit // 8 * 8))


def measure_peak(device: DeviceLike, work: Callable[[], Any]) -> Optional[int]:
    """Peak bytes that ``work()`` allocates on ``device`` above what was held before it, or None (no counters)."""
    device = as_device(device)
    if _optional(device, "max_memory_allocated") is None or _optional(device, "memory_allocated") is None:
        work()
        return None
    synchronize(device)
    base = memory_allocated(device)
    reset_peak_memory(device)
    work()
    synchronize(device)
    return int(peak_memory(device) or 0) - int(base or 0)


# ----- random number generators -------------------------------------------------------------------------------
def get_rng_state(device: DeviceLike) -> torch.Tensor:
    device = as_device(device)
    mod = device_module(device)
    return mod.get_rng_state() if device.type == "mps" else mod.get_rng_state(_index(device))


def set_rng_state(device: DeviceLike, state: torch.Tensor) -> None:
    device = as_device(device)
    mod = device_module(device)
    if device.type == "mps":
        mod.set_rng_state(state)
    else:
        mod.set_rng_state(state, _index(device))


def seed_rng(device: DeviceLike, seed: int) -> None:
    """Seed the global RNG of ``device`` (an accelerator) with ``seed``, as ``torch.cuda.manual_seed`` does."""
    device = as_device(device)
    set_rng_state(device, torch.Generator(device=device).manual_seed(seed).get_state())


def rng_states() -> Optional[dict[str, Any]]:
    """The global RNG states of every device of the machine's accelerator (None without one), for checkpoints."""
    kind = current_type()
    if kind is None:
        return None
    count = 1 if kind == "mps" else device_count(kind)
    return {"type": kind, "states": [get_rng_state(torch.device(kind, i) if kind != "mps" else torch.device(kind))
                                     for i in range(count)]}


def set_rng_states(saved: Optional[dict[str, Any]]) -> None:
    """Restore :func:`rng_states`. A checkpoint of another accelerator type is skipped; one written on a machine
    with more devices of this type restores the devices present (the others' states are not needed here), with a
    warning; nothing is restored without an accelerator."""
    if not saved:
        return
    kind, states = saved["type"], list(saved["states"])
    if current_type() != kind:
        return
    count = 1 if kind == "mps" else device_count(kind)
    if len(states) > count:
        warnings.warn(f"the checkpoint holds the RNG states of {len(states)} {kind} devices, this machine has "
                      f"{count}: restoring those of the first {count}")
    for i, state in enumerate(states[:count]):
        set_rng_state(torch.device(kind, i) if kind != "mps" else torch.device(kind), state)


# ----- numerics and kernels -----------------------------------------------------------------------------------
def autocast_type(device: DeviceLike) -> str:
    """The ``torch.autocast`` device type of ``device``; a one-line error where torch has no autocast for it."""
    kind = as_device(device).type
    if not torch.amp.is_autocast_available(kind):
        raise UserError(f"torch has no autocast (bf16) on {kind}; run with -O 0 or -O 1 (fp32)")
    return kind


def pin_memory(device: Optional[DeviceLike]) -> bool:
    """Whether loaders feeding ``device`` should pin host memory (the accelerator must be torch's current one)."""
    if device is None:
        return False
    kind = as_device(device).type
    return kind in PINNED_MEMORY_TYPES and current_type() == kind


def fused_optimizer(params: list[torch.Tensor]) -> bool:
    """Whether Adam/AdamW over ``params`` may use the fused kernel (one kernel per step, no host sync): all on one
    accelerator type of :data:`FUSED_OPTIMIZER_TYPES`."""
    kinds = {p.device.type for p in params}
    return len(kinds) == 1 and next(iter(kinds)) in FUSED_OPTIMIZER_TYPES


def tf32_available() -> bool:
    """Whether fp32 matmuls here can run in TF32 when the switches allow it (a CUDA device; elsewhere they do
    nothing)."""
    return is_available("cuda")


def tf32() -> tuple[bool, bool]:
    """The TF32 switches (matmul, convolution); they act on CUDA only."""
    return torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32


def set_tf32(matmul: bool, conv: bool) -> None:
    torch.backends.cuda.matmul.allow_tf32 = bool(matmul)
    torch.backends.cudnn.allow_tf32 = bool(conv)


FUSED_KERNEL_TYPES = ("cuda",)  # where the project's Triton kernels (fisher_fused.py, split_precision_triton.py) run


def fused_kernels_available(device: DeviceLike) -> bool:
    """Whether the project's Triton kernels can run on ``device``: a device of :data:`FUSED_KERNEL_TYPES`, with
    triton importable."""
    return as_device(device).type in FUSED_KERNEL_TYPES and _triton_imports()


def on_device(device: DeviceLike) -> contextlib.AbstractContextManager:
    """Context in which ``device`` is its backend's current device, for kernels launched on the current device
    (Triton's); nothing changes for the CPU or a device without an index."""
    device = as_device(device)
    if is_accelerator(device) and device.index is not None:
        return torch.accelerator.device_index(device.index)
    return contextlib.nullcontext()


@functools.lru_cache(maxsize=1)
def _triton_imports() -> bool:
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True
