"""benchmarks/fisher_reference.py on a tiny ViT: the reference implementation's Fisher (from the Mammoth snapshot,
in its own process) and this project's agree, and the report has both sides' times, FLOPs and the GPU projection."""
import json
import os

import pytest

from benchmarks import fisher_reference
from tests.conftest import shared_missing


def test_reference_and_ours_agree_on_a_tiny_vit(tmp_path):
    if not os.path.isfile(fisher_reference.DEFAULT_MAMMOTH):
        shared_missing(fisher_reference.DEFAULT_MAMMOTH)
    out = tmp_path / "ref.json"
    code = fisher_reference.main(["--embed_dim", "32", "--depth", "1", "--num_heads", "2", "--img_size", "48",
                                  "--images", "4", "--classes", "3", "--repeats", "1", "--out", str(out)])
    res = json.loads(out.read_text())
    assert code == 0 and res["max_rel_err"] < 1e-4 and res["tokens"] == 10
    for side in ("reference", "ours"):
        flops, kernels, squared = res["flops_kernels_squared"][side]
        assert flops > 0 and kernels > 0 and res["seconds"][side][0] > 0 and res["cpu_seconds"][side][0] > 0
    # the per-sample products squared. The reference: images x classes x the 4 adapted layers' O*I (12 d^2).
    assert res["flops_kernels_squared"]["reference"][2] == 4 * 3 * 12 * 32 ** 2
    # ours: images x (classes - 1) x the qkv's O*I (3 d^2): the one block is the last, whose proj, fc1 and fc2
    # see the class token alone (their squares come from one matrix product, no per-sample tensor); the same
    # elements as on CUDA (the "norm" form, the classes in one vmapped backward, with fewer kernels)
    assert res["flops_kernels_squared"]["ours"][2] == res["gpu_flops_kernels_squared"]["ours"][2] == 4 * 2 * 3 * 32 ** 2
    assert res["gpu_flops_kernels_squared"]["ours"][1] < res["flops_kernels_squared"]["ours"][1]
    assert res["flops_kernels_squared"]["ours"][0] < res["flops_kernels_squared"]["reference"][0]
    assert res["ratio"] == pytest.approx(res["best_seconds"]["reference"] / res["best_seconds"]["ours"])
    assert res["best_seconds"]["ours"] == min(res["cpu_seconds"]["ours"])
    assert set(res["projected_h100_seconds"]) == {"reference", "ours"}
