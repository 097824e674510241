"""``l2p``: Learning to Prompt (Wang et al., CVPR 2022) on any timm ViT backbone."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from models.prompt_utils.base import PromptedViTModel, pull_constraint_setting
from models.prompt_utils.pools import PromptPool
from models.prompt_utils.vit_prompting import embed_tokens, run_blocks
from utils.args import parse_bool, positive_int
from utils.errors import UserError
from utils.settings import setting


@dataclass(frozen=True)
class L2PSettings:
    pool_size: int = setting(10, positive_int, "number of prompts in the pool")
    prompt_length: int = setting(5, positive_int, "tokens per prompt")
    top_k: int = setting(5, positive_int, "prompts selected per image")
    pull_constraint_coeff: float = pull_constraint_setting(0.1)
    batchwise_prompt: bool = setting(False, parse_bool,
                                     "at test time use the top_k prompts most chosen in the batch (majority vote)")


class L2P(PromptedViTModel):
    """A pool of prompts with keys. The frozen ViT's class-token feature of the image is the
    query; the ``--top_k`` prompts with the most similar keys are prepended to the patch tokens
    of the same frozen ViT, and the mean of their outputs feeds the classifier. The loss adds
    ``-pull_constraint_coeff * sum of selected key similarities / B`` (pulls keys to queries)."""

    NAME = "l2p"
    COMPATIBILITY = ["class-il", "domain-il", "task-il", "general-continual"]
    SETTINGS = L2PSettings
    settings: L2PSettings

    def __init__(self, backbone, loss, args, transform, dataset=None):
        super().__init__(backbone, loss, args, transform, dataset)
        s = self.settings
        if s.top_k > s.pool_size:
            raise UserError(f"--top_k {s.top_k} exceeds --pool_size {s.pool_size}")
        self.pool = PromptPool(s.pool_size, s.prompt_length, self.vit.embed_dim, s.top_k)

    def prompt_modules(self):
        return [self.pool]

    def prompted_features(self, x: torch.Tensor, train: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean output of the prompt tokens (B, D) and the pull term."""
        prompts, pull = self.pool(self.query(x), batchwise=self.settings.batchwise_prompt and not train)
        tokens = torch.cat((prompts.to(x.dtype), embed_tokens(self.vit, x)), dim=1)
        tokens = run_blocks(self.vit, tokens)
        return tokens[:, :prompts.shape[1]].mean(dim=1), pull

    def prompted_logits(self, x, train):
        features, pull = self.prompted_features(x, train)
        return self.net.classifier(features), -self.settings.pull_constraint_coeff * pull
