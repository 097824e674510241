"""Mammoth's own test command lines (its tests for second_order, er, der, derpp, joint, l2p, coda_prompt, slca)
run here unchanged in debug mode, on data in the official layouts and random ViT-B/16-named weights in a
Hugging Face cache. The ViT-B/16 is shrunk through the test-only ``CL_TEST_VIT_B16_DIMS`` (docs/backbones.md);
the full-size timings are in docs/datasets.md (debug mode)."""
from __future__ import annotations

import json
import os

import pytest

from tests.conftest import SHARED_DATA, shared_missing
from tests.mammoth_setup import write_all_datasets, write_vit_b16_cache
from app.runner import run

MAMMOTH_LINES = """
--model second_order --dataset seq-cifar100-224 --model_config best --n_epochs 2 --batch_size 4 --non_verbose 1 --num_workers 0 --seed 0 --debug_mode 1
--model second_order --dataset seq-cropdisease --model_config best --n_epochs 2 --batch_size 4 --non_verbose 1 --num_workers 0 --seed 0 --debug_mode 1
--model second_order --dataset seq-cifar100-224 --lr 0.001 --n_epochs 2 --batch_size 4 --use_iel true --dataset_config second_order_ta --non_verbose 1 --num_workers 0 --seed 0 --debug_mode 1
--model second_order --dataset seq-cropdisease --lr 0.001 --n_epochs 2 --batch_size 4 --use_iel true --dataset_config second_order_ta --non_verbose 1 --num_workers 0 --seed 0 --debug_mode 1
--model er --dataset seq-mnist --buffer_size 10 --lr 1e-4 --n_epochs 1 --batch_size 2 --non_verbose 1 --num_workers 0 --seed 0 --debug_mode 1
--model er --dataset seq-cifar10 --buffer_size 10 --lr 1e-4 --n_epochs 1 --batch_size 2 --non_verbose 1 --num_workers 0 --seed 0 --debug_mode 1
--model er --dataset rot-mnist --buffer_size 10 --lr 1e-4 --n_epochs 1 --batch_size 2 --non_verbose 1 --num_workers 0 --seed 0 --debug_mode 1
--model er --dataset perm-mnist --buffer_size 10 --lr 1e-4 --n_epochs 1 --batch_size 2 --non_verbose 1 --num_workers 0 --seed 0 --debug_mode 1
--model er --dataset mnist-360 --buffer_size 10 --lr 1e-4 --n_epochs 1 --batch_size 2 --non_verbose 1 --num_workers 0 --seed 0 --debug_mode 1
--model der --dataset seq-mnist --buffer_size 10 --lr 1e-4 --alpha .5 --n_epochs 1 --batch_size 2 --non_verbose 1 --num_workers 0 --seed 0 --debug_mode 1
--model der --dataset seq-cifar10 --buffer_size 10 --lr 1e-4 --alpha .5 --n_epochs 1 --batch_size 2 --non_verbose 1 --num_workers 0 --seed 0 --debug_mode 1
--model der --dataset rot-mnist --buffer_size 10 --lr 1e-4 --alpha .5 --n_epochs 1 --batch_size 2 --non_verbose 1 --num_workers 0 --seed 0 --debug_mode 1
--model der --dataset perm-mnist --buffer_size 10 --lr 1e-4 --alpha .5 --n_epochs 1 --batch_size 2 --non_verbose 1 --num_workers 0 --seed 0 --debug_mode 1
--model der --dataset mnist-360 --buffer_size 10 --lr 1e-4 --alpha .5 --n_epochs 1 --batch_size 2 --non_verbose 1 --num_workers 0 --seed 0 --debug_mode 1
--model der --dataset seq-cifar100-224 --buffer_size 10 --lr 1e-4 --alpha .5 --n_epochs 1 --batch_size 2 --non_verbose 1 --num_workers 0 --seed 0 --debug_mode 1
--model derpp --dataset seq-mnist --buffer_size 10 --lr 1e-4 --alpha .5 --beta .5 --n_epochs 1 --batch_size 2 --non_verbose 1 --num_workers 0 --seed 0 --debug_mode 1
--model derpp --dataset seq-cifar10 --buffer_size 10 --lr 1e-4 --alpha .5 --beta .5 --n_epochs 1 --batch_size 2 --non_verbose 1 --num_workers 0 --seed 0 --debug_mode 1
--model derpp --dataset rot-mnist --buffer_size 10 --lr 1e-4 --alpha .5 --beta .5 --n_epochs 1 --batch_size 2 --non_verbose 1 --num_workers 0 --seed 0 --debug_mode 1
--model derpp --dataset perm-mnist --buffer_size 10 --lr 1e-4 --alpha .5 --beta .5 --n_epochs 1 --batch_size 2 --non_verbose 1 --num_workers 0 --seed 0 --debug_mode 1
--model derpp --dataset mnist-360 --buffer_size 10 --lr 1e-4 --alpha .5 --beta .5 --n_epochs 1 --batch_size 2 --non_verbose 1 --num_workers 0 --seed 0 --debug_mode 1
--model derpp --dataset seq-cifar100-224 --buffer_size 10 --lr 1e-4 --alpha .5 --beta .5 --n_epochs 1 --batch_size 2 --non_verbose 1 --num_workers 0 --seed 0 --debug_mode 1
--model sgd --dataset seq-cifar10 --joint=1 --lr 1e-4 --n_epochs 1 --batch_size 4 --non_verbose 1 --num_workers 0 --seed 0 --debug_mode 1
--model sgd --dataset seq-mnist --joint=1 --lr 1e-4 --n_epochs 1 --batch_size 4 --non_verbose 1 --num_workers 0 --seed 0 --debug_mode 1
--model lwf_mc --dataset seq-cifar10 --joint=1 --lr 1e-4 --n_epochs 1 --batch_size 4 --non_verbose 1 --num_workers 0 --seed 0 --debug_mode 1
--model lwf_mc --dataset seq-mnist --joint=1 --lr 1e-4 --n_epochs 1 --batch_size 4 --non_verbose 1 --num_workers 0 --seed 0 --debug_mode 1
--model joint --dataset perm-mnist --lr 1e-4 --n_epochs 1 --batch_size 4 --non_verbose 1 --num_workers 0 --seed 0 --debug_mode 1
--model joint --dataset rot-mnist --lr 1e-4 --n_epochs 1 --batch_size 4 --non_verbose 1 --num_workers 0 --seed 0 --debug_mode 1
--model l2p --dataset seq-cifar100-224 --lr 1e-4 --n_epochs 1 --batch_size 2 --non_verbose 1 --num_workers 0 --seed 0 --debug_mode 1
--model l2p --dataset seq-imagenet-r --lr 1e-4 --n_epochs 1 --batch_size 2 --non_verbose 1 --num_workers 0 --seed 0 --debug_mode 1
--model coda_prompt --dataset seq-cifar10-224 --lr 1e-4 --n_epochs 2 --batch_size 2 --non_verbose 1 --num_workers 0 --seed 0 --code_optimization 0 --debug_mode 1
--model coda_prompt --dataset seq-cifar10-224 --lr 1e-4 --n_epochs 2 --batch_size 2 --non_verbose 1 --num_workers 0 --seed 0 --code_optimization 1 --debug_mode 1
--model coda_prompt --dataset seq-imagenet-r --lr 1e-4 --n_epochs 2 --batch_size 2 --non_verbose 1 --num_workers 0 --seed 0 --code_optimization 0 --debug_mode 1
--model coda_prompt --dataset seq-imagenet-r --lr 1e-4 --n_epochs 2 --batch_size 2 --non_verbose 1 --num_workers 0 --seed 0 --code_optimization 1 --debug_mode 1
--model slca --dataset seq-cifar100-224 --lr 1e-4 --n_epochs 1 --batch_size 2 --non_verbose 1 --num_workers 0 --seed 0 --debug_mode 1
""".strip().splitlines()

