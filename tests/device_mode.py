"""A CPU-only stand-in for "the model lives on another device than the default one".

On a GPU machine, a tensor that model code creates without naming a device (``torch.zeros(n)``,
``nn.Linear(...)``, ``torch.randperm(n)``) lands on the CPU, next to a CUDA model: the first op that mixes the two
fails, possibly hours into a run. A CPU-only test cannot put the model on a second real device, so
:class:`DefaultDeviceMode` emulates a second device with a tag instead:

* tensors created by code under ``models/`` without a ``device=`` are *on the default device*: real CPU tensors of
  the subclass :class:`OnDefaultDevice` (``.cpu()`` results too); everything else (the model after ``.to(device)``,
  the data after ``x.to(device)``) is on *the model's device*;
* ``.to(device)`` moves a tensor to the model's device (and ``Module.to`` replaces parameters, as a real device
  change does); results of ops on default-device tensors stay there;
* an op that mixes non-scalar tensors of both devices raises :class:`MixedDeviceError`, as CUDA would (PyTorch's
  own exceptions are kept: indexing a tensor with CPU indices, copies between devices).

Data code (``datasets/``, torchvision, ``torch.utils.data``) is left alone: loaders yield CPU tensors that the model
moves itself. :func:`stray_tensors` finds default-device tensors that a model only stores.
"""
from __future__ import annotations

import os
import sys
from typing import Any

import torch
from torch.overrides import TorchFunctionMode
from torch.utils._device import _device_constructors
from torch.utils._pytree import tree_flatten, tree_map

from utils.device_audit import misplaced_tensors

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODELS_DIR = os.path.join(ROOT, "models") + os.sep
DATA_DIRS = (os.path.join(ROOT, "datasets") + os.sep, os.sep + "torchvision" + os.sep,
             os.sep.join(("", "torch", "utils", "data", "")))
CONSTRUCTORS = _device_constructors()
MOVES = {torch.Tensor.to, torch.Tensor.cuda}
COPIES = {torch.Tensor.copy_, torch.Tensor.to, torch.Tensor.cpu, torch.Tensor.cuda,
          torch._has_compatible_shallow_copy_type}  # copies between devices and metadata queries are fine
INDEXING = {torch.Tensor.__getitem__, torch.Tensor.__setitem__}


class OnDefaultDevice(torch.Tensor):
    """A CPU tensor that stands for a tensor on the default device (not the model's)."""


class MixedDeviceError(RuntimeError):
    """An op received tensors of the model's device and of the default device."""


def _called_from_model_code() -> bool:
    frame, in_models = sys._getframe(2), False
    while frame is not None:
        path = frame.f_code.co_filename
        if any(d in path for d in DATA_DIRS):
            return False
        in_models = in_models or path.startswith(MODELS_DIR)
        frame = frame.f_back
    return in_models


def _project_caller() -> str:
    """file:line of the innermost frame of this repository's code (outside tests/) on the stack."""
    frame = sys._getframe(2)
    while frame is not None:
        path = frame.f_code.co_filename
        if path.startswith(ROOT + os.sep) and not path.startswith(os.path.join(ROOT, "tests")) and \
                os.sep + ".venv" + os.sep not in path:
            return f"{os.path.relpath(path, ROOT)}:{frame.f_lineno}"
        frame = frame.f_back
    return "?"


def _tag(out: Any, on_default: bool) -> Any:
    """``out`` with every tensor marked as on the default device (or on the model's device)."""
    def convert(t: Any) -> Any:
        if not isinstance(t, torch.Tensor):
            return t
        if on_default and not isinstance(t, OnDefaultDevice):
            return t.as_subclass(OnDefaultDevice)
        if not on_default and isinstance(t, OnDefaultDevice):
            return t.as_subclass(torch.Tensor)
        return t
    return tree_map(convert, out)


