"""Transforms from YAML specs: a list of torchvision op names, each bare or ``{Name: {kwargs}}``."""
from __future__ import annotations

from typing import Any

from torchvision import transforms

from utils.errors import UserError


def build_transform(spec: list[Any], where: str = "config") -> transforms.Compose:
    """``[ToTensor, {Normalize: {mean: [...], std: [...]}}]`` -> ``transforms.Compose``."""
    if not isinstance(spec, list):
        raise UserError(f"{where}: a transform must be a list of torchvision op names, got {type(spec).__name__}")
    ops = []
    for item in spec:
        if isinstance(item, str):
            name, kwargs = item, {}
        elif isinstance(item, dict) and len(item) == 1:
            name, kwargs = next(iter(item.items()))
            kwargs = dict(kwargs or {})
        else:
            raise UserError(f"{where}: transform item {item!r} must be a name or a one-key mapping name: {{kwargs}}")
        op = getattr(transforms, name, None)
        if op is None or not callable(op):
            raise UserError(f"{where}: unknown torchvision transform '{name}'")
        if "interpolation" in kwargs and isinstance(kwargs["interpolation"], int):
            kwargs["interpolation"] = transforms.InterpolationMode(
                {0: "nearest", 2: "bilinear", 3: "bicubic"}.get(kwargs["interpolation"], "bilinear"))
        try:
            ops.append(op(**kwargs))
        except TypeError as exc:
            raise UserError(f"{where}: bad arguments for {name}: {exc}") from None
    return transforms.Compose(ops)