# (setting, tasks) each line's run must report
EXPECTED = {"seq-cifar100-224": ("class-il", 10), "seq-cropdisease": ("class-il", 7), "seq-mnist": ("class-il", 5),
            "seq-cifar10": ("class-il", 5), "seq-cifar10-224": ("class-il", 5), "seq-imagenet-r": ("class-il", 10),
            "rot-mnist": ("domain-il", 20), "perm-mnist": ("domain-il", 20), "mnist-360": ("general-continual", 1)}


def _value(argv: list[str], flag: str) -> str:
    for i, token in enumerate(argv):
        if token == flag:
            return argv[i + 1]
        if token.startswith(flag + "="):
            return token.split("=", 1)[1]
    return ""


def test_the_lines_are_mammoths():
    """The list above is ../shared/docs/mammoth-test-lines.txt (when that copy is present)."""
    path = os.path.join(os.path.dirname(SHARED_DATA), "docs", "mammoth-test-lines.txt")
    if not os.path.isfile(path):
        shared_missing(path)
    with open(path) as fh:
        assert [line.strip() for line in fh if line.strip()] == MAMMOTH_LINES
    assert len(MAMMOTH_LINES) == 34


@pytest.fixture(scope="module")
def mammoth_world(tmp_path_factory):
    """Datasets in their official layouts and shrunk random ViT-B/16 weights in the HF cache (shared by all lines)."""
    from huggingface_hub import constants
    root = tmp_path_factory.mktemp("mammoth")
    write_all_datasets(str(root / "data"))
    dims = "embed_dim=32,depth=1,num_heads=2"
    write_vit_b16_cache(constants.HF_HUB_CACHE, embed_dim=32, depth=1, num_heads=2)
    old = os.environ.get("CL_TEST_VIT_B16_DIMS")
    os.environ["CL_TEST_VIT_B16_DIMS"] = dims
    yield root
    if old is None:
        os.environ.pop("CL_TEST_VIT_B16_DIMS", None)
    else:
        os.environ["CL_TEST_VIT_B16_DIMS"] = old
    for tag in ("augreg2_in21k_ft_in1k", "augreg_in21k"):
        import shutil
        shutil.rmtree(os.path.join(constants.HF_HUB_CACHE, f"models--timm--vit_base_patch16_224.{tag}"),
                      ignore_errors=True)


