"""The published second_order lines, run through ``main.py``'s path on the suite's test accelerator.

The test accelerator (tests/accelerator_backend.py) is a real PrivateUse1 device whose tensors live in CPU memory:
every branch the code takes on a non-CPU device runs (device augmentation ``--gpu_augmentation auto``, the
memory-sized ``--stats_batch_size auto``, device generators and RNG states, autocast on the device), and any op
that mixes its tensors with CPU tensors raises. Data and weights are the offline stand-ins of the GPU check
(benchmarks/gpu_check.py): CIFAR-100 mini in the official on-disk layout and random ViT weights in the timm
layout (one block of width 96, 32-pixel patches: the code path of ViT-B/16), full-size passes (no debug mode:
the Fisher's micro-batch structure is the published one), 2 tasks of 1 epoch.

Cases, grouped so that each flag runs once (7 accelerator runs in one process, the CPU run in another beside it):
ITA and IEL x LoRA, (IA)^3 and full; ``--use_ca 1``, ``--fisher_class_batch``, ``--virtual_bs_n 2``,
``--fisher_sampled_labels``, ``--precision bf16``, ``-O 1``/``-O 2`` (``--code_optimization``); the ITA LoRA line
with CUDA's defaults (no -O, no ``--fisher_precision``: the test accelerator takes CUDA's), stopped after task 1
and resumed from the checkpoint the accelerator wrote, whose accuracies and final weights equal the same line's run
on the CPU, given those defaults as flags, with the same device augmentation (the same kernels on the same values).
"""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import pytest
import torch

from models.second_order import SecondOrder
from models.second_order_utils.flags import default_fisher_precision
from tests.accelerator_launch import prepare
from utils.optimization import default_level
from tests.conftest import SHARED_DATA, shared_missing

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ITA = ["--model", "second_order", "--dataset", "seq-cifar100-224", "--model_config", "best"]
IEL = ["--model", "iel", "--dataset", "seq-cifar100-224", "--model_config", "best"]
COMMON = ["--seed", "0", "--n_epochs", "1", "--stop_after", "2", "--non_verbose", "--num_workers", "0",
          "--plots", "0", "--gpu_augmentation", "auto", "--stats_batch_size", "auto"]
# name -> (line, extra flags): every flag of the brief once, every (method, module type) pair once
CASES = {
    "ita_lora": (ITA, ["--use_ca", "1"]),  # no -O, no --fisher_precision: CUDA's defaults
    "ita_ia3": (ITA, ["--tuning_style", "ia3", "--precision", "bf16", "--code_optimization", "2", "--fisher_class_batch", "4"]),
    "ita_full": (ITA, ["--tuning_style", "full", "--virtual_bs_n", "2", "--fisher_sampled_labels", "2"]),
    "iel_lora": (IEL, ["--code_optimization", "2", "--fisher_sampled_labels", "1"]),
    "iel_ia3": (IEL, ["--tuning_style", "ia3", "--use_ca", "1", "--fisher_class_batch", "3"]),
    "iel_full": (IEL, ["--tuning_style", "full", "--code_optimization", "1", "--virtual_bs_n", "2"]),
}
# the test accelerator takes CUDA's defaults (tests/accelerator_launch.py); the CPU twin is given them as flags
CUDA_DEFAULTS = ["--code_optimization", str(default_level("cuda", SecondOrder.DEFAULT_LEVELS)), "--fisher_precision",
                 default_fisher_precision("cuda")]
BUDGET = 2 * 2 ** 30  # what the accelerator reports as its memory (sizes --stats_batch_size auto)


def data_file() -> str:
    path = os.path.join(SHARED_DATA, "cifar100_mini.npz")
    if not os.path.isfile(path):
        shared_missing(path)
    return path


def launch(tmp, name: str, spec: list[dict], env: dict) -> subprocess.Popen:
    with open(tmp / f"{name}.spec.json", "w") as fh:
        json.dump(spec, fh)
    return subprocess.Popen([sys.executable, "-m", "tests.accelerator_launch", str(tmp / f"{name}.spec.json"),
                             str(tmp / f"{name}.out.json")], cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)


