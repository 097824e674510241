"""Command-line flags of the ``second_order`` model (docs/second_order.md has the table)."""
from __future__ import annotations

import argparse
from typing import Optional

from models.second_order_utils.modules import TUNING_STYLES
from utils.args import add_run_flag, nonneg_float, nonneg_int, none_or, parse_bool, positive_float, positive_int


def all_or_int(value: str) -> Optional[int]:
    """``all`` -> None (every seen class), else a positive int."""
    if str(value).strip().lower() == "all":
        return None
    try:
        number = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected 'all' or an integer >= 1, got '{value}'") from None
    if number < 1:
        raise argparse.ArgumentTypeError(f"expected 'all' or an integer >= 1, got '{value}'")
    return number


CPU_STATS_BATCH = 64


def auto_or_int(value: str) -> Optional[int]:
    """``auto`` -> None (sized automatically), else a positive int."""
    if str(value).strip().lower() in ("auto", "none"):
        return None
    try:
        number = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected 'auto' or an integer >= 1, got '{value}'") from None
    if number < 1:
        raise argparse.ArgumentTypeError(f"expected 'auto' or an integer >= 1, got '{value}'")
    return number


def add_second_order_args(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add the ITA/IEL flags with the reference's defaults (algorithm.md §6.4) plus this framework's own."""
    add = parser.add_argument
    add("--tuning_style", type=str, default="lora", choices=list(TUNING_STYLES), help="per-task module type")
    add("--lora_r", type=positive_int, default=16, help="LoRA rank (3x on a ViT's qkv)")
    add("--use_iel", type=parse_bool, default=False, help="0: ITA (individual training), 1: IEL (ensemble)")
    add("--alpha_ita", type=nonneg_float, default=0.0, help="alpha of ITA (Eq. 11)")
    add("--beta_iel", type=nonneg_float, default=0.0, help="beta of IEL (Eq. 18/19)")
    add("--req_weight_cls", type=none_or(nonneg_float), default=None,
        help="lambda_F of the head regulariser (default: alpha for ITA, beta for IEL)")
    add("--simple_reg_weight_cls", type=nonneg_float, default=0.0, help="lambda_2 of the head regulariser")
    add("--virtual_bs_n", type=positive_int, default=1, help="micro-batches per optimizer step")
    add("--vbs_tail", type=str, default="drop", choices=["drop", "flush"],
        help="micro-batches left at the end of an epoch: skipped (drop) or one smaller step (flush)")
    add("--vbs_mode", type=str, default="batched", choices=["batched", "accumulate"],
        help="a step's micro-batches as one large batch (batched; falls back to accumulate on GPU OOM) or one "
             "forward/backward each (accumulate); the gradient is the same")
    add("--clip_grad", type=none_or(positive_float), default=100.0,
        help="per-tensor norm clip of the penalty gradient (none: no clip)")
    add("--penalty_step", type=str, default="auto", choices=["auto", "decoupled", "coupled"],
        help="decoupled plain step before AdamW, or penalty added to the CE gradient; "
             "auto: decoupled for lora/ia3, coupled for full (the paper's choice)")
    add("--num_epochs_pretuning", type=nonneg_int, default=3, help="linear-probe epochs")
    add("--learning_rate_pretuning", type=positive_float, default=0.01, help="linear-probe learning rate")
    add("--num_samples_align_pretuning", type=positive_int, default=256, help="GMM samples per class (CA)")
    add("--batch_size_align_pretuning", type=positive_int, default=128, help="batch of the probe and CA")
    add("--num_epochs_align_pretuning", type=nonneg_int, default=10, help="classifier-alignment epochs (+5t)")
    add("--lr_align_pretuning", type=positive_float, default=0.01, help="classifier-alignment learning rate")
    add("--fisher_mc_classes", type=all_or_int, default=None,
        help="'all' (exact Fisher) or k: per --batch_size micro-batch of the pass, backpropagate only the k "
             "classes most frequent among the samples' top-k (the paper code's rule; a cheaper, biased "
             "approximation; independent of --stats_batch_size)")
    add("--fisher_sampled_labels", type=none_or(positive_int), default=None,
        help="approximate Fisher (never the default): k labels per image sampled from the model's prediction, "
             "k backward passes instead of one per seen class (unbiased; docs/speed.md has its error)")
    add_run_flag(parser, "--stats_batch_size", type=auto_or_int, default=None,
        help="batch of the theta0 passes (features, Fisher); the results do not depend on it (also with "
             "--fisher_mc_classes k, chosen per --batch_size micro-batch). auto (default): "
             f"{CPU_STATS_BATCH} on a CPU, sized from the free memory on CUDA")
    add("--fisher_precision", type=str, default="fp32", choices=["fp32", "tf32", "bf16"],
        help="GEMM precision of the Fisher pass (squares always summed in fp32); docs/speed.md has the measured "
             "error and accuracy effect")
    add("--init_head_from_pretuned", type=parse_bool, default=False,
        help="start each task's head from the pre-tuned head instead of its random init")
    return parser
