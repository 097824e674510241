"""Mammoth's ``utils.kornia_utils`` and ``utils.autoaugment``: torchvision pipelines as batch transforms on the
device, several augmented views at once, and the AutoAugment policies."""
from __future__ import annotations

from typing import Any, Callable, Optional, Sequence

import torch
from PIL import Image
from torch import nn
from torchvision import transforms as T

from mammoth_compat.transforms import DeviceTransform, to_device_transform

KorniaAugNoGrad = DeviceTransform  # Mammoth's name of a no-grad batch augmentation


def to_kornia_transform(transform: Optional[Callable], apply: bool = True,
                        override_p: Optional[float] = None) -> Any:
    """The batch version of a torchvision pipeline (:func:`mammoth_compat.transforms.to_device_transform`): a module,
    or its list of ops when not ``apply``; ``override_p`` replaces the probability of every random op."""
    if transform is None:
        return lambda x: x
    if isinstance(transform, nn.Module) and not isinstance(transform, T.Compose):
        return transform if apply else list(transform.children())
    pipeline = to_device_transform(T.Compose(list(transform)) if isinstance(transform, list) else transform)
    if override_p is not None:
        for op in pipeline.ops:
            if hasattr(op, "p"):
                op.p = float(override_p)
    return pipeline if apply else list(pipeline.ops)


class KorniaMultiAug(nn.Module):
    """``n_augs`` independently augmented views of a batch: (n_augs, B, C, H, W)."""

    def __init__(self, n_augs: int, aug_list: Sequence[nn.Module]):
        super().__init__()
        self.n_augs = int(n_augs)
        self.ops = nn.ModuleList(aug_list)

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = x.repeat(self.n_augs, *([1] * (x.dim() - 1)))
        for op in self.ops:
            out = op(out)
        return out.reshape(self.n_augs, *x.shape[:1], *out.shape[1:])


class _Policy:
    """A published AutoAugment policy for PIL images or image tensors (float in [0, 1] or uint8)."""

    policy: T.AutoAugmentPolicy

    def __init__(self, fillcolor: Sequence[int] = (128, 128, 128)):
        self.fill = [int(v) for v in fillcolor]

    def __call__(self, img: Any) -> Any:
        if isinstance(img, Image.Image):
            fill = self.fill[:len(img.getbands())]
            return T.AutoAugment(self.policy, fill=fill)(img)
        fill = self.fill[:img.shape[-3]]
        if img.is_floating_point():
            as_bytes = (img * 255).round().clamp(0, 255).to(torch.uint8)
            return T.AutoAugment(self.policy, fill=fill)(as_bytes).float() / 255
        return T.AutoAugment(self.policy, fill=fill)(img)

    def __repr__(self) -> str:
        return f"AutoAugment {self.policy.value} Policy"


class CIFAR10Policy(_Policy):
    policy = T.AutoAugmentPolicy.CIFAR10


class ImageNetPolicy(_Policy):
    policy = T.AutoAugmentPolicy.IMAGENET


class SVHNPolicy(_Policy):
    policy = T.AutoAugmentPolicy.SVHN
