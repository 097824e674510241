"""Find tensors held by a model that are not on its device (used by tests and benchmarks/gpu_check.py)."""
from __future__ import annotations

from typing import Any, Callable, Optional

import torch


def misplaced_tensors(obj: Any, device: torch.device, where: str = "model", limit: int = 20,
                      misplaced: Optional[Callable[[torch.Tensor], bool]] = None) -> list[str]:
    """Paths and devices of every tensor reachable from ``obj`` (module parameters, buffers and attributes,
    dicts, lists, tuples, optimizer states, plain objects' ``__dict__``) whose device is not ``device``.

    0-dim CPU tensors are allowed (PyTorch mixes them with any device). Cycles are visited once.
    ``misplaced`` replaces the device test (tests use it to find tensors of a stand-in device).
    """
    device = torch.device(device)
    found: list[str] = []
    seen: set[int] = set()

    def same(d: torch.device) -> bool:
        return d.type == device.type and (device.index is None or d.index in (None, device.index))

    def visit(value: Any, path: str, depth: int) -> None:
        if len(found) >= limit or depth > 12 or id(value) in seen:
            return
        if isinstance(value, torch.Tensor):
            seen.add(id(value))
            wrong = misplaced(value) if misplaced else not same(value.device)
            if wrong and not (value.dim() == 0 and value.device.type == "cpu"):
                found.append(f"{path} on {value.device}")
            return
        if isinstance(value, (str, bytes, int, float, bool, type(None), torch.device, torch.dtype)):
            return
        seen.add(id(value))
        if isinstance(value, dict):
            for k, v in list(value.items()):
                visit(v, f"{path}[{k!r}]", depth + 1)
        elif isinstance(value, (list, tuple, set)):
            for i, v in enumerate(value):
                visit(v, f"{path}[{i}]", depth + 1)
        elif isinstance(value, torch.optim.Optimizer):
            visit(value.state_dict()["state"], f"{path}.state", depth + 1)
            visit([p for g in value.param_groups for p in g["params"]], f"{path}.params", depth + 1)
        elif isinstance(value, torch.nn.Module):
            for name, v in value.__dict__.items():
                if name in ("_parameters", "_buffers", "_modules"):
                    for k, t in v.items():
                        visit(t, f"{path}.{k}", depth + 1)
                elif not name.startswith("__") and name not in ("_forward_hooks", "_forward_pre_hooks",
                                                                 "_backward_hooks", "_state_dict_hooks"):
                    visit(v, f"{path}.{name}", depth + 1)
        elif hasattr(value, "__dict__") and type(value).__module__.split(".")[0] in ("models", "backbone"):
            for name, v in vars(value).items():
                visit(v, f"{path}.{name}", depth + 1)

    visit(obj, where, 0)
    return found
