"""Vision Transformers built with timm's own ``VisionTransformer`` (no forked model code).

``vit_tiny``: a small random-init ViT for CPU work. ``vit``: Mammoth's ViT-B/16 with pretrained weights.
"""
from __future__ import annotations

import os
import re
from typing import Any, Literal, Optional

from timm.models.vision_transformer import VisionTransformer

from backbone import ContinualBackbone, Limits, register
from backbone.pretrained import create_headless_timm_model
from utils.errors import UserError


VIT_TINY_LIMITS = Limits(
    minimum={"patch_size": 1, "embed_dim": 1, "depth": 1, "num_heads": 1},
    rules=((lambda embed_dim, num_heads: embed_dim % num_heads == 0,
            "--num_heads {num_heads} does not divide --embed_dim {embed_dim} (each head gets embed_dim / num_heads "
            "channels); pick a divisor of {embed_dim} or another --embed_dim"),))


@register("vit_tiny", "vit-tiny", limits=VIT_TINY_LIMITS)
def vit_tiny(num_classes: int, img_size: int = 32, in_chans: int = 3, patch_size: Optional[int] = None,
             embed_dim: int = 128, depth: int = 4, num_heads: int = 4) -> ContinualBackbone:
    """A small randomly initialised ViT for CPU work (CLS-token features after the final norm).

    ``--patch_size`` defaults to ``img_size // 8`` (64 tokens). It has the same block
    structure as ViT-B/16 (qkv, proj, fc1, fc2), so every adapter code path is exercised.
    """
    patch = patch_size if patch_size is not None else max(1, img_size // 8)
    if img_size % patch:
        raise UserError(f"--patch_size {patch} does not divide the image size {img_size}; pick a divisor")
    body = VisionTransformer(img_size=img_size, patch_size=patch, in_chans=in_chans, embed_dim=embed_dim,
                             depth=depth, num_heads=num_heads, num_classes=0, global_pool="token")
    return ContinualBackbone(body, embed_dim, num_classes)


VIT_B16 = "vit_base_patch16_224"
PRETRAIN_TAGS = {  # --pretrain_type -> timm weight tag of vit_base_patch16_224 (Hugging Face hub, timm/...)
    "in21k": "augreg_in21k",
    "in21k-ft-in1k": "augreg2_in21k_ft_in1k",
    "in21k_old": "orig_in21k",
}
# Test-only: "embed_dim=32,depth=1,num_heads=2" shrinks ViT-B/16 to those sizes (same names, same weight files
# and cache layout, fewer/smaller tensors), so Mammoth's ViT-B command lines run in seconds in the test suite.
TEST_VIT_B16_DIMS = "CL_TEST_VIT_B16_DIMS"


def test_dims_override() -> dict[str, int]:
    """The ``CL_TEST_VIT_B16_DIMS`` sizes (empty outside tests); a bad value is a one-line error."""
    text = os.environ.get(TEST_VIT_B16_DIMS, "").strip()
    if not text:
        return {}
    try:
        dims = {k.strip(): int(v) for k, v in (item.split("=") for item in text.split(","))}
    except ValueError:
        raise UserError(f"{TEST_VIT_B16_DIMS}={text!r}: expected e.g. embed_dim=32,depth=1,num_heads=2") from None
    unknown = set(dims) - {"embed_dim", "depth", "num_heads"}
    if unknown:
        raise UserError(f"{TEST_VIT_B16_DIMS}: unknown key {sorted(unknown)[0]!r}; use embed_dim, depth, num_heads")
    return dims


# Mammoth's in21k_old: Google's original ImageNet-21k ViT-B/16, read by timm's JAX .npz loader.
GOOGLE_IN21K_NPZ = "https://storage.googleapis.com/vit_models/imagenet21k/ViT-B_16.npz"


def vit_weight_source(arch: str, pretrain_type: str) -> tuple[str, Optional[dict[str, Any]]]:
    """The timm tag and pretrained-config overlay of ``--pretrain_type`` for ``arch``."""
    if pretrain_type not in PRETRAIN_TAGS:
        raise UserError(f"unknown --pretrain_type {pretrain_type!r}; choose from {', '.join(PRETRAIN_TAGS)}")
    if pretrain_type == "in21k_old" and arch == VIT_B16:
        return "orig_in21k", {"url": GOOGLE_IN21K_NPZ, "hf_hub_id": None, "custom_load": True, "num_classes": 21843}
    return PRETRAIN_TAGS[pretrain_type], None


def create_timm_vit(arch: str = VIT_B16, img_size: int = 224, in_chans: int = 3, pretrained: bool = True,
                    pretrain_type: str = "in21k-ft-in1k", pretrained_path: Optional[str] = None,
                    **kwargs: Any) -> VisionTransformer:
    """A headless timm ViT (CLS-token features after the final norm) with optional pretrained weights.

    Weights come from ``pretrained_path`` (a local .pth/.bin/.safetensors or Google .npz file) or else from
    timm's registry for ``pretrain_type`` (Hugging Face cache/hub). Position embeddings are resampled to
    ``img_size``. Missing weights on an offline machine raise a one-line UserError.
    """
    match = re.search(r"patch(\d+)", arch)
    patch = int(match.group(1)) if match else None
    if patch and img_size % patch:
        raise UserError(f"the image size {img_size} is not a multiple of {arch}'s patch size {patch}; "
                        f"resize the images (e.g. --img_size {max(patch, round(img_size / patch) * patch)})")
    if arch == VIT_B16:
        kwargs = {**test_dims_override(), **kwargs}
    tag, overlay = vit_weight_source(arch, pretrain_type)
    where = overlay["url"] if overlay else f"https://huggingface.co/timm/{arch}.{tag}"
    fix = f"download the weights ({where}) elsewhere and pass --pretrained_path FILE, or use --pretrained 0"
    return create_headless_timm_model(arch, tag, pretrained, pretrained_path, how_to_fix=fix, overlay=overlay,
                                      img_size=img_size, in_chans=in_chans, global_pool="token", **kwargs)


TEST_ARCH_ENV = "CL_TEST_VIT_B16_ARCH"


def vit_b16_architecture() -> tuple[str, dict[str, Any]]:
    """The timm architecture behind ``--backbone vit``: ViT-B/16, unless the test-only environment variable
    ``CL_TEST_VIT_B16_ARCH="arch[:key=int,...]"`` (e.g. ``vit_tiny_patch16_224:depth=1``) replaces it by a smaller
    one with the same weight names and tags, so that CPU tests (``benchmarks/gpu_check.py --device cpu``) run the
    real loading path (Hugging Face cache, ``--pretrain_type``) in seconds. Never set it for real runs."""
    spec = os.environ.get(TEST_ARCH_ENV, "").strip()
    if not spec:
        return VIT_B16, {}
    arch, _, rest = spec.partition(":")
    try:
        kwargs = {k: int(v) for k, v in (item.split("=") for item in rest.split(",") if item)}
    except ValueError:
        raise UserError(f"{TEST_ARCH_ENV}={spec!r}: expected arch[:key=int,...]") from None
    return arch, kwargs


@register("vit")
def vit(num_classes: int, img_size: int = 224, in_chans: int = 3, pretrained: bool = True,
        pretrain_type: Literal["in21k", "in21k-ft-in1k", "in21k_old"] = "in21k-ft-in1k",
        pretrained_path: Optional[str] = None) -> ContinualBackbone:
    """ViT-B/16 (timm ``vit_base_patch16_224``, 768-d CLS features) + a fresh linear classifier.

    ``--pretrain_type``: in21k = ``augreg_in21k``, in21k-ft-in1k = ``augreg2_in21k_ft_in1k`` (default),
    in21k_old = Google's original ImageNet-21k ``ViT-B_16.npz``. ``--pretrained_path FILE`` loads local
    weights instead (works offline). The weights expect inputs normalised with mean = std = 0.5.
    """
    arch, overrides = vit_b16_architecture()
    body = create_timm_vit(arch, img_size=img_size, in_chans=in_chans, pretrained=pretrained,
                           pretrain_type=pretrain_type, pretrained_path=pretrained_path, **overrides)
    return ContinualBackbone(body, body.num_features, num_classes)
