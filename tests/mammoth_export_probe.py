"""Run ``second_order``'s first task start and first optimizer steps on seq-mnist and save what they computed.

``python tests/mammoth_export_probe.py {project|mammoth} OUT.pt DATA_ROOT``: ``project`` builds the model with
this project's code (run from the repository root); ``mammoth`` with Mammoth's own ``main.initialize`` (run from
a Mammoth checkout holding the export). Both set the same base weights, then save the Fisher terms, the
penalty gradients and values, and the trainable parameters after the first steps on the same batches, for two tasks."""
from __future__ import annotations

import os
import sys

import torch

FLAGS = ["--model", "second_order", "--dataset", "seq-mnist", "--seed", "0", "--lr", "0.01",
         "--batch_size", "4", "--n_epochs", "1", "--num_workers", "0", "--optimizer", "adamw",
         "--tuning_style", "lora", "--lora_r", "2", "--alpha_ita", "0.5", "--req_weight_cls", "0.1",
         "--simple_reg_weight_cls", "0.01", "--virtual_bs_n", "1", "--num_epochs_pretuning", "2",
         "--learning_rate_pretuning", "0.01", "--num_samples_align_pretuning", "8",
         "--batch_size_align_pretuning", "8", "--num_epochs_align_pretuning", "2", "--clip_grad", "100"]


def build(side: str, data: str, flags: list[str] = FLAGS):
    """(model, dataset) built from ``flags`` by this project (``project``) or by Mammoth's ``main.initialize``."""
    sys.path.insert(0, os.getcwd())  # the repository root or the Mammoth checkout
    if side == "project":
        from app.config import parse_args
        from app.experiment import build_experiment
        exp = build_experiment(parse_args(flags + ["--base_path", data]), torch.device("cpu"))
        exp.dataset.get_data_loaders()
        return exp.model, exp.dataset
    sys.argv = ["main.py", *flags, "--base_path", data + os.sep, "--non_verbose", "1"]
    from main import initialize
    model, dataset, _ = initialize()
    dataset.get_data_loaders()
    model.net.to(model.device)
    return model, dataset


def flat(prefix: str, value, out: dict) -> None:
    if isinstance(value, torch.Tensor):
        out[prefix] = value.detach().double().cpu().clone()
    elif isinstance(value, dict):
        for k in sorted(value, key=str):
            flat(f"{prefix}/{k}", value[k], out)
    elif isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            flat(f"{prefix}/{i}", v, out)


def main(side: str, path: str, data: str) -> None:
    model, dataset = build(side, data)
    gen = torch.Generator().manual_seed(123)
    with torch.no_grad():  # the same base weights on both sides (layers in the same order)
        for layer in model.pool.layers.values():
            layer.base.weight.copy_(torch.randn(layer.base.weight.shape, generator=gen) * 0.05)
            layer.base.bias.copy_(torch.randn(layer.base.bias.shape, generator=gen) * 0.05)
    out: dict[str, torch.Tensor] = {}
    gen = torch.Generator().manual_seed(7)
    for task in range(2):  # task 1's penalties read task 0's Fisher
        if task:
            dataset.get_data_loaders()
        model.meta_begin_task(dataset)
        flat(f"{task}/penalty_fisher", list(model.stats.penalty_fisher.values()), out)
        flat(f"{task}/head_fisher", model.stats.head_fisher, out)
        flat(f"{task}/pretuned_head", model.pretuned_head.state_dict(), out)
        model.last_penalties.clear()
        grads = model.adapter_penalty_grads() + model.head_penalty_grads()
        flat(f"{task}/penalty_grads", [g for _, g in grads], out)
        flat(f"{task}/penalties", dict(model.last_penalties), out)
        model.meta_begin_epoch(0, dataset)
        for step in range(2):  # the epoch's two micro-batches, one optimizer step each
            x = torch.rand(4, 1, 28, 28, generator=gen)
            y = torch.randint(2 * task, 2 * task + 2, (4,), generator=gen)
            out[f"{task}/loss/{step}"] = torch.as_tensor(float(model.meta_observe(x, y, x, epoch=0)), dtype=torch.float64)
        flat(f"{task}/trained", list(model.get_parameters()), out)
        model.meta_end_epoch(0, dataset)
        model.meta_end_task(dataset)
    torch.save(out, path)


if __name__ == "__main__":
    main(*sys.argv[1:4])
