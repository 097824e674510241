"""Forward passes of a timm ``VisionTransformer`` with prompt tokens or attention prefixes."""
from __future__ import annotations

from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from timm.models.vision_transformer import Attention, Block, VisionTransformer
from torch import nn

from utils.errors import UserError


def require_vit(net: nn.Module, method: str) -> VisionTransformer:
    """The timm ``VisionTransformer`` body of a ``ContinualBackbone``, or a one-line error."""
    body = getattr(net, "body", None)
    if not isinstance(body, VisionTransformer):
        raise UserError(f"{method} prompts a timm VisionTransformer; backbone body is "
                        f"{type(body).__name__}: use --backbone vit_tiny (or another ViT backbone)")
    for i, block in enumerate(body.blocks):
        if not isinstance(block, Block) or not isinstance(block.attn, Attention):
            raise UserError(f"{method}: block {i} of the ViT is {type(block).__name__}, not a standard timm Block")
    return body


def embed_tokens(body: VisionTransformer, x: torch.Tensor) -> torch.Tensor:
    """Patch embedding, class token and position embedding, as ``forward_features`` does before the blocks."""
    x = body.patch_embed(x)
    x = body._pos_embed(x)
    x = body.patch_drop(x)
    return body.norm_pre(x)


def prefix_attention(attn: Attention, x: torch.Tensor, prefix_k: torch.Tensor, prefix_v: torch.Tensor) -> torch.Tensor:
    """timm ``Attention`` with learned key/value prefixes ``(B, P, C)`` prepended (prefix tuning).

    Uses the module's own projections and norms; with ``P = 0`` it equals ``attn(x)``.
    """
    B, N, C = x.shape
    heads, head_dim = attn.num_heads, attn.head_dim
    gate = attn.gate(x).sigmoid() if getattr(attn, "gate", None) is not None else None
    q, k, v = attn.qkv(x).reshape(B, N, 3, heads, head_dim).permute(2, 0, 3, 1, 4).unbind(0)
    split = (lambda t: t.reshape(B, t.shape[1], heads, head_dim).transpose(1, 2))
    k = torch.cat((split(prefix_k), k), dim=2)
    v = torch.cat((split(prefix_v), v), dim=2)
    q, k = attn.q_norm(q), attn.k_norm(k)
    out = F.scaled_dot_product_attention(q, k, v, dropout_p=attn.attn_drop.p if attn.training else 0.0)
    out = getattr(attn, "norm", nn.Identity())(out.transpose(1, 2).reshape(B, N, -1))
    if gate is not None:
        out = out * gate
    return attn.proj_drop(attn.proj(out))


def prompted_block(block: Block, x: torch.Tensor, prefix: Optional[tuple[torch.Tensor, torch.Tensor]]) -> torch.Tensor:
    """One timm ``Block``; with ``prefix`` its attention gets the key/value prefixes."""
    if prefix is None:
        return block(x)
    x = x + block.drop_path1(block.ls1(prefix_attention(block.attn, block.norm1(x), *prefix)))
    return x + block.drop_path2(block.ls2(block.mlp(block.norm2(x))))


def run_blocks(body: VisionTransformer, x: torch.Tensor,
               prefixes: Optional[Sequence[Optional[tuple[torch.Tensor, torch.Tensor]]]] = None) -> torch.Tensor:
    """All blocks (``prefixes[i]`` for block i, None for none) followed by the final norm."""
    for i, block in enumerate(body.blocks):
        x = prompted_block(block, x, prefixes[i] if prefixes is not None and i < len(prefixes) else None)
    return body.norm(x)


def cls_features(body: VisionTransformer, tokens: torch.Tensor) -> torch.Tensor:
    """The body's own pooling of normed tokens (class token for ``global_pool='token'``)."""
    return body.forward_head(tokens, pre_logits=True)
