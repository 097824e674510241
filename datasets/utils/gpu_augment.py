"""RandomResizedCrop + horizontal flip + normalisation on the device, for batches of same-size images.

The crop parameters are drawn exactly as torchvision's ``RandomResizedCrop.get_params`` draws them (area fraction
uniform in ``scale``, log aspect ratio uniform in ``log(ratio)``, rounded sizes, up to 10 trials, then the
ratio-clamped centre crop), vectorised over the batch and seeded on the device; crop-and-resize samples the
boxes with ``grid_sample`` (bicubic, like the CPU pipeline; the values of kornia's ``crop_and_resize``). The CPU
loader then only decodes and converts the small source image.

Under DDP each rank draws the crops and flips of the whole global batch from the same stream and keeps its own
rows, so every global image index gets the crop and flip of the single-process run. A call makes no host-device
copy and reads no value back (constants cached on the device, boxes built there).
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


def crop_resize(images: torch.Tensor, crops: torch.Tensor, size: int, mode: str = "bicubic") -> torch.Tensor:
    """Each image's crop (top, left, height, width) resized to ``size`` x ``size``: the corner pixels of the box map
    to the corner pixels of the output (kornia's ``crop_and_resize`` with ``align_corners=True``), out-of-image
    taps read zeros. ``crops`` is on the images' device; nothing is read back."""
    _, _, height, width = images.shape
    top, left, h, w = crops.to(images.dtype).unbind(1)
    steps = torch.linspace(0.0, 1.0, size, device=images.device, dtype=images.dtype)  # output pixel / (size - 1)
    xs = left[:, None] + steps * (w - 1)[:, None]  # (B, size) source pixel columns
    ys = top[:, None] + steps * (h - 1)[:, None]
    gx = (2 * xs / max(width - 1, 1) - 1)[:, None, :].expand(-1, size, -1)
    gy = (2 * ys / max(height - 1, 1) - 1)[:, :, None].expand(-1, -1, size)
    grid = torch.stack([gx, gy], -1)  # (B, size, size, 2): x then y, as grid_sample reads it
    return torch.nn.functional.grid_sample(images, grid, mode=mode, padding_mode="zeros", align_corners=True)


class DeviceRRCFlip:
    """Random resized crop to ``size``, horizontal flip with probability 1/2, then ``(x - mean) / std``."""

    def __init__(self, size: int, mean: Sequence[float], std: Sequence[float], scale: tuple[float, float] = (0.08, 1.0),
                 ratio: tuple[float, float] = (3 / 4, 4 / 3), seed: int = 0, mode: str = "bicubic"):
        self.size, self.scale, self.ratio, self.mode = size, tuple(scale), tuple(ratio), mode
        self.mean, self.std = torch.tensor(mean).view(1, -1, 1, 1), torch.tensor(std).view(1, -1, 1, 1)
        self.seed = seed
        self._generator: Optional[torch.Generator] = None
        self._constants: dict[torch.device, tuple[torch.Tensor, torch.Tensor]] = {}

    def generator(self, device: torch.device) -> torch.Generator:
        if self._generator is None or self._generator.device != device:
            self._generator = torch.Generator(device=device).manual_seed(self.seed)
        return self._generator

    def constants(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """(mean, std) on ``device``, copied there once."""
        if device not in self._constants:
            self._constants[device] = (self.mean.to(device), self.std.to(device))
        return self._constants[device]

    def draw(self, n: int, height: int, width: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """The next ``n`` crops (n, 4) and flips (n,) of the stream, for ``height`` x ``width`` source images."""
        gen = self.generator(device)
        crops = sample_crops(n, height, width, self.scale, self.ratio, gen, device)
        return crops, torch.rand(n, device=device, generator=gen) < 0.5

    def apply(self, images: torch.Tensor, crops: torch.Tensor, flips: torch.Tensor) -> torch.Tensor:
        """Crop, resize, flip and normalise ``images`` (B, C, H, W) in [0, 1] with the drawn ``crops`` and ``flips``."""
        out = crop_resize(images.float(), crops, self.size, self.mode)
        out = torch.where(flips[:, None, None, None], out.flip(-1), out)
        mean, std = self.constants(out.device)
        return (out - mean) / std

    def __call__(self, images: torch.Tensor, rows: Optional[tuple[int, int]] = None,
                 drawn: Optional[tuple[torch.Tensor, torch.Tensor]] = None) -> torch.Tensor:
        """``images``: (B, C, H, W) in [0, 1] on the target device. ``rows = (total, first)``: the images are rows
        ``first .. first + B - 1`` of ``total`` (a DDP rank's share of a global batch): the crops and flips of all
        ``total`` are drawn and this share's kept. ``drawn``: the images' crops and flips, drawn before."""
        n, _, height, width = images.shape
        if drawn is None:
            total, first = rows if rows is not None else (n, 0)
            crops, flips = self.draw(total, height, width, images.device)
            drawn = crops[first:first + n], flips[first:first + n]
        return self.apply(images, *drawn)


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
    """A train loader whose batches are moved to ``device`` and augmented there (same length and items).

    Over a :class:`utils.distributed.ShardedBatchSampler` the crops and flips of a whole pass are drawn at its first
    batch and the image at position p of the pass's (global) order gets the p-th: the augmentation depends neither
    on the batch size nor on the number of ranks. Other loaders draw batch by batch."""

    def __init__(self, loader: torch.utils.data.DataLoader, augment: DeviceRRCFlip, device: torch.device):
        self.loader, self.augment, self.device = loader, augment, device

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self) -> Iterator:
        layout = getattr(self.loader.batch_sampler, "layout", None)  # (global batch, first row) of each batch
        if not callable(layout):
            for inputs, *rest in self.loader:
                yield (self.augment(inputs.to(self.device, non_blocking=True)), *rest)
            return
        cuts = layout()
        starts = [0]
        for total, _ in cuts:
            starts.append(starts[-1] + total)
        drawn: Optional[tuple[torch.Tensor, torch.Tensor]] = None
        for (total, first), start, (inputs, *rest) in zip(cuts, starts, self.loader):
            x = inputs.to(self.device, non_blocking=True)
            if drawn is None:  # the whole pass's crops and flips, in its global order
                drawn = self.augment.draw(starts[-1], x.shape[-2], x.shape[-1], x.device)
            lo, hi = start + first, start + first + x.shape[0]
            yield (self.augment(x, drawn=(drawn[0][lo:hi], drawn[1][lo:hi])), *rest)
