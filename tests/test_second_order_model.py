"""second_order end to end on tiny data: bookkeeping (D4), accumulation (D5), penalty steps (D1/D2),
aliases, resume and the editing command."""
import json
import os

import pytest
import torch

from models.second_order_utils import penalties as pen
from tests.conftest import make_npz, tiny_run_args
from app.config import parse_args
from utils.errors import UserError
from app.experiment import build_experiment
from app.runner import run
from utils.training import train
from tests.conftest import read_file

FAST = ["--num_epochs_pretuning", "1", "--num_epochs_align_pretuning", "1", "--num_samples_align_pretuning", "8",
        "--batch_size_align_pretuning", "8"]


def argv_for(tmp_path, *extra, n_classes=4, per_class=6, n_tasks=2, model="second_order"):
    path = make_npz(str(tmp_path / "d.npz"), n_classes=n_classes, per_class=per_class)
    return ["--model", model, *tiny_run_args(path, tmp_path, n_tasks=n_tasks), *FAST, *extra]


def build(argv):
    experiment = build_experiment(parse_args(argv), torch.device("cpu"))
    return experiment.args, experiment.dataset, experiment.model


def test_example_counts_are_exact_for_unequal_tasks(tmp_path):
    argv = argv_for(tmp_path, "--alpha_ita", "1", n_classes=6)
    argv[argv.index("--n_tasks"):argv.index("--n_tasks") + 2] = ["--classes_per_task", "1,2,3"]
    args, dataset, model = build(argv)
    seen = []
    original = model.begin_task

    def spy(ds):
        original(ds)
        seen.append(({k: v.clone() for k, v in model.fisher_past.items()}, sum(model.task_counts),
                     dict(model.stats.penalty_fisher)))
    model.begin_task = spy
    train(model, dataset, args)
    assert model.task_counts == [6, 12, 18]
    past, n_past, fisher = seen[2]
    assert n_past == 18
    for name, value in fisher.items():
        assert torch.allclose(value, (pen.EPS + past[name]) / 18)
    assert all(torch.all(v == pen.EPS) for v in seen[0][2].values())  # Q2: only eps at task 0


@pytest.mark.parametrize("mode", ["accumulate", "batched"])
@pytest.mark.parametrize("tail, groups", [("drop", [3, 3]), ("flush", [3, 3, 1])])
def test_every_step_uses_exactly_virtual_bs_n_micro_batches(tmp_path, tail, groups, mode):
    argv = argv_for(tmp_path, "--virtual_bs_n", "3", "--vbs_tail", tail, "--vbs_mode", mode, per_class=7, n_tasks=2)
    argv[argv.index("--batch_size") + 1] = "2"  # 14 images per task -> 7 micro-batches per epoch
    args, dataset, model = build(argv)
    steps, forwards = [], []
    original = model.optimizer_step

    def spy():
        steps.append(model.vbatches.accumulated)
        original()
    model.optimizer_step = spy
    model.net.classifier.register_forward_hook(
        lambda mod, inp, out: forwards.append(len(inp[0])) if model._in_task else None)
    train(model, dataset, args)
    assert steps == groups * 2  # two tasks, one epoch each
    # dropped tail micro-batches are not even computed; batched: one forward per step over its micro-batches
    assert forwards == ([2] * sum(groups) * 2 if mode == "accumulate" else [2 * g for g in groups] * 2)


@pytest.mark.parametrize("style", ["lora", "full"])
def test_batched_virtual_batch_gives_the_accumulated_gradient(tmp_path, style):
    """--vbs_mode batched: each step's gradient equals accumulating its (unequal) micro-batches."""
    grads, finals = {}, {}
    for mode in ("accumulate", "batched"):
        argv = argv_for(tmp_path, "--tuning_style", style, "--alpha_ita", "2", "--virtual_bs_n", "2",
                        "--vbs_tail", "flush", "--vbs_mode", mode, per_class=7, n_tasks=2)
        argv[argv.index("--batch_size") + 1] = "4"  # 14 images -> micro-batches 4,4 | 4,2 (unequal in a group)
        args, dataset, model = build(argv)
        seen = []
        step = model.optimizer_step

        def spy():
            seen.append([p.grad.detach().clone() for p in model._trainable])
            step()
        model.optimizer_step = spy
        train(model, dataset, args)
        grads[mode], finals[mode] = seen, {k: v.detach().clone() for k, v in model.state_dict().items()}
    assert len(grads["batched"]) == len(grads["accumulate"]) == 4  # two steps per task
    for g_batched, g_accumulated in zip(grads["batched"], grads["accumulate"]):
        for a, b in zip(g_batched, g_accumulated):
            torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-5)  # summation order; a lost or misweighted micro-batch is ~30 %
    for key, value in finals["accumulate"].items():  # Adam amplifies fp32 rounding a little over the steps
        torch.testing.assert_close(finals["batched"][key], value, rtol=1e-3, atol=1e-4, msg=key)


