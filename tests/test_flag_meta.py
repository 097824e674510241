"""One declaration per flag of whether it changes results: run hash, resume check, checkpoint layer and
the report's grouping all follow it (utils.args.add_run_flag)."""
import csv
import json

import pytest

from utils import checkpoints
from utils.args import RUN_FLAGS, changes_results
from app.config import parse_args
from utils.errors import UserError
from app.report import build_report

BASE = ["--model", "sgd", "--dataset", "seq-cifar10"]


def parse(**flags):
    values = {"lr": "0.1", "seed": "0", **flags}
    return parse_args(BASE + [x for k, v in values.items() for x in (f"--{k}", str(v))])


def test_declarations():
    parse()
    assert {"distributed", "eval_batch_size", "device", "num_workers", "results_file"} <= RUN_FLAGS
    for key in ("seed", "debug_mode", "lr", "batch_size", "n_epochs", "precision", "validation_mode"):
        assert changes_results(key), key
    assert changes_results("a_flag_a_helper_adds_tomorrow")  # the default: a flag changes results


def test_run_name_and_resume_check_follow_the_declaration():
    base = parse()
    same = parse(eval_batch_size=7, distributed="no", num_workers=2, device="cpu", plots=0)
    assert checkpoints.run_name(base) == checkpoints.run_name(same)
    for change in ({"debug_mode": 1}, {"seed": 1}, {"lr": 0.2}):
        assert checkpoints.run_name(parse(**change)) != checkpoints.run_name(base), change
    saved = vars(base)
    checkpoints.check_checkpoint_matches("c.pt", saved, same, strict=True)
    with pytest.raises(UserError, match="debug_mode: False -> True"):
        checkpoints.check_checkpoint_matches("c.pt", saved, parse(debug_mode=1), strict=True)


def test_checkpoint_layer_restores_result_flags_only():
    saved = vars(parse(debug_mode=1, eval_batch_size=7, num_workers=2))
    args = parse_args(["--lr", "0.1"], checkpoint_args=saved)
    assert (args.model, args.debug_mode, args.seed) == ("sgd", True, 0)
    assert (args.eval_batch_size, args.num_workers) == (None, None)  # this process's own defaults


def _result(path, final, **args):
    data = {"args": {"model": "sgd", "dataset": "seq-cifar10", "lr": 0.1, "seed": 0, "debug_mode": False,
                     "distributed": "no", "eval_batch_size": None, **args},
            "complete": True, "accuracy_matrix_class_il": [[final]], "final_class_il": final,
            "final_task_il": final, "forgetting": 0.0, "average_class_il_per_task": [final],
            "timings": {"total_seconds": 1.0}}
    path.write_text(json.dumps(data))
    return str(path)


def test_report_groups_by_result_changing_flags(tmp_path):
    files = [_result(tmp_path / "full0.json", 60.0),
             _result(tmp_path / "full1.json", 62.0, seed=1, distributed="ddp"),
             _result(tmp_path / "full2.json", 64.0, seed=2, eval_batch_size=512),
             _result(tmp_path / "debug.json", 5.0, debug_mode=True)]
    paths = build_report(files, str(tmp_path / "out"))
    with open(paths["csv"]) as fh:
        rows = {r["method"]: r for r in csv.DictReader(fh)}
    assert set(rows) == {"sgd (debug_mode=False)", "sgd (debug_mode=True)"}
    full = rows["sgd (debug_mode=False)"]
    assert (int(full["n_runs"]), float(full["final_class_il_mean"]), full["seeds"]) == (3, 62.0, "0 1 2")
    assert float(rows["sgd (debug_mode=True)"]["final_class_il_mean"]) == 5.0
