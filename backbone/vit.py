"""Vision Transformers built with timm's own ``VisionTransformer`` (no forked model code)."""
from __future__ import annotations

from typing import Optional

from timm.models.vision_transformer import VisionTransformer

from backbone import ContinualBackbone, register


@register("vit_tiny", "vit-tiny")
def vit_tiny(num_classes: int, img_size: int = 32, in_chans: int = 3, patch_size: Optional[int] = None,
             embed_dim: int = 128, depth: int = 4, num_heads: int = 4) -> ContinualBackbone:
    """A small randomly initialised ViT for CPU work (CLS-token features after the final norm).

    ``--patch_size`` defaults to ``img_size // 8`` (64 tokens). It has the same block
    structure as ViT-B/16 (qkv, proj, fc1, fc2), so every adapter code path is exercised.
    """
    patch = patch_size or max(1, img_size // 8)
    if img_size % patch:
        from utils.errors import UserError
        raise UserError(f"--patch_size {patch} does not divide the image size {img_size}; pick a divisor")
    body = VisionTransformer(img_size=img_size, patch_size=patch, in_chans=in_chans, embed_dim=embed_dim,
                             depth=depth, num_heads=num_heads, num_classes=0, global_pool="token")
    return ContinualBackbone(body, embed_dim, num_classes)