@pytest.mark.parametrize("style, step", [("full", "coupled"), ("full", "decoupled"), ("lora", "decoupled"),
                                         ("ia3", "coupled")])
def test_penalty_step_changes_parameters_only_as_specified(tmp_path, style, step):
    args, dataset, model = build(argv_for(tmp_path, "--tuning_style", style, "--penalty_step", step,
                                          "--alpha_ita", "50", "--virtual_bs_n", "2", "--clip_grad", "0.05",
                                          "--vbs_mode", "accumulate"))
    dataset.get_data_loaders()
    model.net.train()
    model.meta_begin_task(dataset)
    model.meta_begin_epoch(1, dataset)
    with torch.no_grad():
        for p in model.pool.task_parameters(0):
            p.add_(0.1 * torch.randn_like(p))
    x, y, nx = next(iter(dataset.train_loader))
    model.observe(x, y, nx)  # one micro-batch of two: CE grads accumulated, no step yet
    params = model.get_parameters()
    before = [p.detach().clone() for p in params]
    ce = [p.grad.clone() for p in params]
    penalty = {id(p): g for p, g in model.adapter_penalty_grads() + model.head_penalty_grads()}
    assert all(torch.equal(p, b) for p, b in zip(params, before))  # D1: computing grads changes nothing
    model.opt.step = lambda: None  # isolate the penalty step from AdamW
    model.opt.zero_grad = lambda set_to_none=True: None
    model.optimizer_step()
    s = pen.lr_factor(1, args.n_epochs)
    for p, b, g_ce in zip(params, before, ce):
        g = pen.clip_norm(penalty[id(p)], 0.05)
        if step == "decoupled":
            assert torch.allclose(p, b - s * g, atol=1e-6) and torch.equal(p.grad, g_ce)
        else:
            assert torch.equal(p, b) and torch.allclose(p.grad, g_ce + g, atol=1e-6)


def test_default_penalty_step_depends_on_tuning_style(tmp_path):
    assert build(argv_for(tmp_path, "--tuning_style", "full"))[2].decoupled is False
    assert build(argv_for(tmp_path, "--tuning_style", "ia3"))[2].decoupled is True
    assert build(argv_for(tmp_path))[2].decoupled is True


def test_aliases_fix_use_iel(tmp_path):
    assert parse_args(argv_for(tmp_path, model="iel")).use_iel is True
    assert parse_args(argv_for(tmp_path, model="ita")).use_iel is False
    with pytest.raises(UserError, match="use --model iel"):
        build(argv_for(tmp_path, "--use_iel", "1", model="ita"))


def test_iel_trains_the_average_and_evaluates_the_merged_model(tmp_path):
    args, dataset, model = build(argv_for(tmp_path, "--beta_iel", "1", model="iel"))
    train(model, dataset, args)
    x = next(iter(dataset.test_loaders[0]))[0]
    model.eval()
    merged = model(x)
    model.pool.train_ensemble(1, {n: model.pool.weighted_sum(n, [1.0]) for n in model.pool.layers})
    assert torch.allclose(model.net(x), merged, atol=1e-5)
    model.pool.use_base()
    assert not torch.allclose(model.net(x)[:, :4], merged[:, :4], atol=1e-4)


@pytest.mark.parametrize("extra", [[], ["--use_ca", "1"]], ids=["published", "use_ca"])
def test_resume_reproduces_the_run(tmp_path, extra):
    base = argv_for(tmp_path, "--alpha_ita", "1", *extra, n_classes=6, n_tasks=3)
    full = run([*base, "--results_file", str(tmp_path / "full.json")])
    part = [*base, "--savecheck", "task", "--ckpt_name", "so"]
    run([*part, "--stop_after", "1", "--results_file", str(tmp_path / "p.json")])
    resumed = run([*part, "--resume", "--results_file", str(tmp_path / "r.json")])
    assert resumed["accuracy_matrix_class_il"] == full["accuracy_matrix_class_il"]
    assert resumed["accuracy_matrix_task_il"] == full["accuracy_matrix_task_il"]


