"""benchmarks/speed.py's core on a tiny ViT: the figures exist AND relate as they must (the exact Fisher equals the
loop, phases add up to begin_task, Fisher FLOPs grow with the seen classes, the projection follows its formula)."""
import json

import pytest

from benchmarks import phases, speed
from tests.conftest import make_npz, tiny_run_args

KEYS = ("device", "fisher_speedup", "fisher_max_rel_err", "approx_fisher_speedup", "approx_fisher_rel_err",
        "iel_step_ratio", "ita_step_ratio", "merged_eval_ratio", "phase_seconds", "phase_flops",
        "loader_images_per_s", "train_images_per_s", "host_syncs_per_step", "projected_run_s")


@pytest.fixture(scope="module")
def figures(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("speed")
    data = make_npz(str(tmp / "d.npz"), n_classes=20, per_class=6)
    # tiny pre-tuning steps keep the head near its init: probabilities away from 0/1, a Fisher well above round-off
    common = tiny_run_args(data, tmp, "--learning_rate_pretuning", "1e-6", "--lr_align_pretuning", "1e-6", n_tasks=10)
    return speed.benchmark(common, fisher_images=12, fisher_batch=12, sampled=2, repeats=1,
                           project={"train_images": 120, "test_images": 30, "epochs": 3})


def test_benchmark_reports_every_figure(figures, capsys):
    for key in KEYS:
        assert key in figures
    assert figures["device"] == "cpu" and "train_mfu" not in figures  # MFU only on a GPU
    assert figures["fisher_classes_task1"] == 2 and figures["fisher_classes"] == 20  # first and last task
    assert figures["fisher_images"] == 12
    # each ratio is of the times it names (a swapped or stale time would break these)
    assert figures["ita_step_ratio"] == figures["ita_step_task10_s"] / figures["ita_step_task1_s"]
    assert figures["iel_step_ratio"] == figures["iel_step_task10_s"] / figures["iel_step_task1_s"]
    assert figures["merged_eval_ratio"] == figures["eval_plain_s"] / figures["eval_merged_s"]
    if "vbs_speedup" in figures:
        assert figures["vbs_speedup"] == figures["vbs_accumulate_s"] / figures["vbs_batched_s"]
    speed.print_table(figures)
    out = capsys.readouterr().out
    assert "Fisher, 2 classes, ours (exact)" in out and "Fisher, 20 classes, ours (exact)" in out
    assert "phases at task10" in out and "host syncs per step" in out
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
        assert figures["fisher_rel_err_tf32" + suffix] <= 1e-6  # no TF32 on a CPU: the same numbers
        assert 0 < figures["fisher_rel_err_bf16" + suffix] <= 3e-2
        assert figures["fisher_class_batch" + suffix] >= 2  # the vmapped class backward: the same Fisher
        assert figures["fisher_batched_rel_err" + suffix] <= 1e-5 and figures["fisher_batched_speedup" + suffix] > 0


def test_phases_cover_begin_task_and_flops_scale_with_classes(figures):
    secs, flops = figures["phase_seconds"], figures["phase_flops"]
    assert set(secs) == set(flops) == {"task1", "task10"}
    for tag in secs:
        inner = sum(secs[tag][p] for p in phases.PHASES)
        assert 0.5 * secs[tag]["begin_task_total"] <= inner <= secs[tag]["begin_task_total"] * 1.001
        assert set(flops[tag]) == {*phases.PHASES, "training", "evaluation"}
        assert flops[tag]["features"] > 0 and flops[tag]["fisher"] > 0
    # C - 1 backward passes for C seen classes: 19 at 20 classes vs 1 at 2 on the same images (the forward and
    # the head are shared; with one pass, through a last block run for the class token alone, the Fisher of
    # task 1 may cost less than the feature pass)
    assert flops["task10"]["fisher"] > 4 * flops["task1"]["fisher"]
    assert flops["task10"]["fisher"] > 4 * flops["task10"]["features"]
    assert flops["task10"]["features"] == pytest.approx(flops["task1"]["features"], rel=0.01)  # same task size
    assert flops["task10"]["evaluation"] == pytest.approx(10 * flops["task1"]["evaluation"], rel=1e-6)


def test_throughput_syncs_and_projection_relate(figures):
    assert figures["train_images_per_s"] == pytest.approx(4 / figures["ita_step_task1_s"])  # batch 4 per step
    assert figures["loader_images_per_s"] > figures["train_images_per_s"]  # decoding 8x8 images beats a ViT step
    assert figures["host_syncs_per_step"] == pytest.approx(1 / 25)  # none in the step, one read per 25 steps
    res, n = figures, figures["n_tasks"]
    scale = 120 / res["bench_train_images"]
    expected = 0.0
    for t in range(n):
        w = t / (n - 1)
        expected += scale * sum((1 - w) * res["phase_seconds"]["task1"][p] + w * res["phase_seconds"]["task10"][p]
                                for p in phases.PHASES)
        expected += 120 * 3 / res["train_images_per_s"] + (t + 1) * 30 / res["eval_img_s"]
    assert res["projected_run_s"] == pytest.approx(expected)
    assert res["projected_run_s"] > sum(res["phase_seconds"]["task1"][p] for p in phases.PHASES)


def test_run_tasks_with_loader_worker_processes(tmp_path):
    """As ``python benchmarks/speed.py --quick`` runs outside the test suite: loaders with worker processes (the
    default --num_workers), whose live iterators the step timer's copy of the model must not try to copy."""
    data = make_npz(str(tmp_path / "d.npz"), n_classes=4, per_class=6)
    common = [*tiny_run_args(data, tmp_path, n_tasks=2), "--num_workers", "1"]
    argv = speed.with_overrides(common, ["--model", "ita", "--alpha_ita", "1", *speed.STEP_ARGS])
    times, model, dataset = speed.run_tasks(argv, repeats=1)
    assert dataset.train_loader.num_workers == 1 and dataset.train_loader.persistent_workers
    assert times[0] > 0 and times[1] > 0 and times["images_0"] == 4
