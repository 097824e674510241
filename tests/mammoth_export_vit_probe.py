"""Run ``apt`` or ``inflora`` for two tasks' first steps on seq-cifar100-224 and save what they computed.

``python tests/mammoth_export_vit_probe.py {project|mammoth} METHOD OUT.pt DATA_ROOT``: ``project`` builds the model
with this project's code (run from the repository root); ``mammoth`` with Mammoth's own ``main.initialize`` (run
from a Mammoth checkout holding the export). Both load the same ViT weights from the Hugging Face cache
(``HF_HUB_CACHE``), shrunk to ``CL_TEST_VIT_B16_DIMS`` (this project reads it; Mammoth's ViT-B/16 builder is given
the same sizes here), then set the same head and prompt weights and save: the frozen ViT's features (and those
of Mammoth's own ViT class, which the export hands to these methods as timm's class), the
method's task-start state (InfLoRA's designed projections, from the task's images through the dataset), the
losses and trained parameters of two steps on the same batches, InfLoRA's subspace memory and the final logits."""
from __future__ import annotations

import os
import sys

import torch

FLAGS = ["--dataset", "seq-cifar100-224", "--seed", "0", "--lr", "0.01", "--batch_size", "2", "--n_epochs", "1",
         "--num_workers", "0", "--optimizer", "adam"]
METHOD_FLAGS = {"apt": ["--prompt_length", "2", "--memory_length", "2"],
                "inflora": ["--inflora_rank", "3", "--inflora_lamb", "0.9"]}


def test_dims() -> dict[str, int]:
    text = os.environ["CL_TEST_VIT_B16_DIMS"]
    return {k: int(v) for k, v in (item.split("=") for item in text.split(","))}


def build(side: str, method: str, data: str):
    sys.path.insert(0, os.getcwd())  # the repository root or the Mammoth checkout
    flags = ["--model", method, *FLAGS, *METHOD_FLAGS[method]]
    if side == "project":
        from app.config import parse_args
        from app.experiment import build_experiment
        exp = build_experiment(parse_args(flags + ["--base_path", data]), torch.device("cpu"))
        exp.dataset.get_data_loaders()
        return exp.model, exp.dataset, exp.model.vit
    import backbone.vit as mammoth_vit
    create = mammoth_vit.create_vision_transformer

    def shrunk(variant, **kwargs):  # Mammoth's ViT-B/16 builder, at the test sizes
        return create(variant, **{**kwargs, **test_dims()})
    mammoth_vit.create_vision_transformer = shrunk
    sys.argv = ["main.py", *flags, "--base_path", data + os.sep, "--non_verbose", "1"]
    from main import initialize
    model, dataset, args = initialize()
    dataset.get_data_loaders()
    model.net.to(model.device)
    from backbone import get_backbone
    return model, dataset, get_backbone(args)  # Mammoth's own ViT class, from the same cached weights


def set_weights(model, method: str) -> None:
    """The same head and prompt weights on both sides (each framework draws its own at construction)."""
    gen = torch.Generator().manual_seed(123)
    params = list(model.net.classifier.parameters()) + (list(model.pool.parameters()) if method == "apt" else [])
    with torch.no_grad():
        for p in params:
            p.copy_(torch.randn(p.shape, generator=gen) * 0.05)


def task_state(model, method: str, task: int) -> dict[str, torch.Tensor]:
    if method == "apt":
        return {f"trained/{i}": p for i, p in enumerate(model.pool.task_parameters(task))}
    out = {"classifier": model.net.classifier.weight}
    for name, layer in model.layers.items():  # B A: the branch (A's eigenvector signs cancel in the product)
        out[f"branch/{name}"] = layer.deltas[task].B @ layer.deltas[task].A
        out[f"design/{name}"] = layer.deltas[task].A.t() @ layer.deltas[task].A
    return out


def main(side: str, method: str, path: str, data: str) -> None:
    model, dataset, own_vit = build(side, method, data)
    set_weights(model, method)
    gen = torch.Generator().manual_seed(7)
    probe = torch.rand(2, 3, 224, 224, generator=gen)
    out: dict[str, torch.Tensor] = {}
    with torch.no_grad():  # the ViT the method computes with, and each framework's own ViT class
        out["features"] = model.vit.forward_head(model.vit.forward_features(probe), pre_logits=True).clone()
        own_vit.eval()
        out["own_vit_features"] = (own_vit(probe) if side == "project" else own_vit(probe, returnt="features")).clone()
    for task in range(2):
        if task:
            dataset.get_data_loaders()
        model.meta_begin_task(dataset)
        if method == "inflora":
            out.update({f"{task}/begin/{k}": v.detach().clone() for k, v in task_state(model, method, task).items()
                        if k.startswith("design/")})
        model.train()
        for step in range(2):
            x = torch.rand(2, 3, 224, 224, generator=gen)
            y = torch.randint(10 * task, 10 * task + 10, (2,), generator=gen)
            out[f"{task}/loss/{step}"] = torch.as_tensor(float(model.meta_observe(x, y, x, epoch=0)))
        out.update({f"{task}/{k}": v.detach().clone() for k, v in task_state(model, method, task).items()})
        model.meta_end_task(dataset)
        if method == "inflora":
            for name, memory in model.memories.items():
                basis = memory.retained_basis()
                out[f"{task}/memory/{name}"] = basis @ basis.t()  # the projector: independent of the basis chosen
    model.eval()
    with torch.no_grad():
        out["logits"] = model(probe)[:, :20].clone()
    torch.save({k: v.detach().double().cpu() for k, v in out.items()}, path)


if __name__ == "__main__":
    main(*sys.argv[1:5])
