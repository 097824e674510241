"""benchmarks.components (heads against modules of an ITA run) and benchmarks.mini_data's seeded subsets."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from benchmarks import components as comp
from benchmarks.mini_data import balanced_subset, write_subset
from tests.conftest import make_npz
from tests.conftest import read_file


def test_balanced_subset_is_seeded_and_balanced():
    labels = np.repeat(np.arange(3), [5, 8, 2])
    a = balanced_subset(labels, 4, np.random.RandomState(0))
    b = balanced_subset(labels, 4, np.random.RandomState(0))
    assert a.tolist() == b.tolist() and np.bincount(labels[a]).tolist() == [4, 4, 2]
    assert balanced_subset(labels, 4, np.random.RandomState(1)).tolist() != a.tolist()


def test_write_subset_is_a_seq_custom_npz(tmp_path):
    x = np.arange(12 * 4 * 4, dtype=np.uint8).reshape(12, 4, 4)
    y = np.repeat(np.arange(3), 4)
    write_subset(str(tmp_path / "s.npz"), x, y, x, y, 2, 3, 0, "unit")
    with np.load(tmp_path / "s.npz") as npz:
        assert npz["x_train"].shape == (6, 4, 4, 3) and npz["x_test"].shape == (9, 4, 4, 3)
        assert (npz["x_train"][..., 0] == npz["x_train"][..., 2]).all()  # grey replicated to RGB
        assert np.bincount(npz["y_test"]).tolist() == [3, 3, 3]


def test_components_of_a_tiny_ita_run(tmp_path, capsys):
    data = make_npz(str(tmp_path / "d.npz"), n_classes=6)
    result = tmp_path / "ita.json"
    from app.runner import run
    run(["--model", "ita", "--dataset", "seq-custom", "--data_path", data, "--n_tasks", "3", "--backbone",
         "vit_tiny", "--embed_dim", "32", "--depth", "1", "--num_heads", "2", "--lr", "0.05", "--n_epochs", "2",
         "--batch_size", "4", "--seed", "0", "--plots", "0", "--base_path", str(tmp_path / "data"),
         "--num_epochs_pretuning", "1", "--num_epochs_align_pretuning", "1", "--num_samples_align_pretuning", "8",
         "--batch_size_align_pretuning", "8", "--alpha_ita", "1", "--non_verbose", "1", "--results_file",
         str(result), "--savecheck", "last", "--checkpoint_path", str(tmp_path / "ck")])
    final = json.loads(read_file(result))
    ckpt = next((tmp_path / "ck").rglob("*.pt"))
    out = tmp_path / "comp.json"
    assert comp.main(["--checkpoint", str(ckpt), "--drops", "1", "--out", str(out), "--device", "cpu"]) == 0
    report = json.loads(read_file(out))
    assert report["full"]["class_il"] == pytest.approx(final["accuracy_matrix_class_il"][-1], abs=1e-6)
    assert report["full"]["mean_class_il"] == pytest.approx(final["final_class_il"], abs=1e-6)
    assert [r["task"] for r in report["drops"]] == [0, 1, 2]
    assert "pre-tuning alone" in capsys.readouterr().out

    from app.edit import load_model
    from utils.evaluate import evaluate
    _, dataset, model, _ = load_model(str(ckpt), "cpu")
    trained = {k: v.clone() for k, v in model.net.classifier.state_dict().items()}
    model.eval_task_weights = [0.0, 0.0, 0.0]
    with comp.pretuned_heads(model):  # the pre-tuned heads are what is evaluated, and they differ from the trained
        swapped = model.net.classifier.state_dict()
        assert all(torch.equal(swapped[k], v) for k, v in model.pretuned_head.state_dict().items())
        assert evaluate(model, dataset)[0] == pytest.approx(report["pretuned"]["class_il"], abs=1e-6)
    assert all(torch.equal(model.net.classifier.state_dict()[k], v) for k, v in trained.items())  # restored
    assert evaluate(model, dataset)[0] == pytest.approx(report["theta0_heads"]["class_il"], abs=1e-6)
    assert not all(torch.equal(trained[k], v) for k, v in model.pretuned_head.state_dict().items())
