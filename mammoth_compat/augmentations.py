"""Mammoth's ``utils.augmentations``: batch augmentations on tensors, CutMix, and the paired transforms that move
an image and its attention maps together (TwF)."""
from __future__ import annotations

from typing import Any, Callable, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torchvision import transforms
from torchvision.transforms import functional as TF

__all__ = ["apply_transform", "rand_bbox", "cutmix_data", "normalize", "random_flip", "random_grayscale",
           "random_crop", "soft_aug", "strong_aug", "RepeatedTransform", "DoubleTransform",
           "CustomRandomHorizontalFlip", "CustomRandomCrop", "DoubleCompose"]


def apply_transform(x: Any, transform: Optional[Callable], autosqueeze: bool = False) -> Any:
    """``transform`` on a batch: whole-batch for a module (kornia), image by image otherwise; a PIL image as is."""
    if transform is None:
        return x
    if isinstance(x, Image.Image):
        if isinstance(transform, torch.nn.Module):
            x = torch.as_tensor(np.array(x, copy=True)).permute(2, 0, 1).float().div(255)
            out = transform(x)
            return out.squeeze(0) if autosqueeze and out.shape[0] == 1 else out
        return transform(x)
    if isinstance(transform, torch.nn.Module):
        out = transform(x)
    else:
        out = torch.stack([transform(xi) for xi in x.cpu()]).to(x.device)
    return out.squeeze(0) if autosqueeze and out.shape[0] == 1 else out


