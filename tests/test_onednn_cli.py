"""The published ITA line from the command line's entry point on a CPU, with a ViT wide enough for the Fisher's
products to go to oneDNN (utils/onednn_products.py): they do, the task's Fisher equals the one from torch's own
products, and the run ends where that run ends."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tests.accelerator_launch import prepare
from tests.conftest import SHARED_DATA, shared_missing
from tests.test_accelerator_published_line import tensors
from utils import onednn_products
from utils.checkpoints import load_checkpoint

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ARCH = "vit_tiny_patch16_224:depth=1,patch_size=32"  # width 192, qkv 192 x 576: routed (fisher.routes_products)
# runner.main (what main.py runs) with the oneDNN calls of the Fisher pass counted; "blas": routing switched off.
# It imports no test module: tests/conftest.py, imported in a child of a pytest worker, would replace its HF cache.
CHILD = """
import json, sys
from utils import onednn_products
calls = {"square_sums": 0}
square_sums = onednn_products.square_sums
def counted(*args):
    calls["square_sums"] += 1
    return square_sums(*args)
onednn_products.square_sums = counted
if sys.argv[1] == "blas":
    onednn_products.available = lambda: False
from app import runner
code = runner.main(sys.argv[2:])
print(json.dumps({"code": code, **calls}))
sys.exit(code)
"""


@pytest.mark.skipif(not onednn_products.available(), reason="torch built without oneDNN")
def test_published_line_routes_the_fisher_products_on_a_cpu(tmp_path):
    data = os.path.join(SHARED_DATA, "cifar100_mini.npz")
    if not os.path.isfile(data):
        shared_missing(data)
    env = dict(prepare(str(tmp_path), data), CL_TEST_VIT_B16_ARCH=ARCH)
    # one process, whatever ran before; not a pytest worker (tests/conftest.py would give it a fresh, empty HF cache)
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT", "PYTEST_XDIST_WORKER",
                 "PYTEST_XDIST_WORKER_COUNT"):
        env.pop(name, None)
    from benchmarks import gpu_check
    gpu_check.write_hub_weights(os.path.join(tmp_path, "hf"), ARCH)
    out = {}
    for side in ("onednn", "blas"):
        argv = ["--model", "second_order", "--dataset", "seq-cifar100-224", "--model_config", "best",
                "--seed", "0", "--n_epochs", "1", "--stop_after", "1", "--non_verbose",
                "--num_workers", "0", "--plots", "0", "--device", "cpu", "--base_path", str(tmp_path / "data"),
                "--results_file", str(tmp_path / f"{side}.json"), "--savecheck", "task",
                "--checkpoint_path", str(tmp_path / f"ck_{side}")]
        proc = subprocess.run([sys.executable, "-c", CHILD, side, *argv], cwd=ROOT, env=env, capture_output=True,
                              text=True, timeout=900)
        assert proc.returncode == 0, (proc.stdout[-2000:], proc.stderr[-3000:])
        report = json.loads(proc.stdout.strip().splitlines()[-1])
        with open(tmp_path / f"{side}.json") as fh:
            out[side] = {**report, "results": json.load(fh)}
    assert out["onednn"]["code"] == out["blas"]["code"] == 0
    assert out["onednn"]["square_sums"] > 0 and out["blas"]["square_sums"] == 0
    routed, blas = out["onednn"]["results"], out["blas"]["results"]
    states = {side: tensors(load_checkpoint(str(next((tmp_path / f"ck_{side}").rglob("task_1.pt"))))["model_state"])
              for side in out}
    fisher = [k for k in states["onednn"] if k.startswith(".fisher_past.")]
    assert len(fisher) == 4  # qkv, proj, fc1, fc2 of the one block
    for key in fisher:  # the task's exact Fisher, from oneDNN's products and from torch's
        a, b = states["onednn"][key].double(), states["blas"][key].double()
        assert b.norm() > 0 and ((a - b).norm() / b.norm()).item() < 1e-4, key
    assert routed["tasks_done"] == blas["tasks_done"] == 1
    assert routed["args"]["fisher_precision"] == "fp32"  # the CPU default: the exact Fisher
    # the same fp32 arithmetic in another order of sums: the run ends where torch's products take it
    assert abs(routed["final_class_il"] - blas["final_class_il"]) <= 1.0
