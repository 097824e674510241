"""Transforms: the op lists datasets declare (:func:`rrc_flip`, :func:`resize_crop`, the usual statistics), and
the same from YAML specs (a list of torchvision op names, each bare or ``{Name: {kwargs}}``)."""
from __future__ import annotations

from typing import Any, Callable, Optional

from torchvision import transforms
from torchvision.transforms import InterpolationMode

from utils.errors import UserError

BICUBIC = InterpolationMode.BICUBIC
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
CLIP_MEAN, CLIP_STD = (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)


def rrc_flip(size: int = 224, scale: tuple[float, float] = (0.08, 1.0)) -> list[Callable]:
    """RandomResizedCrop (bicubic) + horizontal flip, the usual ViT training augmentation."""
    return [transforms.RandomResizedCrop(size, scale=scale, interpolation=BICUBIC), transforms.RandomHorizontalFlip()]


def resize_crop(resize: int | tuple[int, int], crop: int = 224) -> list[Callable]:
    """Bicubic Resize then CenterCrop, the usual ViT test pipeline."""
    return [transforms.Resize(resize, interpolation=BICUBIC), transforms.CenterCrop(crop)]


def _check_normalize(kwargs: dict, where: str, channels: Optional[int]) -> None:
    """Normalize's mean/std: numbers (or lists of them), std > 0, one value per channel when known."""
    for key in ("mean", "std"):
        value = kwargs.get(key)
        values = value if isinstance(value, (list, tuple)) else [value]
        if not values or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
            raise UserError(f"{where}: Normalize {key} must be a list of numbers, got {value!r:.60}")
        if key == "std" and min(values) <= 0:
            raise UserError(f"{where}: Normalize std must be > 0 (images are divided by it), got {value!r:.60}")
        if channels is not None and isinstance(value, (list, tuple)) and len(values) not in (1, channels):
            raise UserError(f"{where}: Normalize {key} has {len(values)} values but the images have {channels} "
                            f"channel(s); give one value per channel")


def build_transform(spec: list[Any], where: str = "config", channels: Optional[int] = None) -> transforms.Compose:
    """``[ToTensor, {Normalize: {mean: [...], std: [...]}}]`` -> ``transforms.Compose``."""
    if not isinstance(spec, list):
        raise UserError(f"{where}: a transform must be a list of torchvision op names, got {type(spec).__name__}")
    ops = []
    for item in spec:
        if isinstance(item, str):
            name, kwargs = item, {}
        elif isinstance(item, dict) and len(item) == 1:
            name, kwargs = next(iter(item.items()))
            if kwargs is not None and not isinstance(kwargs, dict):
                raise UserError(f"{where}: the arguments of {name} must be a mapping {{arg: value}}, "
                                f"got {kwargs!r:.60}")
            kwargs = dict(kwargs or {})
        else:
            raise UserError(f"{where}: transform item {item!r} must be a name or a one-key mapping name: {{kwargs}}")
        if not isinstance(name, str):
            raise UserError(f"{where}: transform item {item!r:.60} must be a name or a one-key mapping name: {{kwargs}}")
        op = getattr(transforms, name, None)
        if op is None or not callable(op):
            raise UserError(f"{where}: unknown torchvision transform '{name}'")
        if "interpolation" in kwargs and isinstance(kwargs["interpolation"], int):
            kwargs["interpolation"] = transforms.InterpolationMode(
                {0: "nearest", 2: "bilinear", 3: "bicubic"}.get(kwargs["interpolation"], "bilinear"))
        if name == "Normalize":
            _check_normalize(kwargs, where, channels)
        try:
            ops.append(op(**kwargs))
        except (TypeError, ValueError) as exc:
            raise UserError(f"{where}: bad arguments for {name}: {exc}") from None
    if not any(isinstance(op, TENSOR_CONVERSIONS) for op in ops):
        raise UserError(f"{where}: the transform list has no ToTensor (or PILToTensor), so the images never become "
                        f"tensors; add ToTensor after the image ops (before Normalize)")
    return transforms.Compose(ops)


TENSOR_CONVERSIONS = (transforms.ToTensor, transforms.PILToTensor)


def check_on_image(transform: Callable, image: Any, where: str) -> None:
    """Apply ``transform`` to one ``image`` of the data (e.g. a crop larger than the images fails here, before
    any training, not in a data-loader worker); the global RNGs are left as they were."""
    import torch

    from utils.seeding import seeded
    try:
        with seeded(0):
            out = transform(image)
    except (TypeError, ValueError, RuntimeError, IndexError) as exc:
        text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise UserError(f"{where} fails on the {image.size[0]}x{image.size[1]} images of the data ({text}); "
                        f"change the transform (e.g. a crop no larger than the images)") from None
    if not isinstance(out, torch.Tensor) or out.ndim != 3:
        raise UserError(f"{where} turns an image into {type(out).__name__} "
                        f"{tuple(out.shape) if isinstance(out, torch.Tensor) else ''}, not a (C, H, W) tensor; "
                        f"end the transform with ToTensor (and Normalize)")