def _deepcopy_on_default(t: torch.Tensor, memo: dict) -> torch.Tensor:
    """``copy.deepcopy`` of a default-device tensor (or parameter): a default-device copy."""
    if id(t) in memo:
        return memo[id(t)]
    with torch.no_grad():
        out = t.as_subclass(torch.Tensor).clone().as_subclass(OnDefaultDevice)
    out.requires_grad_(t.requires_grad)
    if isinstance(t, torch.nn.Parameter):
        out._is_param = True
    memo[id(t)] = out
    return out


def _moves_device(func, args, kwargs) -> bool:
    """``t.to(device, ...)`` / ``t.cuda()`` (not a dtype-only ``.to``)."""
    if func is torch.Tensor.cuda or "device" in kwargs:
        return True
    return any(isinstance(a, (str, torch.device)) for a in args[1:]) or \
        any(isinstance(a, torch.Tensor) for a in args[1:])


class DefaultDeviceMode(TorchFunctionMode):
    """While active: model code's device-less tensors are :class:`OnDefaultDevice`; mixing devices raises."""

    def __init__(self) -> None:
        super().__init__()
        self.created: list[str] = []  # where model code created default-device tensors (for the test's sanity)

    def __enter__(self):
        self._overwrite = torch.__future__.get_overwrite_module_params_on_conversion()
        torch.__future__.set_overwrite_module_params_on_conversion(True)  # Module.to replaces parameters
        return super().__enter__()

    def __exit__(self, *exc):
        torch.__future__.set_overwrite_module_params_on_conversion(self._overwrite)
        return super().__exit__(*exc)

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = dict(kwargs or {})
        with torch._C.DisableTorchFunctionSubclass():
            if func in CONSTRUCTORS:
                out = func(*args, **kwargs)
                given = kwargs.get("device") is not None or (args and isinstance(args[0], torch.Tensor)
                                                             and func in (torch.as_tensor, torch.asarray))
                if not given and _called_from_model_code():
                    self.created.append(_project_caller())
                    return _tag(out, True)
                return out
            if func is torch.Tensor.__deepcopy__ and isinstance(args[0], OnDefaultDevice):
                return _deepcopy_on_default(args[0], args[1] if len(args) > 1 else kwargs.get("memo", {}))
            leaves, _ = tree_flatten((args, kwargs))
            tensors = [t for t in leaves if isinstance(t, torch.Tensor)]
            default = [isinstance(t, OnDefaultDevice) for t in tensors if t.dim() > 0]
            mixed = any(default) and not all(default)
            if func in MOVES and _moves_device(func, args, kwargs):
                return _tag(func(*args, **kwargs), False)
            if func is torch.Tensor.cpu:
                return _tag(func(*args, **kwargs), True)
            if mixed and func not in COPIES and not (
                    func in INDEXING and not isinstance(args[0], OnDefaultDevice)):
                raise MixedDeviceError(f"{getattr(func, '__name__', func)} at {_project_caller()} mixes tensors "
                                       f"of the model's device and of the default device (created without "
                                       f"device=)")
            out = func(*args, **kwargs)
            if func is torch.Tensor.copy_ or func in INDEXING:
                return _tag(out, isinstance(args[0], OnDefaultDevice))
            if any(isinstance(t, OnDefaultDevice) for t in tensors):
                on_default = all(isinstance(t, OnDefaultDevice) for t in tensors if t.dim() > 0)
                return _tag(out, on_default)
            return out


def stray_tensors(obj: Any, where: str = "model") -> list[str]:
    """Tensors reachable from ``obj`` that are on the default device (see :func:`misplaced_tensors`)."""
    return misplaced_tensors(obj, torch.device("cpu"), where, misplaced=lambda t: isinstance(t, OnDefaultDevice))


def plain(obj: Any) -> Any:
    """``obj`` with the default-device marks removed (e.g. a checkpoint state about to be serialized)."""
    return _tag(obj, False)


def on_default_device(obj: Any) -> Any:
    """``obj`` with every tensor marked as on the default device (e.g. a checkpoint loaded to the CPU)."""
    return _tag(obj, True)
