"""The last block of a class-token ViT computed for the class token only, during the Fisher's forward.

A timm ``VisionTransformer`` with ``global_pool='token'`` (and no attention pooling) returns a function of row 0
of its last block's output: the other rows are computed and dropped. Their gradient is zero, so in each class
backward autograd multiplies zero rows through the last block's MLP, output projection and attention (dense
GEMMs of T tokens). :class:`ClsOnlyLastBlock` runs that block for the class token alone: its qkv projection over
all tokens (keys and values need them), attention with the one class-token query, then the output projection,
residual and MLP on one row. The network's output is the same; the last block's proj, fc1 and fc2 see one token
(their per-sample products are outer products) and the attention backward is a (1 x T) one. It acts only while
the network is called as a whole (``vit(x)``: ``forward_features`` then the head), on plain timm blocks, and not
where dropout or drop-path would draw random numbers (a module in training mode with a non-zero rate).
"""
from __future__ import annotations

from typing import Any, Callable, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.modules.module import register_module_forward_hook, register_module_forward_pre_hook


def _timm() -> Optional[Any]:
    try:
        from timm.models import vision_transformer
    except ImportError:  # timm is optional for the non-ViT backbones
        return None
    return vision_transformer


TOKENWISE_MLPS = ("Mlp", "GluMlp", "SwiGLU", "SwiGLUPacked")  # timm MLPs that act on each token alone


def _random(module: nn.Module) -> bool:
    """Whether ``module`` would draw random numbers in its forward (dropout or drop-path in training mode)."""
    for m in module.modules():
        rate = m.p if isinstance(m, nn.Dropout) else getattr(m, "drop_prob", 0.0)
        if m.training and rate:
            return True
    return False


def eligible_block(vit: nn.Module) -> Optional[nn.Module]:
    """The last block of ``vit`` when the class-token-only computation gives its output exactly; else None."""
    vt = _timm()
    if vt is None or not isinstance(vit, vt.VisionTransformer):
        return None
    cls = vt.VisionTransformer
    methods = ("forward", "forward_features", "forward_head", "pool")
    if any(getattr(type(vit), m) is not getattr(cls, m) or m in vit.__dict__ for m in methods):
        return None
    if vit.global_pool != "token" or vit.attn_pool is not None or vit.grad_checkpointing or not len(vit.blocks):
        return None
    block = vit.blocks[-1]
    attn_type = getattr(vt, "Attention", None)
    if type(block) is not vt.Block or attn_type is None or type(block.attn) is not attn_type:
        return None
    if "forward" in block.__dict__ or type(block.mlp).__name__ not in TOKENWISE_MLPS or _random(block):
        return None
    return block


def class_token_forward(block: nn.Module) -> Callable[..., torch.Tensor]:
    """``block``'s forward giving only the class token's output row, (B, 1, D)."""
    original = type(block).forward

    def forward(x: torch.Tensor, attn_mask: Optional[torch.Tensor] = None, is_causal: bool = False) -> torch.Tensor:
        if attn_mask is not None or is_causal:
            return original(block, x, attn_mask=attn_mask, is_causal=is_causal)
        a = block.attn
        y = block.norm1(x)
        b, n, _ = y.shape
        qkv = a.qkv(y).reshape(b, n, 3, a.num_heads, a.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        q, k = a.q_norm(q[:, :, :1]), a.k_norm(k)
        out = F.scaled_dot_product_attention(q, k, v, scale=a.scale)
        out = a.norm(out.transpose(1, 2).reshape(b, 1, a.num_heads * a.head_dim))
        if getattr(a, "gate", None) is not None:
            out = out * a.gate(y[:, :1]).sigmoid()
        out = a.proj_drop(a.proj(out))
        x = x[:, :1] + block.drop_path1(block.ls1(out))
        return x + block.drop_path2(block.ls2(block.mlp(block.norm2(x))))
    return forward


class ClsOnlyLastBlock:
    """Context manager: while active, every call ``vit(x)`` of an eligible ViT (:func:`eligible_block`) runs its
    last block for the class token only; ``self.calls`` counts those calls. Module-wide forward hooks find the
    ViT whatever function wraps it; the block's own forward is restored after each call and on exit."""

    def __init__(self) -> None:
        self.calls = 0
        self._patched: dict[int, nn.Module] = {}
        self._handles: list = []

    def __enter__(self) -> "ClsOnlyLastBlock":
        self._handles = [register_module_forward_pre_hook(self._before), register_module_forward_hook(self._after)]
        return self

    def __exit__(self, *exc: Any) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        for block in self._patched.values():
            block.__dict__.pop("forward", None)
        self._patched.clear()

    def _before(self, module: nn.Module, args: Any) -> None:
        if id(module) in self._patched or not torch.is_grad_enabled():
            return
        block = eligible_block(module)
        if block is not None:
            block.forward = class_token_forward(block)
            self._patched[id(module)] = block
            self.calls += 1

    def _after(self, module: nn.Module, args: Any, output: Any) -> None:
        block = self._patched.pop(id(module), None)
        if block is not None:
            block.__dict__.pop("forward", None)
