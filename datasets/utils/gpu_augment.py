"""RandomResizedCrop + horizontal flip + normalisation on the device, for batches of same-size images.

The crop parameters are drawn exactly as torchvision's ``RandomResizedCrop.get_params`` draws them (area fraction
uniform in ``scale``, log aspect ratio uniform in ``log(ratio)``, rounded sizes, up to 10 trials, then the
ratio-clamped centre crop), vectorised over the batch and seeded on the device; crop-and-resize is kornia's
(bicubic, like the CPU pipeline). The CPU loader then only decodes and converts the small source image.
"""
from __future__ import annotations

import math
from typing import Iterator, Optional, Sequence

import torch

TRIALS = 10


def sample_crops(n: int, height: int, width: int, scale: tuple[float, float], ratio: tuple[float, float],
                 generator: Optional[torch.Generator] = None, device: Optional[torch.device] = None) -> torch.Tensor:
    """(n, 4) integer crops (top, left, crop height, crop width), distributed as torchvision's get_params."""
    area = float(height * width)
    shape = (n, TRIALS)
    target = area * torch.empty(shape, device=device).uniform_(scale[0], scale[1], generator=generator)
    log_ratio = torch.empty(shape, device=device).uniform_(math.log(ratio[0]), math.log(ratio[1]),
                                                            generator=generator)
    aspect = torch.exp(log_ratio)
    w = torch.round(torch.sqrt(target * aspect))
    h = torch.round(torch.sqrt(target / aspect))
    valid = (w > 0) & (w <= width) & (h > 0) & (h <= height)
    u_top, u_left = torch.rand(shape, device=device, generator=generator), \
        torch.rand(shape, device=device, generator=generator)
    first = torch.where(valid.any(1), valid.float().argmax(1), torch.full((n,), -1, device=device))
    pick = first.clamp(min=0)[:, None]
    h, w = h.gather(1, pick)[:, 0], w.gather(1, pick)[:, 0]
    top = torch.floor(u_top.gather(1, pick)[:, 0] * (height - h + 1))  # randint(0, H - h + 1)
    left = torch.floor(u_left.gather(1, pick)[:, 0] * (width - w + 1))
    # fallback (no valid trial): the centre crop with the aspect ratio clamped to ``ratio``
    in_ratio = width / height
    if in_ratio < min(ratio):
        fw, fh = width, round(width / min(ratio))
    elif in_ratio > max(ratio):
        fh, fw = height, round(height * max(ratio))
    else:
        fw, fh = width, height
    fallback = first < 0
    h = torch.where(fallback, torch.full_like(h, fh), h)
    w = torch.where(fallback, torch.full_like(w, fw), w)
    top = torch.where(fallback, torch.full_like(top, (height - fh) // 2), top)
    left = torch.where(fallback, torch.full_like(left, (width - fw) // 2), left)
    return torch.stack([top, left, h, w], 1)


class DeviceRRCFlip:
    """Random resized crop to ``size``, horizontal flip with probability 1/2, then ``(x - mean) / std``."""

    def __init__(self, size: int, mean: Sequence[float], std: Sequence[float], scale: tuple[float, float] = (0.08, 1.0),
                 ratio: tuple[float, float] = (3 / 4, 4 / 3), seed: int = 0, mode: str = "bicubic"):
        self.size, self.scale, self.ratio, self.mode = size, tuple(scale), tuple(ratio), mode
        self.mean, self.std = torch.tensor(mean).view(1, -1, 1, 1), torch.tensor(std).view(1, -1, 1, 1)
        self.seed = seed
        self._generator: Optional[torch.Generator] = None

    def generator(self, device: torch.device) -> torch.Generator:
        if self._generator is None or self._generator.device != device:
            self._generator = torch.Generator(device=device).manual_seed(self.seed)
        return self._generator

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        """``images``: (B, C, H, W) in [0, 1] on the target device."""
        from kornia.geometry.transform import crop_and_resize
        n, _, height, width = images.shape
        gen = self.generator(images.device)
        crops = sample_crops(n, height, width, self.scale, self.ratio, gen, images.device)
        top, left, h, w = crops.unbind(1)
        # kornia boxes: (x, y) of the corners tl, tr, br, bl in pixel coordinates (inclusive)
        x0, y0, x1, y1 = left, top, left + w - 1, top + h - 1
        boxes = torch.stack([torch.stack([x0, y0], 1), torch.stack([x1, y0], 1), torch.stack([x1, y1], 1),
                             torch.stack([x0, y1], 1)], 1).float()
        out = crop_and_resize(images.float(), boxes, (self.size, self.size), mode=self.mode, align_corners=True)
        flip = torch.rand(n, device=images.device, generator=gen) < 0.5
        out = torch.where(flip[:, None, None, None], out.flip(-1), out)
        return (out - self.mean.to(out.device)) / self.std.to(out.device)


def rrc_flip_spec(ops: Sequence, mean: Sequence[float], std: Sequence[float]) -> Optional[dict]:
    """The :class:`DeviceRRCFlip` arguments equivalent to a transform op list (a dataset YAML ``TRANSFORM``, or
    None for the dataset's default RandomResizedCrop(224) + flip), or None when the list is anything else."""
    if ops is None:
        return {"size": 224, "mean": tuple(mean), "std": tuple(std)}
    names = [op if isinstance(op, str) else next(iter(op)) for op in ops]
    if names != ["RandomResizedCrop", "RandomHorizontalFlip", "ToTensor", "Normalize"]:
        return None
    kwargs = [{} if isinstance(op, str) else dict(next(iter(op.values())) or {}) for op in ops]
    rrc, flip, norm = kwargs[0], kwargs[1], kwargs[3]
    size = rrc.get("size")
    if isinstance(size, (list, tuple)):
        size = size[0] if len(set(size)) == 1 else None
    if not isinstance(size, int) or float(flip.get("p", 0.5)) != 0.5 or set(rrc) - {"size", "scale", "ratio",
                                                                                     "interpolation"}:
        return None
    mode = {2: "bilinear", 3: "bicubic"}.get(int(rrc.get("interpolation", 2)))
    if mode is None:
        return None
    return {"size": size, "scale": tuple(rrc.get("scale", (0.08, 1.0))), "ratio": tuple(rrc.get("ratio", (3 / 4, 4 / 3))),
            "mean": tuple(norm["mean"]), "std": tuple(norm["std"]), "mode": mode}


class DeviceAugmentedLoader:
    """A train loader whose batches are moved to ``device`` and augmented there (same length and items)."""

    def __init__(self, loader: torch.utils.data.DataLoader, augment: DeviceRRCFlip, device: torch.device):
        self.loader, self.augment, self.device = loader, augment, device

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self) -> Iterator:
        for inputs, *rest in self.loader:
            yield (self.augment(inputs.to(self.device, non_blocking=True)), *rest)