def argv_of(tmp, name: str, line: list[str], extra: list[str], device: str = "testacc") -> list[str]:
    """``line`` + the common flags + ``extra`` (a later value of a flag replaces the earlier one)."""
    from benchmarks.compare import merge_flags
    return merge_flags(line, COMMON, ["--device", device, "--base_path", str(tmp / "data"),
                                      "--results_file", str(tmp / f"{name}.json")], extra)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Every case on the accelerator (one process) and the CPU twin (another, in parallel): their reports."""
    tmp = tmp_path_factory.mktemp("acc")
    env = prepare(str(tmp), data_file())
    acc = [{"name": name, "argv": argv_of(tmp, name, line, extra), "budget": BUDGET}
           for name, (line, extra) in CASES.items() if name != "ita_lora"]
    # the ITA LoRA line stopped after task 1 and resumed from the accelerator's checkpoint, against the CPU run;
    # a fixed statistics batch and Fisher class batch on both (auto sizes them from the device memory; the
    # augmentation draws follow the first, the rounding of the Fisher sums the second), and the device's unseeded
    # draws (LoRA init, probe batches) from the CPU's generator in the CPU run's order
    # (tests/accelerator_backend.py share_cpu_rng)
    line, extra = CASES["ita_lora"]
    extra = [*extra, "--stats_batch_size", "64", "--fisher_class_batch", "1", "--savecheck", "task"]
    ck = str(tmp / "ck_acc")
    acc += [{"name": "ita_lora_task1", "argv": argv_of(tmp, "ita_lora_task1", line, [
                *extra, "--checkpoint_path", ck, "--stop_after", "1"]), "budget": BUDGET, "shared_rng": True},
            {"name": "ita_lora_resumed", "argv": argv_of(tmp, "ita_lora_resumed", line, [
                *extra, "--checkpoint_path", ck, "--resume"]), "budget": BUDGET, "shared_rng": True}]
    cpu = [{"name": "ita_lora_cpu", "argv": argv_of(tmp, "ita_lora_cpu", line, [
        *extra, *CUDA_DEFAULTS, "--checkpoint_path", str(tmp / "ck_cpu"), "--gpu_augmentation", "1"], device="cpu")}]
    procs = {"acc": launch(tmp, "acc", acc, env), "cpu": launch(tmp, "cpu", cpu, env)}
    for name, proc in procs.items():
        _, err = proc.communicate(timeout=1700)
        assert proc.returncode == 0, f"{name} launcher: {err[-3000:]}"
    out = {}
    for name in procs:
        with open(tmp / f"{name}.out.json") as fh:
            out.update(json.load(fh))
    for name in out:
        path = tmp / f"{name}.json"
        with open(path) if path.exists() else open(os.devnull) as fh:
            out[name]["results"] = json.load(fh) if path.exists() else None
    out["tmp"] = tmp
    return out


def accuracies(results: dict) -> list[float]:
    return [a for key in ("accuracy_matrix_class_il", "accuracy_matrix_task_il") for row in results[key] for a in row]


@pytest.mark.timeout(1800)
@pytest.mark.parametrize("name", [*(c for c in CASES if c != "ita_lora"), "ita_lora_task1", "ita_lora_resumed",
                                  "ita_lora_cpu"])
def test_published_line_runs_on_the_accelerator(runs, name):
    """Exit 0, finite accuracies for every task, every tensor of the model on the accelerator after every task."""
    run = runs[name]
    assert run["exit_code"] == 0, run["error"]
    tasks = 1 if name == "ita_lora_task1" else 2
    assert run["tasks_audited"] == (1 if name == "ita_lora_resumed" else tasks)
    assert run["misplaced"] == []
    res = run["results"]
    assert len(res["accuracy_matrix_class_il"]) == tasks and all(math.isfinite(a) for a in accuracies(res))
    if name != "ita_lora_cpu":
        assert run["counts"].get("to_device", 0) > 0  # the images really moved to the accelerator
        assert 0 < run["peak_bytes"] <= BUDGET


def final_state(folder) -> dict:
    from utils.checkpoints import load_checkpoint
    return load_checkpoint(str(next(folder.rglob("task_2.pt"))))


def tensors(obj, prefix="") -> dict:
    if isinstance(obj, torch.Tensor):
        return {prefix: obj}
    if isinstance(obj, dict):
        return {k: v for key, val in obj.items() for k, v in tensors(val, f"{prefix}.{key}").items()}
    if isinstance(obj, (list, tuple)):
        return {k: v for i, val in enumerate(obj) for k, v in tensors(val, f"{prefix}[{i}]").items()}
    return {}


def test_accelerator_run_equals_the_cpu_run(runs):
    """Same kernels, same values: the accelerator run (stopped after task 1, resumed from its own checkpoint) has
    the CPU run's accuracies and final weights (fp32)."""
    acc, cpu = runs["ita_lora_resumed"]["results"], runs["ita_lora_cpu"]["results"]
    for name in ("ita_lora_task1", "ita_lora_resumed", "ita_lora_cpu"):  # the defaults CUDA runs, resolved
        args = runs[name]["results"]["args"]
        assert [args["code_optimization"], args["fisher_precision"]] == [int(CUDA_DEFAULTS[1]), CUDA_DEFAULTS[3]]
    assert accuracies(runs["ita_lora_task1"]["results"]) == pytest.approx(
        [row[0] for row in cpu["accuracy_matrix_class_il"][:1]] + [cpu["accuracy_matrix_task_il"][0][0]], abs=1e-9)
    assert accuracies(acc) == pytest.approx(accuracies(cpu), abs=1e-9)
    a = tensors(final_state(runs["tmp"] / "ck_acc")["model_state"])
    c = tensors(final_state(runs["tmp"] / "ck_cpu")["model_state"])
    assert a.keys() == c.keys() and len(a) > 10
    for key in a:
        assert a[key].device.type == "cpu" and a[key].dtype == c[key].dtype, key
        if a[key].is_floating_point():
            torch.testing.assert_close(a[key], c[key], rtol=1e-5, atol=1e-6, msg=key)
        else:
            assert torch.equal(a[key], c[key]), key
