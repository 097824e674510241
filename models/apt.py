"""``apt``: A-la-carte Prompt Tuning (Bowman et al., CVPR 2023) on any timm ViT backbone.

Each task owns a prompt (``--prompt_length`` tokens prepended to the input, ``--memory_length`` memory
tokens per block) and a linear head over its own classes. Structured attention: the backbone tokens
(class token + patches) attend only to backbone tokens, so they are exactly the frozen ViT's (computed
once per image, shared by every prompt); prompt i's tokens attend to the backbone tokens, to prompt i's
tokens and to prompt i's memory tokens of that block, never to another prompt. Memory tokens enter the
block's input (``norm1`` and the ``qkv`` projection) as keys/values only; they have no output.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Optional, Sequence

import torch
import torch.nn.functional as F
from timm.models.vision_transformer import Attention, Block, VisionTransformer
from torch import nn

from models.prompt_utils.base import PromptedViTModel
from models.prompt_utils.vit_prompting import cls_features, embed_tokens
from utils.args import nonneg_int, positive_int
from utils.settings import setting


def class_token_embedding(vit: VisionTransformer) -> Optional[torch.Tensor]:
    """The class token as the blocks receive it (class token + its position embedding), or None without one."""
    if getattr(vit, "cls_token", None) is None:
        return None
    token = vit.cls_token[0, 0].detach()
    if getattr(vit, "pos_embed", None) is not None and not getattr(vit, "no_embed_class", False):
        token = token + vit.pos_embed[0, 0].detach()
    return vit.norm_pre(token).detach()


class TaskPrompts(nn.Module):
    """Every task's prompt tokens ``(length, D)``, memory tokens ``(depth, memory, D)`` and head.

    ``n_tasks`` counts the trained prompts (the ones the evaluation composes)."""

    def __init__(self, classes_per_task: Sequence[int], length: int, memory: int, depth: int, dim: int,
                 init_token: Optional[torch.Tensor]) -> None:
        super().__init__()
        n = len(classes_per_task)
        if init_token is None:  # a ViT without class token: small random tokens
            tokens = [nn.init.trunc_normal_(torch.empty(length, dim), std=0.02) for _ in range(n)]
        else:  # each prompt starts as a copy of the frozen class token (a fresh one per task)
            tokens = [init_token.expand(length, dim).clone() for _ in range(n)]
        self.tokens = nn.ParameterList([nn.Parameter(t) for t in tokens])
        self.memory = nn.ParameterList([nn.Parameter(nn.init.trunc_normal_(torch.empty(depth, memory, dim), std=0.02))
                                        for _ in range(n)])
        self.heads = nn.ModuleList([nn.Linear(dim, c) for c in classes_per_task])
        self.n_tasks = 0

    def task_parameters(self, task: int) -> list[nn.Parameter]:
        return [self.tokens[task], self.memory[task], *self.heads[task].parameters()]


def _qkv(attn: Attention, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """timm ``Attention``'s q, k, v ``(B, heads, N, head_dim)`` of normed tokens, with its q/k norms."""
    B, N, _ = h.shape
    q, k, v = attn.qkv(h).reshape(B, N, 3, attn.num_heads, attn.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
    return attn.q_norm(q), attn.k_norm(k), v


def _attend(attn: Attention, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
            mask: Optional[torch.Tensor]) -> torch.Tensor:
    """Softmax attention as timm's module computes it (fused SDPA or its explicit path); ``mask``: True = attend."""
    drop = attn.attn_drop.p if attn.training else 0.0
    if attn.fused_attn:
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=drop)
    scores = (q * attn.scale) @ k.transpose(-2, -1)
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    return attn.attn_drop(scores.softmax(dim=-1)) @ v