def rand_bbox(size: Sequence[int], lam: float) -> tuple[int, int, int, int]:
    """A random box covering about ``1 - lam`` of an (N, C, W, H) image: (x1, y1, x2, y2)."""
    width, height = size[2], size[3]
    ratio = np.sqrt(1.0 - lam)
    cut_w, cut_h = int(width * ratio), int(height * ratio)
    cx, cy = np.random.randint(width), np.random.randint(height)
    return (int(np.clip(cx - cut_w // 2, 0, width)), int(np.clip(cy - cut_h // 2, 0, height)),
            int(np.clip(cx + cut_w // 2, 0, width)), int(np.clip(cy + cut_h // 2, 0, height)))


def cutmix_data(x: torch.Tensor, y: torch.Tensor, alpha: float = 1.0, cutmix_prob: float = 0.5,
                force: bool = False) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, float]:
    """CutMix (in place) with probability ``cutmix_prob`` (always with ``force``): ``(x, y_a, y_b, lam)``, where
    ``lam`` is the exact share of pixels that keep their own image."""
    if not force and np.random.rand() > cutmix_prob:
        return x, y, y, 1.0
    if alpha <= 0:
        raise ValueError(f"cutmix_data needs alpha > 0, got {alpha}")
    lam = np.random.beta(alpha, alpha)
    index = torch.randperm(x.shape[0], device=x.device)
    x1, y1, x2, y2 = rand_bbox(x.shape, lam)
    x[:, :, x1:x2, y1:y2] = x[index, :, x1:x2, y1:y2]
    lam = 1 - (x2 - x1) * (y2 - y1) / (x.shape[-1] * x.shape[-2])
    return x, y, y[index], float(lam)


def normalize(x: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """Per-channel normalisation of an (N, C, H, W) batch."""
    mean_t = torch.as_tensor(mean, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
    std_t = torch.as_tensor(std, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
    return (x - mean_t) / std_t


def random_flip(x: torch.Tensor) -> torch.Tensor:
    """Each image flipped horizontally with probability 1/2 (in place)."""
    mask = torch.rand(x.shape[0], device=x.device) < 0.5
    x[mask] = x[mask].flip(3)
    return x


def random_grayscale(x: torch.Tensor, prob: float = 0.2) -> torch.Tensor:
    """Each RGB image turned to grey (ITU-R 601 luma, three channels) with probability ``prob`` (in place)."""
    mask = torch.rand(x.shape[0], device=x.device) < prob
    luma = torch.tensor([0.299, 0.587, 0.114], dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    x[mask] = (x[mask] * luma).sum(1, keepdim=True).expand(-1, 3, -1, -1)
    return x


def random_crop(x: torch.Tensor, padding: int) -> torch.Tensor:
    """Each image shifted by a random offset in ``[-padding, padding)`` on a zero-padded canvas."""
    n, _, h, w = x.shape
    padded = F.pad(x, (padding, padding, padding, padding))
    dx = torch.randint(0, 2 * padding, (n,)).tolist()
    dy = torch.randint(0, 2 * padding, (n,)).tolist()
    return torch.stack([padded[i, :, dy[i]:dy[i] + h, dx[i]:dx[i] + w] for i in range(n)])


class soft_aug:  # noqa: N801 - Mammoth's name
    """Random crop (padding 4), random flip, normalisation, on a batch."""

    def __init__(self, mean: Sequence[float], std: Sequence[float]):
        self.mean, self.std = mean, std

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return normalize(random_flip(random_crop(x, 4)), self.mean, self.std)


class strong_aug:  # noqa: N801
    """X-DER's strong augmentation of a batch in [0, 1]: flip, resized crop (scale 0.2-1), colour jitter (p 0.8),
    greyscale (p 0.2), normalisation."""

    def __init__(self, size: int, mean: Sequence[float], std: Sequence[float]):
        self.transform = transforms.Compose([
            transforms.ToPILImage(), transforms.RandomResizedCrop(size=size, scale=(0.2, 1.0)),
            transforms.RandomApply([transforms.ColorJitter(0.4, 0.4, 0.4, 0.1)], p=0.8), transforms.ToTensor()])
        self.mean, self.std = mean, std

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        flipped = random_flip(x)
        out = torch.stack([self.transform(img.cpu()) for img in flipped]).to(x.device)
        return normalize(random_grayscale(out), self.mean, self.std)


class RepeatedTransform:
    """Every transform of the list on the same input, stacked along a new first dimension."""

    def __init__(self, transform_list: list, autosqueeze: bool = False):
        if not transform_list:
            raise ValueError("RepeatedTransform needs at least one transform")
        self.transform_list, self.autosqueeze = list(transform_list), autosqueeze

    @torch.no_grad()
    def __call__(self, x: Any) -> torch.Tensor:
        return torch.stack([apply_transform(x, t, autosqueeze=self.autosqueeze) for t in self.transform_list])


class DoubleTransform:
    """``transform`` on the image; the associated maps pass unchanged."""

    def __init__(self, tf: Callable):
        self.transform = tf

    @torch.no_grad()
    def __call__(self, img: Any, other_img: Any) -> tuple[Any, Any]:
        return self.transform(img), other_img


class CustomRandomHorizontalFlip:
    """One coin flip (probability ``p``) for the image and each of its maps."""

    def __init__(self, p: float = 0.5):
        self.p = p

    @torch.no_grad()
    def __call__(self, img: Any, other_img: Optional[list] = None) -> tuple[Any, list]:
        maps = list(other_img or [])
        if np.random.rand() < self.p:
            return TF.hflip(img), [m.flip(-1) for m in maps]
        return img, maps


class CustomRandomCrop:
    """One random crop (after ``padding``) for the image and, at their scale, each of its maps; with ``resize``
    the maps (up to ``min_resize_index``) are upsampled twice before cropping and brought back after."""

    def __init__(self, size: Any, padding: int = 0, resize: bool = False, min_resize_index: Optional[int] = None):
        self.size = (size, size) if isinstance(size, int) else tuple(size)
        self.padding, self.resize, self.min_resize_index = padding, resize, min_resize_index

    @torch.no_grad()
    def __call__(self, img: Any, other_img: Optional[list] = None) -> tuple[Any, list]:
        img = TF.pad(img, self.padding)
        i, j, h, w = transforms.RandomCrop.get_params(img, self.size)
        maps = []
        for idx, m in enumerate(other_img or []):
            m = m.unsqueeze(0)
            original = m.shape[-2:]
            scaled = self.resize and (self.min_resize_index is None or idx <= self.min_resize_index)
            if scaled:
                m = TF.resize(m, [original[0] * 2, original[1] * 2], interpolation=transforms.InterpolationMode.NEAREST)
            rate = max(1, self.size[0] // m.shape[-1])
            m = TF.crop(TF.pad(m, self.padding // rate), i // rate, j // rate, h // rate, w // rate)
            if scaled:
                m = TF.resize(m, list(original), interpolation=transforms.InterpolationMode.NEAREST)
            maps.append(m.squeeze(0))
        return TF.crop(img, i, j, h, w), maps


class DoubleCompose:
    """Paired transforms ``t(img, maps) -> (img, maps)`` applied in order, on copies of the inputs."""

    def __init__(self, transforms: list):
        self.transforms = list(transforms)

    def __iter__(self):
        return iter(self.transforms)

    def __getitem__(self, i: int) -> Callable:
        return self.transforms[i]

    def __len__(self) -> int:
        return len(self.transforms)

    @torch.no_grad()
    def __call__(self, img: Any, other_img: list) -> tuple[Any, list]:
        maps = [m.clone() for m in other_img]
        img = img.clone() if isinstance(img, torch.Tensor) else img.copy()
        for t in self.transforms:
            img, maps = t(img, maps)
        return img, maps
