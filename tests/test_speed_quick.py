"""benchmarks/speed.py's core on a tiny ViT: every JSON key is there and the exact Fisher matches the loop."""
import json

import pytest

from benchmarks import speed
from tests.conftest import make_npz, tiny_run_args

KEYS = ("device", "fisher_speedup", "fisher_max_rel_err", "approx_fisher_speedup", "approx_fisher_rel_err",
        "iel_step_ratio", "ita_step_ratio", "merged_eval_ratio")


@pytest.fixture(scope="module")
def figures(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("speed")
    data = make_npz(str(tmp / "d.npz"), n_classes=20, per_class=6)
    # tiny pre-tuning steps keep the head near its init: probabilities away from 0/1, a Fisher well above round-off
    common = tiny_run_args(data, tmp, "--learning_rate_pretuning", "1e-6", "--lr_align_pretuning", "1e-6", n_tasks=10)
    return speed.benchmark(common, fisher_images=12, fisher_batch=12, sampled=2, repeats=1)


def test_benchmark_reports_every_figure(figures, capsys, tmp_path):
    for key in KEYS:
        assert key in figures
    assert figures["device"] == "cpu"
    for key in KEYS[1:]:
        assert figures[key] >= 0 if key == "fisher_max_rel_err" else figures[key] > 0
    assert figures["fisher_classes_task1"] == 2 and figures["fisher_classes"] == 20  # first and last task
    assert figures["fisher_images"] == 12
    assert figures["vbs_batched_s"] > 0 and figures["vbs_accumulate_s"] > 0
    # each ratio is of the times it names (a swapped or stale time would break these)
    assert figures["ita_step_ratio"] == figures["ita_step_task10_s"] / figures["ita_step_task1_s"]
    assert figures["iel_step_ratio"] == figures["iel_step_task10_s"] / figures["iel_step_task1_s"]
    assert figures["merged_eval_ratio"] == figures["eval_plain_s"] / figures["eval_merged_s"]
    assert figures["vbs_speedup"] == figures["vbs_accumulate_s"] / figures["vbs_batched_s"]
    speed.print_table(figures)
    out = capsys.readouterr().out
    assert "Fisher, 2 classes, ours (exact)" in out and "Fisher, 20 classes, ours (exact)" in out
    json.dumps(figures)


def test_the_timers_measure_the_function_they_time():
    """Every figure comes from speed.timed/interleaved: a slow and a fast function must come out in that order,
    with the median (not the sum or the first call) of the repeats."""
    import time

    import torch
    durations = iter([0.2, 0.02, 0.02])
    median, last = speed.timed(lambda: time.sleep(next(durations)) or "done", torch.device("cpu"), repeats=3)
    assert last == "done" and 0.02 <= median < 0.1
    times = speed.interleaved({"slow": lambda: time.sleep(0.06), "fast": lambda: time.sleep(0.01)},
                              torch.device("cpu"), repeats=3)
    assert times["slow"] >= 0.06 and 0.01 <= times["fast"] < times["slow"]


def test_exact_fisher_matches_the_per_class_loop(figures):
    assert figures["fisher_scale"] > 1e-6 and figures["fisher_scale_task1"] > 1e-6  # a real Fisher, not round-off
    for suffix in ("_task1", ""):
        assert figures["fisher_max_rel_err" + suffix] <= 1e-4
        assert 0 < figures["approx_fisher_rel_err" + suffix] < 2
