"""``dualprompt``: DualPrompt (Wang et al., ECCV 2022) on any timm ViT backbone."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
from torch import nn

from models.prompt_utils.base import PromptedViTModel, parse_layers, pull_constraint_setting
from models.prompt_utils.pools import PromptPool
from models.prompt_utils.vit_prompting import cls_features, embed_tokens, run_blocks
from utils.args import none_or, parse_bool, positive_int
from utils.errors import UserError
from utils.settings import setting


def layer_prefixes(prompts: torch.Tensor, layers: list[int],
                   length: int) -> dict[int, tuple[torch.Tensor, torch.Tensor]]:
    """Per block: (key, value) prefixes (B, length, D) from prompts (B, n_layers * 2 * length, D)."""
    per_layer = prompts.reshape(prompts.shape[0], len(layers), 2, length, prompts.shape[-1])
    return {layer: (per_layer[:, i, 0], per_layer[:, i, 1]) for i, layer in enumerate(layers)}


@dataclass(frozen=True)
class DualPromptSettings:
    g_prompt_length: int = setting(5, positive_int, "G-prompt tokens per key/value")
    g_prompt_layers: list[int] = setting([0, 1], parse_layers, "blocks with the G-prompt")
    e_prompt_length: int = setting(5, positive_int, "E-prompt tokens per key/value")
    e_prompt_layers: list[int] = setting([2, 3, 4], parse_layers, "blocks with E-prompts")
    e_pool_size: Optional[int] = setting(None, none_or(positive_int), "number of E-prompts (None: the number of tasks)")
    pull_constraint_coeff: float = pull_constraint_setting(1.0)
    e_prompt_init_previous: bool = setting(True, parse_bool,
                                           "start each task's E-prompt from the previous task's (official "
                                           "shared_prompt_pool)")


class DualPrompt(PromptedViTModel):
    """G-prompt (one, shared by all tasks) at the ``--g_prompt_layers`` and E-prompts (one per task,
    with a key) at the ``--e_prompt_layers``, both as attention prefixes (prefix tuning: ``length``
    key and ``length`` value tokens per layer). The query is the frozen ViT's class-token feature;
    training uses the current task's E-prompt and pulls its key to the queries (loss
    ``- pull_constraint_coeff * sum cos(q, k_t) / B``), testing picks the E-prompt whose key is most
    similar among the trained ones. The classifier reads the class token; past-class logits are
    masked in training."""

    NAME = "dualprompt"
    COMPATIBILITY = ["class-il", "task-il"]
    SETTINGS = DualPromptSettings
    settings: DualPromptSettings

    def __init__(self, backbone, loss, args, transform, dataset=None):
        super().__init__(backbone, loss, args, transform, dataset)
        depth, dim = len(self.vit.blocks), self.vit.embed_dim
        s = self.settings
        self.g_layers = [i for i in s.g_prompt_layers if i < depth]
        self.e_layers = [i for i in s.e_prompt_layers if i < depth]
        if not self.e_layers:
            raise UserError(f"--e_prompt_layers {s.e_prompt_layers}: the ViT has only {depth} blocks")
        n_tasks = dataset.n_tasks if dataset is not None else 1
        pool_size = s.e_pool_size or n_tasks
        if pool_size < n_tasks:
            raise UserError(f"--e_pool_size {pool_size} must be at least the number of tasks {n_tasks}")
        self.g_prompt = nn.Parameter(torch.empty(len(self.g_layers), 2, s.g_prompt_length, dim).uniform_(-1, 1)) \
            if self.g_layers else None
        self.e_pool = PromptPool(pool_size, len(self.e_layers) * 2 * s.e_prompt_length, dim, top_k=1)

    def prompt_modules(self):
        return [self.e_pool]

    def get_parameters(self):
        return [*super().get_parameters(), *([self.g_prompt] if self.g_prompt is not None else [])]

    @torch.no_grad()
    def begin_task(self, dataset) -> None:
        t = self.current_task
        if t > 0 and self.settings.e_prompt_init_previous and t < self.e_pool.prompts.shape[0]:
            self.e_pool.prompts[t] = self.e_pool.prompts[t - 1]

    def select(self, query: torch.Tensor, train: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """E-prompt index per sample (the current task's in training, the best key otherwise) and
        the pull term ``sum_b cos(q_b, k_idx(b)) / B``."""
        sim = self.e_pool.similarity(query)
        if train:
            idx = torch.full((query.shape[0], 1), self.current_task, dtype=torch.long, device=query.device)
        else:  # evaluation follows meta_end_task: the keys of tasks < current_task are trained
            trained = max(1, min(self.current_task, sim.shape[1]))
            idx = sim[:, :trained].argmax(dim=1, keepdim=True)
        return idx[:, 0], sim.gather(1, idx).sum() / query.shape[0]

    def block_prefixes(self, x: torch.Tensor, train: bool) -> tuple[list[Optional[tuple]], torch.Tensor]:
        """The (key, value) prefixes of every block and the pull term."""
        idx, pull = self.select(self.query(x), train)
        e = layer_prefixes(self.e_pool.prompts[idx].to(x.dtype), self.e_layers, self.settings.e_prompt_length)
        prefixes: list[Optional[tuple]] = [None] * len(self.vit.blocks)
        for layer, (k, v) in e.items():
            prefixes[layer] = (k, v)
        if self.g_prompt is not None:
            g = self.g_prompt.to(x.dtype).unsqueeze(0).expand(x.shape[0], -1, -1, -1, -1)
            for i, layer in enumerate(self.g_layers):  # a block in both sets gets G then E tokens
                k, v = g[:, i, 0], g[:, i, 1]
                if prefixes[layer] is not None:
                    k, v = torch.cat((k, prefixes[layer][0]), 1), torch.cat((v, prefixes[layer][1]), 1)
                prefixes[layer] = (k, v)
        return prefixes, pull

    def prompted_logits(self, x, train):
        prefixes, pull = self.block_prefixes(x, train)
        tokens = run_blocks(self.vit, embed_tokens(self.vit, x), prefixes)
        return self.net.classifier(cls_features(self.vit, tokens)), -self.settings.pull_constraint_coeff * pull