def _attention_output(attn: Attention, out: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
    """timm ``Attention``'s head merge, norm, gate, projection and dropout."""
    B, _, N, _ = out.shape
    out = attn.norm(out.transpose(1, 2).reshape(B, N, attn.attn_dim))
    if getattr(attn, "gate", None) is not None:
        out = out * attn.gate(h).sigmoid()
    return attn.proj_drop(attn.proj(out))


def _residual(block: Block, x: torch.Tensor, attended: torch.Tensor) -> torch.Tensor:
    x = x + block.drop_path1(block.ls1(attended))
    return x + block.drop_path2(block.ls2(block.mlp(block.norm2(x))))


def prompt_mask(n_backbone: int, n_prompts: int, length: int, memory: int, device: torch.device) -> torch.Tensor:
    """``(n_prompts * length, n_backbone + n_prompts * (length + memory))``, True where a prompt token may
    attend: every backbone token, its own prompt's tokens, its own prompt's memory tokens."""
    owner_q = torch.arange(n_prompts, device=device).repeat_interleave(length)
    owner_k = torch.cat((torch.full((n_backbone,), -1, device=device), owner_q,
                         torch.arange(n_prompts, device=device).repeat_interleave(memory)))
    return (owner_k[None, :] == -1) | (owner_k[None, :] == owner_q[:, None])


def structured_block(block: Block, xb: torch.Tensor, xp: torch.Tensor, mem: torch.Tensor,
                     mask: Optional[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """One timm ``Block`` under APT's structured attention: backbone tokens ``xb`` see only themselves (the
    block's own computation), prompt tokens ``xp`` see ``[xb, xp, mem]`` as ``mask`` allows."""
    attn = block.attn
    hb, hp = block.norm1(xb), block.norm1(xp)
    qb, kb, vb = _qkv(attn, hb)
    qp, kp, vp = _qkv(attn, hp)
    keys, values = [kb, kp], [vb, vp]
    if mem.shape[1]:
        _, km, vm = _qkv(attn, block.norm1(mem))
        keys.append(km)
        values.append(vm)
    out_b = _attention_output(attn, _attend(attn, qb, kb, vb, None), hb)
    out_p = _attention_output(attn, _attend(attn, qp, torch.cat(keys, 2), torch.cat(values, 2), mask), hp)
    return _residual(block, xb, out_b), _residual(block, xp, out_p)


def structured_forward(vit: VisionTransformer, images: torch.Tensor, tokens: Sequence[torch.Tensor],
                       memory: Sequence[torch.Tensor]) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """The frozen ViT's normed backbone tokens ``(B, N, D)`` and, per prompt, its normed output tokens
    ``(B, length, D)``; prompt i is ``tokens[i]`` ``(length, D)`` with ``memory[i]`` ``(depth, M, D)``."""
    xb = embed_tokens(vit, images)
    if not tokens:
        for block in vit.blocks:
            xb = block(xb)
        return vit.norm(xb), []
    B, N, _ = xb.shape
    length, n_mem = tokens[0].shape[0], memory[0].shape[1]
    xp = torch.cat(list(tokens)).to(xb.dtype).unsqueeze(0).expand(B, -1, -1)
    mask = prompt_mask(N, len(tokens), length, n_mem, xb.device) if len(tokens) > 1 else None
    for i, block in enumerate(vit.blocks):
        mem = torch.cat([m[i] for m in memory]).to(xb.dtype).unsqueeze(0).expand(B, -1, -1)
        xb, xp = structured_block(block, xb, xp, mem, mask)
    xp = vit.norm(xp)
    return vit.norm(xb), [xp[:, i * length:(i + 1) * length] for i in range(len(tokens))]


@dataclass(frozen=True)
class AptSettings:
    prompt_length: int = setting(1, positive_int, "prompt tokens per task (their mean output feeds the task's head)")
    memory_length: int = setting(5, nonneg_int, "memory tokens per task in every block (0: shallow prompt only)")


class APT(PromptedViTModel):
    """A-la-carte Prompt Tuning: task t trains only its prompt (tokens + per-block memory) and its head
    with CE on its own classes, on the frozen ViT under structured attention. Prediction: the ensemble
    average of the composed prompts' predictive distributions, each prompt's a softmax over its own
    task's classes (zero elsewhere): logit of class c of task t = ``log(w_t) + log_softmax(head_t(z_t))[c]``,
    ``w_t = 1/T`` over the trained prompts; a dropped prompt (``w_t = 0``) removes its classes (``-inf``).
    With every weight 0 (editing's theta0 reference) each head reads the frozen ViT's class-token feature."""

    NAME = "apt"
    COMPATIBILITY = ["class-il", "task-il"]
    SETTINGS = AptSettings
    settings: AptSettings

    def __init__(self, backbone, loss, args, transform, dataset=None):
        super().__init__(backbone, loss, args, transform, dataset)
        self.net.classifier.requires_grad_(False)  # unused: every task has its own head
        n_classes = self.net.classifier.out_features
        self.offsets = [dataset.get_offsets(t) for t in range(dataset.n_tasks)] if dataset is not None \
            else [(0, n_classes)]
        self.pool = TaskPrompts([end - start for start, end in self.offsets], self.settings.prompt_length,
                                self.settings.memory_length, len(self.vit.blocks), self.vit.embed_dim,
                                class_token_embedding(self.vit))
        self.n_classes = n_classes
        self.eval_task_weights: Optional[list[float]] = None  # editing: weights of the composition

    def prompt_modules(self):
        return [self.pool]

    def get_parameters(self):
        return self.pool.task_parameters(self.current_task)

    def prompt_features(self, x: torch.Tensor, tasks: Sequence[int]) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """The frozen ViT's pooled feature ``(B, D)`` and each listed prompt's feature ``(B, D)``."""
        backbone, outs = structured_forward(self.vit, x, [self.pool.tokens[t] for t in tasks],
                                            [self.pool.memory[t] for t in tasks])
        return cls_features(self.vit, backbone), [self.vit.fc_norm(o.mean(dim=1)) for o in outs]

    def observe(self, inputs, labels, not_aug_inputs, epoch=None):
        self.opt.zero_grad(set_to_none=True)
        task = self.current_task
        _, (feature,) = self.prompt_features(inputs, [task])
        loss = self.loss(self.pool.heads[task](feature).float(), labels - self.n_past_classes)
        loss.backward()
        self.opt.step()
        return loss.detach()

    def end_task(self, dataset) -> None:
        self.pool.n_tasks = self.current_task + 1

    def composition_weights(self) -> list[float]:
        """Per trained prompt: ``eval_task_weights`` (editing) or uniform ``1/T``."""
        n = self.pool.n_tasks
        if self.eval_task_weights is None:
            return [1.0 / n] * n if n else []
        if len(self.eval_task_weights) != n or min(self.eval_task_weights) < 0:
            raise ValueError(f"{len(self.eval_task_weights)} weights for {n} prompts (need {n}, each >= 0)")
        return [float(w) for w in self.eval_task_weights]

    def compose_eval(self) -> None:
        """Check the composition weights (nothing is precomputed: prompts compose at every forward)."""
        self.composition_weights()

    def composed_logits(self, x: torch.Tensor, weights: Sequence[float]) -> torch.Tensor:
        """``(B, n_classes)``: ``log(w_t) + log_softmax(head_t(z_t))`` on task t's classes, -inf elsewhere."""
        active = [t for t, w in enumerate(weights) if w > 0]
        theta0, feats = self.prompt_features(x, active)
        if not active:  # theta0 with the same heads (every prompt dropped, or none trained yet)
            active = list(range(len(weights) or len(self.offsets)))
            weights, feats = [1.0 / len(active)] * len(active), [theta0] * len(active)
        else:
            weights = [weights[t] for t in active]
        logits = torch.full((x.shape[0], self.n_classes), float("-inf"), device=x.device)
        for task, w, z in zip(active, weights, feats):
            start, end = self.offsets[task]
            logits[:, start:end] = math.log(w) + F.log_softmax(self.pool.heads[task](z).float(), dim=1)
        return logits

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.composed_logits(x, self.composition_weights())

    def load_checkpoint_state(self, state: dict[str, Any], dataset: Any) -> None:
        super().load_checkpoint_state(state, dataset)
        self.pool.n_tasks = self.current_task
