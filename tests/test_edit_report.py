"""The module-editing command writes its target/control table (and theta0 with the same heads) as JSON and a plot."""
import json

import pytest
import torch

from tests.test_second_order_model import argv_for
from app import edit
from app.runner import run
from utils.evaluate import evaluate
from tests.conftest import read_file


def test_edit_writes_table_and_plot(tmp_path, capsys):
    run([*argv_for(tmp_path, "--alpha_ita", "1", n_classes=6, n_tasks=3), "--savecheck", "last",
         "--ckpt_name", "ed", "--results_file", str(tmp_path / "r.json"), "--plots", "0"])
    ckpt = str(tmp_path / "ckpt" / "ed" / "task_3.pt")
    out, png = tmp_path / "drop.json", tmp_path / "drop.png"
    assert edit.main(["--checkpoint", ckpt, "--drop", "1", "--out", str(out), "--plot", str(png)]) == 0
    report = json.loads(read_file(out))
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    rows = edit.edit_plot_rows(report)
    assert [r["name"] for r in rows] == ["target", "control"]
    assert rows[0]["edited"] == pytest.approx(report["edited_class_il"][1])  # the single dropped task
    assert rows[1]["full"] == pytest.approx((report["full_class_il"][0] + report["full_class_il"][2]) / 2)
    printed = capsys.readouterr().out
    assert f"plot: {png}" in printed
    # theta0 with the same heads: checked against a model whose task modules are zeroed by hand
    _, dataset, model, _ = edit.load_model(ckpt, "cpu")
    with torch.no_grad():
        for layer in model.pool.layers.values():
            for delta in layer.deltas:
                for p in delta.parameters():
                    p.zero_()
        model.compose_eval()
        reference = evaluate(model, dataset)
    assert report["theta0_class_il"] == pytest.approx(reference[0])
    assert report["theta0_task_il"] == pytest.approx(reference[1])
    assert report["theta0_class_il"] != report["full_class_il"]  # the trained modules do change the predictions
    means = report["mean_class_il"]
    assert means["theta0"] == pytest.approx(sum(reference[0]) / 3)
    assert means["full"] == pytest.approx(sum(report["full_class_il"]) / 3)
    assert (f"theta0 with the same heads (every module dropped): class-IL mean {means['theta0']:.2f}; the modules "
            f"add {means['full'] - means['theta0']:+.2f} points") in printed


def test_edit_save_writes_a_checkpoint_of_the_edited_model(tmp_path, capsys):
    """``--save``: the edited model as a checkpoint; evaluated afresh it scores what the edit measured, and
    ``main.py --loadcheck`` on it reports the edited accuracies."""
    from app.edit import load_model

    argv = [*argv_for(tmp_path, "--alpha_ita", "1", n_classes=6, n_tasks=3), "--plots", "0"]
    run([*argv, "--savecheck", "last", "--ckpt_name", "ed", "--results_file", str(tmp_path / "r.json")])
    ckpt, saved = str(tmp_path / "ckpt" / "ed" / "task_3.pt"), str(tmp_path / "edited.pt")
    out = tmp_path / "keep.json"
    assert edit.main(["--checkpoint", ckpt, "--keep", "0,2", "--out", str(out), "--save", saved]) == 0
    assert f"edited checkpoint: {saved}" in capsys.readouterr().out
    report = json.loads(read_file(out))
    _, dataset, model, state = load_model(saved, "cpu")
    assert state["edit"]["weights"] == pytest.approx([0.5, 0.0, 0.5])
    with torch.no_grad():
        fresh = evaluate(model, dataset)  # the checkpoint's own (uniform) composition
    layers = list(model.pool.layers.values())
    assert all(float(layer.dense_delta(1).abs().max()) == 0 for layer in layers)  # the dropped module is zero
    assert any(float(layer.dense_delta(0).abs().max()) > 0 for layer in layers)
    _, _, original, _ = load_model(ckpt, "cpu")
    x = next(iter(dataset.test_loaders[0]))[0]
    from utils.modes import eval_mode
    with torch.no_grad(), eval_mode(original), eval_mode(model):  # the saved model computes the edit
        original.eval_task_weights = report["weights"]
        edited_logits = original(x)
        original.eval_task_weights = None
        full_logits = original(x)
        saved_logits = model(x)
    assert torch.allclose(saved_logits, edited_logits, atol=1e-5)
    assert not torch.allclose(saved_logits, full_logits, atol=1e-3)
    assert fresh[0] == pytest.approx(report["edited_class_il"], abs=1e-6)
    assert fresh[1] == pytest.approx(report["edited_task_il"], abs=1e-6)
    loaded = run([*argv, "--loadcheck", saved, "--results_file", str(tmp_path / "loaded.json")])
    assert loaded["final_class_il"] == pytest.approx(sum(report["edited_class_il"]) / 3, abs=1e-6)
    assert loaded["final_task_il"] == pytest.approx(sum(report["edited_task_il"]) / 3, abs=1e-6)