@pytest.mark.parametrize("index", range(len(MAMMOTH_LINES)),
                         ids=[f"{i:02d}-{_value(line.split(), '--model')}-{_value(line.split(), '--dataset')}"
                              for i, line in enumerate(MAMMOTH_LINES)])
def test_mammoth_line_runs(index, mammoth_world, tmp_path):
    argv = MAMMOTH_LINES[index].split()
    results_file = tmp_path / "r.json"
    res = run(argv + ["--base_path", str(mammoth_world / "data"), "--plots", "0", "--results_file", str(results_file),
                      "--checkpoint_path", str(tmp_path / "ckpt")])
    setting, n_tasks = EXPECTED[_value(argv, "--dataset")]
    if _value(argv, "--joint") in ("1", "true"):
        n_tasks = 1
    with open(results_file) as fh:
        saved = json.load(fh)
    assert saved["setting"] == setting and saved["n_tasks"] == n_tasks and saved["complete"]
    assert [len(row) for row in saved["accuracy_matrix_class_il"]] == list(range(1, n_tasks + 1))
    assert all(0 <= v <= 100 for row in saved["accuracy_matrix_class_il"] for v in row)
    if setting == "class-il":
        assert [len(row) for row in saved["accuracy_matrix_task_il"]] == list(range(1, n_tasks + 1))
    else:  # every task holds all the classes: task-IL is not a separate quantity (docs/datasets.md)
        assert saved["accuracy_matrix_task_il"] == [] and saved["final_task_il"] is None
    assert res["final_class_il"] == saved["final_class_il"]
