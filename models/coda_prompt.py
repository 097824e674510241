"""``coda_prompt``: CODA-Prompt (Smith et al., CVPR 2023) on any timm ViT backbone."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from models.prompt_utils.base import PromptedViTModel, parse_layers
from models.prompt_utils.pools import CodaComponents
from models.prompt_utils.vit_prompting import cls_features, embed_tokens, run_blocks
from utils.args import positive_int
from utils.errors import UserError
from utils.settings import setting


@dataclass(frozen=True)
class CodaPromptSettings:
    pool_size: int = setting(100, positive_int, "components per layer (all tasks)")
    prompt_length: int = setting(8, positive_int, "tokens per component (even: half keys, half values)")
    prompt_layers: list[int] = setting([0, 1, 2, 3, 4], parse_layers,
                                       "ViT blocks that get prefixes (indices beyond the depth are ignored)")


class CodaPrompt(PromptedViTModel):
    """Decomposed prompts: in each prompted block, the prompt is a sum of components weighted by
    ``cos(q * A_m, K_m)`` (q: the frozen ViT's class-token feature), used as key/value prefixes
    (prefix tuning). Each task adds its own orthogonally initialised components; earlier ones
    are frozen. The classifier reads the class token."""

    NAME = "coda_prompt"
    COMPATIBILITY = ["class-il", "task-il"]
    SETTINGS = CodaPromptSettings
    settings: CodaPromptSettings

    def __init__(self, backbone, loss, args, transform, dataset=None):
        super().__init__(backbone, loss, args, transform, dataset)
        n_tasks = dataset.n_tasks if dataset is not None else 1
        s = self.settings
        self.layers = [i for i in s.prompt_layers if i < len(self.vit.blocks)]
        if not self.layers:
            raise UserError(f"--prompt_layers {s.prompt_layers}: the ViT has only {len(self.vit.blocks)} blocks")
        try:
            self.components = CodaComponents(len(self.layers), s.pool_size, s.prompt_length, self.vit.embed_dim,
                                             n_tasks)
        except ValueError as exc:
            raise UserError(f"coda_prompt: {exc}") from None

    def prompt_modules(self):
        return [self.components]

    def begin_task(self, dataset) -> None:
        self.components.init_task(self.current_task)

    def prompted_logits(self, x, train):
        per_task = self.components.per_task
        if train:
            end, train_start = (self.current_task + 1) * per_task, self.current_task * per_task
        else:  # evaluation happens after meta_end_task: current_task tasks are done
            end = train_start = max(self.current_task, 0) * per_task
        prefixes = [None] * len(self.vit.blocks)
        if end > 0:
            query = self.query(x)
            for i, layer in enumerate(self.layers):
                prefixes[layer] = tuple(p.to(x.dtype) for p in self.components(i, query, end, train_start))
        tokens = run_blocks(self.vit, embed_tokens(self.vit, x), prefixes)
        return self.net.classifier(cls_features(self.vit, tokens)), torch.zeros((), device=x.device)
