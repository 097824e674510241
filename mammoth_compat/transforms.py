"""Dataset transforms on device tensors: Mammoth's kornia ``self.transform`` and ``DeNormalize``.

:func:`to_device_transform` turns a dataset's torchvision train pipeline (PIL -> normalised
tensor) into a callable on float image batches ``(B, C, H, W)`` in [0, 1] on any device: each
op becomes its kornia counterpart (random parameters drawn per sample from the global torch
RNG); an op without one is applied image by image with torchvision's tensor implementation.
``ToPILImage``/``ToTensor`` are dropped, since the input already is a tensor.
"""
from __future__ import annotations

from typing import Callable, Sequence

import torch
from torch import nn
from torchvision import transforms as T
from torchvision.transforms import InterpolationMode

_SKIP = (T.ToTensor, T.ToPILImage, T.PILToTensor)


def flatten(transform: Callable) -> list[Callable]:
    """The ops of a (nested) ``Compose`` in order."""
    if isinstance(transform, T.Compose):
        return [op for inner in transform.transforms for op in flatten(inner)]
    return [transform]


def _resample(interpolation: InterpolationMode) -> str:
    return {InterpolationMode.BICUBIC: "bicubic", InterpolationMode.NEAREST: "nearest"}.get(interpolation, "bilinear")


def _size(size: int | Sequence[int]) -> tuple[int, int]:
    return (int(size), int(size)) if isinstance(size, int) else (int(size[0]), int(size[-1]))


def kornia_op(op: Callable) -> nn.Module | None:
    """The kornia module equivalent to torchvision ``op``, or None if there is none."""
    import kornia.augmentation as K
    if isinstance(op, T.RandomResizedCrop):
        return K.RandomResizedCrop(_size(op.size), scale=tuple(op.scale), ratio=tuple(op.ratio),
                                   resample=_resample(op.interpolation))
    if isinstance(op, T.RandomCrop):
        return K.RandomCrop(_size(op.size), padding=op.padding, pad_if_needed=op.pad_if_needed,
                            fill=op.fill if isinstance(op.fill, (int, float)) else 0,
                            padding_mode=op.padding_mode)
    if isinstance(op, T.RandomHorizontalFlip):
        return K.RandomHorizontalFlip(p=op.p)
    if isinstance(op, T.RandomVerticalFlip):
        return K.RandomVerticalFlip(p=op.p)
    if isinstance(op, T.CenterCrop):
        return K.CenterCrop(_size(op.size))
    if isinstance(op, T.ColorJitter):
        return K.ColorJitter(op.brightness or 0.0, op.contrast or 0.0, op.saturation or 0.0, op.hue or 0.0, p=1.0)
    if isinstance(op, T.RandomGrayscale):
        return K.RandomGrayscale(p=op.p)
    if isinstance(op, T.Normalize):
        return Normalize(op.mean, op.std)
    return None


class Normalize(nn.Module):
    """``(x - mean) / std`` per channel on a batch, on the input's device."""

    def __init__(self, mean: Sequence[float], std: Sequence[float]):
        super().__init__()
        self.mean, self.std = torch.tensor(mean).view(1, -1, 1, 1), torch.tensor(std).view(1, -1, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean.to(x.device, x.dtype)) / self.std.to(x.device, x.dtype)


class PerImage(nn.Module):
    """Apply a torchvision op (tensor input) to each image of a batch."""

    def __init__(self, op: Callable):
        super().__init__()
        self.op = op

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.stack([self.op(img) for img in x])


class DeviceTransform(nn.Module):
    """A train augmentation for float image batches on the device (Mammoth's kornia ``self.transform``).

    Accepts ``(B, C, H, W)`` or a single ``(C, H, W)`` image and returns the same rank.
    """

    def __init__(self, ops: Sequence[nn.Module]):
        super().__init__()
        self.ops = nn.ModuleList(ops)

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        single = x.dim() == 3
        out = x.unsqueeze(0) if single else x
        out = out.float()
        for op in self.ops:
            out = op(out)
        return out[0] if single else out


def to_device_transform(transform: Callable) -> DeviceTransform:
    """:class:`DeviceTransform` equivalent to the torchvision pipeline ``transform``."""
    ops: list[nn.Module] = []
    for op in flatten(transform):
        if isinstance(op, _SKIP):
            continue
        if isinstance(op, T.Resize):  # kornia's Resize differs for int sizes: keep torchvision's semantics
            ops.append(PerImage(op))
            continue
        converted = kornia_op(op)
        ops.append(converted if converted is not None else PerImage(op))
    return DeviceTransform(ops)


class DeNormalize:
    """Undo ``Normalize(mean, std)`` on a ``(C, H, W)`` or ``(B, C, H, W)`` tensor (Mammoth's ``DeNormalize``)."""

    def __init__(self, mean: Sequence[float], std: Sequence[float]):
        self.mean, self.std = torch.tensor(mean), torch.tensor(std)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        shape = (-1, 1, 1)
        return x * self.std.to(x.device, x.dtype).view(shape) + self.mean.to(x.device, x.dtype).view(shape)
