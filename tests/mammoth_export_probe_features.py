"""Run ``simplecil`` (APER variant, seq-cifar10) or ``seed`` (seq-mnist) through three tasks and save what they
computed.

``python tests/mammoth_export_probe_features.py {project|mammoth} METHOD OUT.pt DATA_ROOT``: ``project`` builds
the model with this project's code (run from the repository root); ``mammoth`` with Mammoth's own
``main.initialize`` (run from a Mammoth checkout holding the export). Both set the same weights, then drive the
hooks of three tasks (two optimizer steps on the same batches where the task trains) and save the losses, the
trained parameters, the statistics each ``end_task`` reads from the task's non-augmented training images and the
logits of a fixed batch."""
from __future__ import annotations

import os
import sys

import torch

from mammoth_export_probe import build as build_from  # this script's folder is first on sys.path

COMMON = ["--seed", "0", "--lr", "0.05", "--batch_size", "4", "--n_epochs", "1",
          "--num_workers", "0", "--optimizer", "sgd", "--optim_mom", "0.9"]
FLAGS = {
    # task 0 trains, later tasks have no optimiser; CIFAR: the statistics must see the test transform, not the
    # training augmentation (MNIST has none)
    "simplecil": ["--model", "simplecil", "--dataset", "seq-cifar10", "--aper_adapt", "1"],
    "seed": ["--model", "seed", "--dataset", "seq-mnist", "--num_experts", "2", "--seed_alpha", "0.5",
             "--seed_tau", "1000"],  # task 2 picks an expert by KL
}
SHAPE = {"simplecil": (3, 32, 32), "seed": (1, 28, 28)}
TASKS = 3
STATE = {"simplecil": ("proto_sums", "proto_counts"), "seed": ("means", "chols", "known", "expert_of_task")}


def build(side: str, method: str, data: str):
    return build_from(side, data, FLAGS[method] + COMMON)


def weights(model, method: str) -> list[torch.nn.Parameter]:
    """Every parameter the method computes with, in the same order on both sides."""
    if method == "simplecil":
        return [*model.net.body.parameters(), *model.adapted.body.parameters(), *model.adapted.classifier.parameters()]
    return [p for expert, head in zip(model.experts, model.heads) for p in (*expert.parameters(), *head.parameters())]


def main(side: str, method: str, path: str, data: str) -> None:
    model, dataset = build(side, method, data)
    torch.set_num_threads(1)  # Mammoth's main.py sets 2 threads: matmuls would split their sums otherwise
    params = weights(model, method)
    out: dict[str, torch.Tensor] = {"shapes": torch.tensor([s for p in params for s in (*p.shape, -1)])}
    gen = torch.Generator().manual_seed(123)
    with torch.no_grad():
        for p in params:  # weights scaled by their fan-in (features that differ between images), the rest small
            p.copy_(torch.randn(p.shape, generator=gen) * (p[0].numel() ** -0.5 if p.dim() > 1 else 0.1))
    probe = torch.rand(6, *SHAPE[method], generator=gen)
    for task in range(TASKS):
        if task:
            dataset.get_data_loaders()
        model.meta_begin_task(dataset)
        out[f"{task}/trains"] = torch.tensor(float(model.opt is not None))
        if method == "seed":
            out[f"{task}/selected"] = torch.tensor(float(model.selected))
        model.meta_begin_epoch(0, dataset)
        for step in range(2 if model.opt is not None else 0):
            x = torch.rand(4, *SHAPE[method], generator=gen)
            y = torch.randint(2 * task, 2 * task + 2, (4,), generator=gen)
            out[f"{task}/loss/{step}"] = torch.tensor(float(model.meta_observe(x, y, x, epoch=0)), dtype=torch.float64)
        model.meta_end_epoch(0, dataset)
        model.meta_end_task(dataset)
        for i, p in enumerate(params):
            out[f"{task}/param/{i}"] = p.detach().double().clone()
        for name in STATE[method]:
            out[f"{task}/{name}"] = getattr(model, name).detach().double().clone()
        with torch.no_grad():
            out[f"{task}/logits"] = model(probe).double()
    torch.save(out, path)


if __name__ == "__main__":
    main(*sys.argv[1:5])
