"""``coda_prompt``: CODA-Prompt (Smith et al., CVPR 2023) on any timm ViT backbone."""
from __future__ import annotations

import argparse

import torch

from models.prompt_utils.base import PromptedViTModel
from models.prompt_utils.pools import CodaComponents
from models.prompt_utils.vit_prompting import cls_features, embed_tokens, run_blocks
from utils.args import positive_int
from utils.errors import UserError


def parse_layers(text: str) -> list[int]:
    try:
        layers = sorted({int(v) for v in str(text).split(",") if v.strip()})
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated block indices like 0,1,2,3,4, got '{text}'") from None
    if not layers or layers[0] < 0:
        raise argparse.ArgumentTypeError(f"expected non-negative block indices like 0,1,2,3,4, got '{text}'")
    return layers


class CodaPrompt(PromptedViTModel):
    """Decomposed prompts: in each prompted block, the prompt is a sum of components weighted by
    ``cos(q * A_m, K_m)`` (q: the frozen ViT's class-token feature), used as key/value prefixes
    (prefix tuning). Each task adds its own orthogonally initialised components; earlier ones
    are frozen. The classifier reads the class token."""

    NAME = "coda_prompt"
    COMPATIBILITY = ["class-il", "task-il"]

    @staticmethod
    def get_parser(parser):
        parser.add_argument("--pool_size", type=positive_int, default=100, help="components per layer (all tasks)")
        parser.add_argument("--prompt_length", type=positive_int, default=8,
                            help="tokens per component (even: half keys, half values)")
        parser.add_argument("--prompt_layers", type=parse_layers, default=[0, 1, 2, 3, 4],
                            help="ViT blocks that get prefixes (indices beyond the depth are ignored)")
        return parser

    def __init__(self, backbone, loss, args, transform, dataset=None):
        super().__init__(backbone, loss, args, transform, dataset)
        n_tasks = dataset.N_TASKS if dataset is not None else 1
        self.layers = [i for i in args.prompt_layers if i < len(self.vit.blocks)]
        if not self.layers:
            raise UserError(f"--prompt_layers {args.prompt_layers}: the ViT has only {len(self.vit.blocks)} blocks")
        try:
            self.components = CodaComponents(len(self.layers), args.pool_size, args.prompt_length,
                                             self.vit.embed_dim, n_tasks)
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
