"""Command-line flags of the ``second_order`` model (docs/second_order.md has the table)."""
from __future__ import annotations

import argparse
from dataclasses import dataclass
from typing import Optional

from models.second_order_utils.modules import TUNING_STYLES
from utils.args import nonneg_float, nonneg_int, none_or, parse_bool, positive_float, positive_int
from utils.settings import add_settings_flags, setting


AUTO = "auto"
FISHER_PRECISIONS = ("fp32", "tf32", "bf16", "bf16x3")
# --fisher_precision auto, per device type (docs/speed.md: the rule fixed before measuring, and its numbers); fp32
# elsewhere (on a CPU bf16x3 costs three fp32 GEMMs)
DEFAULT_FISHER_PRECISIONS = {"cuda": "bf16x3"}


def default_fisher_precision(device_type: str) -> str:
    return DEFAULT_FISHER_PRECISIONS.get(device_type, "fp32")


def resolve_fisher_precision(args: argparse.Namespace, device_type: str) -> None:
    """``args.fisher_precision`` auto replaced by the device type's default (in place; stored resolved)."""
    if getattr(args, "fisher_precision", None) in (None, AUTO):
        args.fisher_precision = default_fisher_precision(device_type)


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


@dataclass(frozen=True)
class SecondOrderSettings:
    """The ITA/IEL flags with the reference's defaults (algorithm.md §6.4) plus this framework's own; one field
    per flag (``--<field>``), read by the model as ``self.settings.<field>``."""

    tuning_style: str = setting("lora", str, "per-task module type", choices=list(TUNING_STYLES))
    lora_r: int = setting(16, positive_int, "LoRA rank (3x on a ViT's qkv)")
    use_iel: bool = setting(False, parse_bool, "0: ITA (individual training), 1: IEL (ensemble)")
    alpha_ita: float = setting(0.0, nonneg_float, "alpha of ITA (Eq. 11)")
    beta_iel: float = setting(0.0, nonneg_float, "beta of IEL (Eq. 18/19)")
    req_weight_cls: Optional[float] = setting(
        None, none_or(nonneg_float), "lambda_F of the head regulariser (None: alpha for ITA, beta for IEL)")
    simple_reg_weight_cls: float = setting(0.0, nonneg_float, "lambda_2 of the head regulariser")
    virtual_bs_n: int = setting(1, positive_int, "micro-batches per optimizer step")
    vbs_tail: str = setting("drop", str, "micro-batches left at the end of an epoch: skipped (drop) or one smaller "
                                         "step (flush)", choices=["drop", "flush"])
    vbs_mode: str = setting("batched", str, "a step's micro-batches as one large batch (batched; falls back to "
                                            "accumulate on GPU OOM) or one forward/backward each (accumulate); the "
                                            "gradient is the same", choices=["batched", "accumulate"])
    clip_grad: Optional[float] = setting(100.0, none_or(positive_float),
                                         "per-tensor norm clip of the penalty gradient (none: no clip)")
    penalty_step: str = setting("auto", str, "decoupled plain step before AdamW, or penalty added to the CE "
                                             "gradient; auto: decoupled for lora/ia3, coupled for full (the paper's "
                                             "choice)", choices=["auto", "decoupled", "coupled"])
    num_epochs_pretuning: int = setting(3, nonneg_int, "linear-probe epochs")
    learning_rate_pretuning: float = setting(0.01, positive_float, "linear-probe learning rate")
    num_samples_align_pretuning: int = setting(256, positive_int, "GMM samples per class (CA)")
    batch_size_align_pretuning: int = setting(128, positive_int, "batch of the probe and CA")
    num_epochs_align_pretuning: int = setting(10, nonneg_int, "classifier-alignment epochs (+5t)")
    lr_align_pretuning: float = setting(0.01, positive_float, "classifier-alignment learning rate")
    fisher_mc_classes: Optional[int] = setting(
        None, all_or_int, "'all' (None: the exact Fisher) or k: per --batch_size micro-batch of the pass, "
                          "backpropagate only the k classes most frequent among the samples' top-k (the paper code's "
                          "rule; a cheaper, biased approximation; independent of --stats_batch_size)")
    fisher_sampled_labels: Optional[int] = setting(
        None, none_or(positive_int), "approximate Fisher (never the default): k labels per image sampled from the "
                                     "model's prediction, k backward passes instead of one per seen class (unbiased; "
                                     "docs/speed.md has its error)")
    stats_batch_size: Optional[int] = setting(
        None, auto_or_int, "batch of the theta0 passes (features, Fisher); the results do not depend on it (also "
                           f"with --fisher_mc_classes k, chosen per --batch_size micro-batch). auto (None): "
                           f"{CPU_STATS_BATCH} on a CPU, sized from the free memory on an accelerator",
        changes_results=False)
    fisher_class_batch: Optional[int] = setting(
        None, auto_or_int, "class backward passes of the Fisher run together in one vmapped backward (1: one by "
                           "one; equal up to fp32 rounding). auto (None): 1 on a CPU (faster there), on an "
                           "accelerator enough classes for 512 (image, class) pairs per backward",
        changes_results=False)
    fisher_precision: str = setting(AUTO, str, "GEMM precision of the Fisher pass (squares always summed in fp32). "
                                               "auto: the device type's default (bf16x3 on CUDA, fp32 elsewhere: "
                                               "DEFAULT_FISHER_PRECISIONS); docs/speed.md has the measured error "
                                               "and accuracy effect", choices=[AUTO, *FISHER_PRECISIONS])
    init_head_from_pretuned: bool = setting(False, parse_bool, "start each task's head from the pre-tuned head "
                                                               "instead of its random init")
    use_ca: bool = setting(False, parse_bool, "end-of-task classifier alignment (the reference's older --use_ca): "
                                              "after each task, fit GMMs of the new classes on the composed model's "
                                              "features and re-align all trained heads on samples of every seen "
                                              "class (as the pre-tuning alignment). 0 (default) is the published "
                                              "method; docs/second_order.md has what it changes")


def add_second_order_args(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add the flags of :class:`SecondOrderSettings`."""
    return add_settings_flags(parser, SecondOrderSettings)
