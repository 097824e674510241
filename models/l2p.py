"""``l2p``: Learning to Prompt (Wang et al., CVPR 2022) on any timm ViT backbone."""
from __future__ import annotations

import torch

from models.prompt_utils.base import PromptedViTModel
from models.prompt_utils.pools import PromptPool
from models.prompt_utils.vit_prompting import embed_tokens, run_blocks
from utils.args import nonneg_float, parse_bool, positive_int
from utils.errors import UserError


class L2P(PromptedViTModel):
    """A pool of prompts with keys. The frozen ViT's class-token feature of the image is the
    query; the ``--top_k`` prompts with the most similar keys are prepended to the patch tokens
    of the same frozen ViT, and the mean of their outputs feeds the classifier. The loss adds
    ``-pull_constraint_coeff * sum of selected key similarities / B`` (pulls keys to queries)."""

    NAME = "l2p"
    COMPATIBILITY = ["class-il", "domain-il", "task-il", "general-continual"]

    @staticmethod
    def get_parser(parser):
        parser.add_argument("--pool_size", type=positive_int, default=10, help="number of prompts in the pool")
        parser.add_argument("--prompt_length", type=positive_int, default=5, help="tokens per prompt")
        parser.add_argument("--top_k", type=positive_int, default=5, help="prompts selected per image")
        parser.add_argument("--pull_constraint_coeff", type=nonneg_float, default=0.1,
                            help="weight of the key-query pull constraint")
        parser.add_argument("--batchwise_prompt", type=parse_bool, default=False,
                            help="at test time use the top_k prompts most chosen in the batch (majority vote)")
        return parser

    def __init__(self, backbone, loss, args, transform, dataset=None):
        super().__init__(backbone, loss, args, transform, dataset)
        if args.top_k > args.pool_size:
            raise UserError(f"--top_k {args.top_k} exceeds --pool_size {args.pool_size}")
        self.pool = PromptPool(args.pool_size, args.prompt_length, self.vit.embed_dim, args.top_k)

    def prompt_modules(self):
        return [self.pool]

    def prompted_features(self, x: torch.Tensor, train: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean output of the prompt tokens (B, D) and the pull term."""
        prompts, pull = self.pool(self.query(x), batchwise=bool(self.args.batchwise_prompt) and not train)
        tokens = torch.cat((prompts.to(x.dtype), embed_tokens(self.vit, x)), dim=1)
        tokens = run_blocks(self.vit, tokens)
        return tokens[:, :prompts.shape[1]].mean(dim=1), pull

    def prompted_logits(self, x, train):
        features, pull = self.prompted_features(x, train)
        return self.net.classifier(features), -self.args.pull_constraint_coeff * pull