def test_edit_command_keeps_and_drops_modules(tmp_path, capsys):
    from app import edit
    res = run([*argv_for(tmp_path, "--alpha_ita", "1", n_classes=6, n_tasks=3), "--savecheck", "last",
               "--ckpt_name", "ed", "--results_file", str(tmp_path / "r.json")])
    ckpt = str(tmp_path / "ckpt" / "ed" / "task_3.pt")
    out = str(tmp_path / "keep.json")
    assert edit.main(["--checkpoint", ckpt, "--keep", "0,1,2", "--out", out]) == 0
    report = json.loads(read_file(out))
    assert report["edited_class_il"] == report["full_class_il"] == res["accuracy_matrix_class_il"][-1]
    assert report["weights"] == pytest.approx([1 / 3] * 3)
    assert edit.main(["--checkpoint", ckpt, "--drop", "1", "--out", out]) == 0
    report = json.loads(read_file(out))
    assert report["weights"] == [0.5, 0.0, 0.5] and report["targets"] == [1] and report["controls"] == [0, 2]
    assert edit.main(["--checkpoint", ckpt, "--keep", "2", "--raw_weights", "--out", out]) == 0
    report = json.loads(read_file(out))
    assert report["weights"] == pytest.approx([0, 0, 1 / 3])
    printed = capsys.readouterr().out
    assert "target class-IL mean" in printed and "control class-IL mean" in printed
    bad_out, bad_plot = tmp_path / "nothing.json", tmp_path / "nothing.png"
    assert edit.main(["--checkpoint", ckpt, "--keep", "5", "--out", str(bad_out), "--plot", str(bad_plot)]) == 2
    assert "task indices must lie in 0..2" in capsys.readouterr().err
    assert not bad_out.exists() and not bad_plot.exists()  # a refused edit writes nothing


def test_debug_mode_and_top_k_fisher_run(tmp_path):
    res = run([*argv_for(tmp_path, "--beta_iel", "1", "--use_iel", "1", "--debug_mode", "1",
                         "--fisher_mc_classes", "1", "--tuning_style", "ia3"),
               "--results_file", str(tmp_path / "r.json")])
    assert res["complete"] and len(res["accuracy_matrix_class_il"]) == 2


def test_compositions_are_switched_by_the_hooks_not_by_train(tmp_path):
    """No merge hidden in train()/eval(): the evaluation forward merges, observe goes back to the training weights."""
    args, dataset, model = build(argv_for(tmp_path, "--alpha_ita", "1", "--vbs_mode", "accumulate"))
    assert type(model).train is torch.nn.Module.train
    dataset.get_data_loaders()
    model.meta_begin_task(dataset)
    layers = list(model.pool.layers.values())
    assert model.composition.state == "train" and all(l.train_task == 0 for l in layers)
    x, y, nx = next(iter(dataset.train_loader))
    model.eval()
    assert model.composition.state == "train"  # eval() alone changes nothing
    merged = model(x)
    assert model.composition.state == "eval" and all(l.train_task is None and l._weight is not None for l in layers)
    model.train()
    model.meta_begin_epoch(0, dataset)
    model.meta_observe(x, y, nx)
    assert model.composition.state == "train" and all(l.train_task == 0 and l._weight is None for l in layers)
    model.meta_end_task(dataset)
    assert model.composition.state == "eval"
    model.eval()
    after = model(x)
    assert not torch.equal(after, merged)  # the step changed tau_0 and the head
    model.pool.train_individual(0)  # theta0 + tau_0 unmerged: the same function as the merged 1-task average
    assert torch.allclose(model.net(x), after, atol=1e-5)


def test_settings_are_typed_and_read_from_the_flags(tmp_path):
    from models.second_order_utils.flags import SecondOrderSettings
    args, _, model = build(argv_for(tmp_path, "--alpha_ita", "0.5", "--fisher_class_batch", "3", "--clip_grad", "none",
                                    "--fisher_mc_classes", "all", "--tuning_style", "ia3", model="ita"))
    s = model.settings
    assert isinstance(s, SecondOrderSettings) and model.stats.settings is s
    assert (s.alpha_ita, s.fisher_class_batch, s.clip_grad, s.fisher_mc_classes, s.tuning_style, s.use_iel) == \
        (0.5, 3, None, None, "ia3", False)
    assert model.adapter_strength == 0.5 and model.head_strength == 0.5 and model.decoupled
    assert build(argv_for(tmp_path, model="iel"))[2].settings.use_iel is True
