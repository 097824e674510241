"""Plots next to the results JSON, and the trackers (W&B, TensorBoard) receive the JSON's scalars.

The tracking libraries are replaced at their API boundary only: a fake ``wandb`` module
(init -> run with log/summary/finish) and a fake ``SummaryWriter`` (add_scalar/flush/close).
"""
import json
import sys
import types

import pytest

from tests.conftest import make_npz, tiny_run_args
from utils.errors import UserError
from utils.loggers import TensorBoardLogger
from app.runner import main, run


class FakeWandbRun:
    def __init__(self, calls):
        self.calls, self.summary = calls, {}

    def log(self, data, step=None):
        self.calls.append(("log", dict(data), step))

    def finish(self, exit_code=0):
        self.calls.append(("finish", exit_code))


def fake_wandb_module(calls, runs):
    module = types.ModuleType("wandb")

    def init(**kwargs):
        calls.append(("init", kwargs))
        runs.append(FakeWandbRun(calls))
        return runs[-1]
    module.init = init
    return module


class FakeSummaryWriter:
    instances = []

    def __init__(self, log_dir=None):
        self.log_dir, self.scalars, self.closed = log_dir, [], False
        FakeSummaryWriter.instances.append(self)

    def add_scalar(self, tag, value, global_step=None):
        self.scalars.append((tag, value, global_step))

    def flush(self):
        pass

    def close(self):
        self.closed = True


def expected_task_scalars(res, t):
    out = {"RESULT_class_mean_accs": res["average_class_il_per_task"][t],
           "RESULT_task_mean_accs": res["average_task_il_per_task"][t]}
    out.update({f"RESULT_class_acc_{j}": v for j, v in enumerate(res["accuracy_matrix_class_il"][t])})
    out.update({f"RESULT_task_acc_{j}": v for j, v in enumerate(res["accuracy_matrix_task_il"][t])})
    return out


def test_plots_and_trackers_get_the_json_scalars(tmp_path, monkeypatch):
    import torch.utils.tensorboard
    calls, runs = [], []
    monkeypatch.setitem(sys.modules, "wandb", fake_wandb_module(calls, runs))
    FakeSummaryWriter.instances = []
    monkeypatch.setattr(torch.utils.tensorboard, "SummaryWriter", FakeSummaryWriter)
    data = make_npz(str(tmp_path / "d.npz"), n_classes=4, per_class=6)
    out = tmp_path / "res" / "run.json"
    run(["--model", "sgd", *tiny_run_args(data, tmp_path, "--results_file", str(out), "--wandb_project", "proj",
                                          "--wandb_entity", "team", "--tensorboard", str(tmp_path / "tb"))])
    res = json.loads(out.read_text())
    for suffix in ("_accuracy_matrix.png", "_average_accuracy.png"):
        assert (tmp_path / "res" / f"run{suffix}").read_bytes()[:4] == b"\x89PNG"

    init = calls[0]
    assert init[0] == "init" and init[1]["project"] == "proj" and init[1]["entity"] == "team"
    assert init[1]["config"]["lr"] == 0.05 and init[1]["name"].startswith("sgd_seq-custom_s0_")
    logs = [c for c in calls if c[0] == "log"]
    assert [c[2] for c in logs] == [1, 2]
    for t, (_, scalars, _) in enumerate(logs):
        assert scalars == pytest.approx(expected_task_scalars(res, t))
    summary = {k: res[k] for k in ("final_class_il", "final_task_il", "forgetting", "forgetting_task_il", "bwt",
                                   "bwt_task_il")}
    summary["total_seconds"] = res["timings"]["total_seconds"]
    assert runs[0].summary == pytest.approx(summary)
    assert calls[-1] == ("finish", 0)

    writer, = FakeSummaryWriter.instances
    assert writer.log_dir == str(tmp_path / "tb" / init[1]["name"]) and writer.closed
    for t in range(2):
        logged = {tag: v for tag, v, step in writer.scalars if step == t + 1 and tag.startswith("RESULT_")}
        assert logged == pytest.approx(expected_task_scalars(res, t))
    assert {tag: v for tag, v, _ in writer.scalars if not tag.startswith("RESULT_")} == pytest.approx(summary)


def test_missing_wandb_is_a_one_line_error_before_training(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "wandb", None)  # import wandb -> ImportError
    data = make_npz(str(tmp_path / "d.npz"))
    out = tmp_path / "r.json"
    code = main(["--model", "sgd", *tiny_run_args(data, tmp_path, "--results_file", str(out),
                                                  "--wandb_project", "p")])
    err = capsys.readouterr().err
    assert code == 2 and err.strip().splitlines() == ["error: --wandb_project needs the wandb package: pip install "
                                                      "wandb (or drop --wandb_project)"]
    assert not out.exists()


def test_tensorboard_event_files_hold_the_scalars(tmp_path):
    import tensorboard  # noqa: F401  (a requirement: missing = a failure, not a skip)
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    logger = TensorBoardLogger(str(tmp_path / "tb"))
    logger.log_task(0, {"RESULT_class_mean_accs": 75.0})
    logger.log_task(1, {"RESULT_class_mean_accs": 40.0})
    logger.log_summary({"final_class_il": 40.0})
    logger.close()
    events = EventAccumulator(str(tmp_path / "tb"))
    events.Reload()
    assert [(e.step, e.value) for e in events.Scalars("RESULT_class_mean_accs")] == [(1, 75.0), (2, 40.0)]
    assert [(e.step, e.value) for e in events.Scalars("final_class_il")] == [(2, 40.0)]


def test_unwritable_tensorboard_folder(tmp_path):
    import tensorboard  # noqa: F401  (a requirement: missing = a failure, not a skip)
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(UserError, match="not writable"):
        TensorBoardLogger(str(blocker / "tb")).log_task(0, {"a": 1.0})
