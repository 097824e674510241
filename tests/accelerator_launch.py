"""Run command lines of ``main.py`` on the test accelerator, in a process of their own, with per-task audits.

    python -m tests.accelerator_launch SPEC.json OUT.json

``SPEC.json`` is a list of ``{"name": ..., "argv": [...], "budget": bytes, "shared_rng": bool}`` (both optional;
see :func:`tests.accelerator_backend.share_cpu_rng`); each entry runs through
``app.runner.main`` (what ``main.py`` runs) after :func:`tests.accelerator_backend.register`, in this order and in
one process (the backend registers once per process). After every task the tensors of the model (parameters,
buffers, optimizer states, heads, statistics) are audited with :func:`utils.device_audit.misplaced_tensors`.
``OUT.json`` maps each name to ``{"exit_code", "error", "misplaced", "tasks_audited", "counts", "peak_bytes"}``.
"""
from __future__ import annotations

import contextlib
import io
import json
import os
import sys
import traceback
from typing import Any

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)


ARCH = "vit_tiny_patch16_224:depth=1,patch_size=32,embed_dim=96"  # ViT-B/16's code path, small


def prepare(tmp: str, cifar100_npz: str) -> dict[str, str]:
    """CIFAR-100 (official layout) under ``tmp/data`` and random ViT weights in a Hugging Face cache under
    ``tmp/hf`` (as benchmarks/gpu_check.py writes them); the environment a launched process needs."""
    from benchmarks import gpu_check
    gpu_check.write_cifar100(cifar100_npz, os.path.join(tmp, "data"))
    gpu_check.write_hub_weights(os.path.join(tmp, "hf"), ARCH)
    return dict(os.environ, HF_HOME=os.path.join(tmp, "hf"), HF_HUB_OFFLINE="1", CL_NO_DOWNLOAD="1",
                TORCH_HOME=os.path.join(tmp, "torch"), CL_TEST_VIT_B16_ARCH=ARCH, OMP_NUM_THREADS="1")


def take_cuda_defaults(device_type: str) -> None:
    """The test accelerator stands in for CUDA: runs that give no -O level or Fisher precision get CUDA's."""
    from models import MODELS
    from models.second_order_utils.flags import DEFAULT_FISHER_PRECISIONS, default_fisher_precision
    from utils.optimization import DEFAULT_LEVELS, default_level
    DEFAULT_LEVELS[device_type] = default_level("cuda")
    for name in MODELS.names():
        levels = MODELS.get(name).DEFAULT_LEVELS
        if "cuda" in levels:
            levels[device_type] = levels["cuda"]
    DEFAULT_FISHER_PRECISIONS[device_type] = default_fisher_precision("cuda")


def run_one(argv: list[str], budget: int | None, shared_rng: bool = False) -> dict[str, Any]:
    """One command line on the test accelerator; its exit code, the audit and the traffic counts."""
    import app.runner as runner
    from tests import accelerator_backend as backend
    from utils.device_audit import misplaced_tensors

    device = backend.register()
    take_cuda_defaults(backend.NAME)
    if budget:
        backend.set_memory_budget(budget)
    backend.share_cpu_rng(shared_rng)
    backend.reset_counts()
    backend.MEMORY.peak = backend.MEMORY.allocated
    audit: dict[str, Any] = {"misplaced": [], "tasks_audited": 0}
    real_train = runner.train

    def audited_train(model, dataset, args, *rest, on_task_end=None, **kwargs):
        def after_task(record):
            if on_task_end is not None:
                on_task_end(record)
            audit["misplaced"] += [f"task {record.tasks_done}: {m}" for m in
                                   misplaced_tensors(model, getattr(model, "device", device))]
            audit["tasks_audited"] += 1
        return real_train(model, dataset, args, *rest, on_task_end=after_task, **kwargs)

    runner.train = audited_train
    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err):
            code = runner.main(argv)
    except BaseException:  # noqa: BLE001 - a crash is a result to report
        code, err = 1, io.StringIO(err.getvalue() + traceback.format_exc())
    finally:
        runner.train = real_train
    return {"exit_code": code, "error": err.getvalue()[-4000:], **audit, "counts": dict(backend.COUNTS),
            "peak_bytes": backend.MEMORY.peak}


def step_traffic(argv: list[str], log_every: int) -> dict[str, Any]:
    """Host/device traffic of every training step of the first task (``--stop_after 1``), each window running
    from the end of one ``meta_observe`` to the end of the next (the loader's upload and device augmentation, the
    loop's uploads, the step, the loss monitor, the logging read of the step before)."""
    from app.config import parse_args
    from app.experiment import build_experiment
    from datasets.utils import gpu_augment
    from tests import accelerator_backend as backend
    from utils.training import train

    device = backend.register()
    args = parse_args(argv)
    experiment = build_experiment(args, device)
    model = experiment.model
    model.LOG_EVERY = log_every
    events: list[Any] = []
    augmented, stepped = [0], [False]
    real_observe, real_begin = model.meta_observe, model.meta_begin_epoch
    real_augment = gpu_augment.DeviceRRCFlip.__call__

    def begin_epoch(*a, **k):
        out = real_begin(*a, **k)
        backend.reset_counts()
        events.append("epoch")
        return out

    def observe(*a, **k):
        out = real_observe(*a, **k)
        stepped[0] = stepped[0] or bool(model.opt is not None and model.opt.state)
        events.append({"counts": dict(backend.COUNTS),
                       "sites": {kind: dict(sites) for kind, sites in backend.SITES.items() if sites}})
        backend.reset_counts()
        return out

    def augment(self, *a, **k):
        augmented[0] += 1
        return real_augment(self, *a, **k)

    model.meta_observe, model.meta_begin_epoch = observe, begin_epoch
    gpu_augment.DeviceRRCFlip.__call__ = augment
    try:
        train(model, experiment.dataset, args)
    finally:
        gpu_augment.DeviceRRCFlip.__call__ = real_augment
    steps, index = [], 0
    for event in events:  # each step with its index in its epoch
        index = 0 if event == "epoch" else index + 1
        if event != "epoch":
            steps.append({**event, "index": index - 1})
    return {"steps": steps, "augmented": augmented[0], "optimizer_state": stepped[0]}


def main(argv: list[str]) -> int:
    if argv[0] == "--steps":  # --steps LOG_EVERY OUT.json main.py flags...
        result = step_traffic(argv[3:], int(argv[1]))
        with open(argv[2], "w") as fh:
            json.dump(result, fh, indent=1)
        return 0
    spec_path, out_path = argv
    with open(spec_path) as fh:
        spec = json.load(fh)
    out = {}
    for entry in spec:
        out[entry["name"]] = run_one(entry["argv"], entry.get("budget"), entry.get("shared_rng", False))
        with open(out_path, "w") as fh:
            json.dump(out, fh, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
