"""Speed of the ``second_order`` model (ITA / IEL), measured side by side in one run (docs/speed.md).

* Fisher pass at theta0 with the pre-tuned head: ours (large batches, backward stopped at the first
  adapted layer) against a per-class loop at batch 8 (backward to the input), and the approximate
  sampled-label estimator (``--fisher_sampled_labels``) with its error against the exact Fisher;
* a training step (``observe``) at task 1 and task 10, for ITA and IEL;
* evaluation of the merged composed model against the plain backbone;
* images/s and peak memory of each (CPU: the process's peak RSS so far), on a GPU the step's MFU.

``python benchmarks/speed.py --quick`` (EfficientNet-Lite0, 32 px) fits in a few minutes on 2 cores.
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import resource
import statistics
import sys
import time
from typing import Any, Callable, Optional

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from backbone import get_backbone  # noqa: E402
from models.second_order_utils.fisher import CLASS_BATCH_ROWS, FisherHooks, network_fisher  # noqa: E402
from app.config import parse_args  # noqa: E402
from app.experiment import build_experiment  # noqa: E402
from utils import accelerator  # noqa: E402
from utils.io import write_json  # noqa: E402
from benchmarks.phases import (PhaseTimer, model_copy, count_host_syncs, loader_images_per_s, phase_flops,  # noqa: E402
                               projected_run_seconds)

BF16_PEAK_FLOPS = {"H100": 989e12, "H200": 989e12, "A100": 312e12}  # dense bf16 tensor-core peaks
STEP_ARGS = ["--num_epochs_pretuning", "1", "--num_epochs_align_pretuning", "1", "--num_samples_align_pretuning", "8",
             "--batch_size_align_pretuning", "64", "--stats_batch_size", "256",
             "--lr", "0.001", "--n_epochs", "1", "--seed", "0", "--non_verbose"]
STEP_REPEATS = 15  # a step is short: the median of many calls
VBS_MICRO_BATCHES = 4  # the virtual-batch comparison: one step over this many micro-batches


def with_overrides(argv: list[str], overrides: list[str]) -> list[str]:
    """``argv`` with the flags (and values) that ``overrides`` sets removed, then ``overrides`` appended."""
    flags, out, skip = {t for t in overrides if t.startswith("--")}, [], False
    for token in argv:
        if token.startswith("--"):
            skip = token in flags
        if not skip:
            out.append(token)
    return out + overrides


def build(argv: list[str]):
    """(args, dataset, model) exactly as the runner builds them."""
    args = parse_args(argv)
    experiment = build_experiment(args)  # on --device (default: the best available)
    return experiment.args, experiment.dataset, experiment.model


def peak_memory_mb(device: torch.device) -> float:
    peak = accelerator.peak_memory_mib(device)
    if peak is not None:
        return peak
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def timed(fn: Callable[[], Any], device: torch.device, repeats: int = 1) -> tuple[float, Any]:
    """Median wall time of ``repeats`` calls (synchronised on a GPU) and the last result."""
    times, out = [], None
    for _ in range(repeats):
        accelerator.synchronize(device)
        start = time.perf_counter()
        out = fn()
        accelerator.synchronize(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times), out


def loop_fisher(forward: Callable, layers: dict, images: torch.Tensor, batch_size: int = 8) -> dict[str, torch.Tensor]:
    """The per-class loop: batches of ``batch_size``, one backward per class down to the input."""
    with FisherHooks(layers) as hooks:
        for i in range(0, len(images), batch_size):
            x = images[i:i + batch_size].detach().requires_grad_(True)
            logp = torch.log_softmax(forward(x).float(), dim=1)
            probs = logp.detach().exp()
            for c in range(logp.shape[1]):
                torch.autograd.grad((probs[:, c].sqrt() * logp[:, c]).sum(), x, retain_graph=c < logp.shape[1] - 1)
    return hooks.sums


def fisher_errors(ours: dict[str, torch.Tensor], ref: dict[str, torch.Tensor]) -> tuple[float, float]:
    """(max over layers of max|a-b| / max|b|, ||a-b|| / ||b|| over all layers together)."""
    worst = max(float((ours[k] - ref[k]).abs().max() / ref[k].abs().max().clamp_min(1e-30)) for k in ref)
    diff = sum(float((ours[k] - ref[k]).pow(2).sum()) for k in ref) ** 0.5
    norm = sum(float(ref[k].pow(2).sum()) for k in ref) ** 0.5
    return worst, diff / max(norm, 1e-30)


def fisher_figures(model, images: torch.Tensor, batch_size: int, sampled: int, device: torch.device) -> dict:
    """Exact Fisher (ours vs the loop) and the sampled-label estimator at theta0 with the pre-tuned head."""
    model.net.eval()
    model.composition.use_base()  # observe recomposes the training weights afterwards
    n_seen = model.n_seen_classes

    def logits(x):
        return model.pretuned_head.seen_logits(model.net.features(x))[:, :n_seen]

    def ours_fn():
        return network_fisher(logits, model.pool.layers, images.split(batch_size))[0]

    t_loop, ref = timed(lambda: loop_fisher(logits, model.pool.layers, images), device)
    mem_loop = peak_memory_mb(device)
    t_ours, ours = timed(ours_fn, device)
    mem_ours = peak_memory_mb(device)
    # the class backward passes vmapped (is_grads_batched), as many classes as CLASS_BATCH_ROWS (image, class) pairs
    class_batch = min(n_seen, max(2, CLASS_BATCH_ROWS // batch_size))
    t_batched, batched = timed(lambda: network_fisher(logits, model.pool.layers, images.split(batch_size),
                                                      class_batch=class_batch)[0], device)
    gen = torch.Generator().manual_seed(0)
    t_approx, approx = timed(lambda: network_fisher(logits, model.pool.layers, images.split(batch_size),
                                                     sampled_labels=sampled, generator=gen)[0], device)
    max_rel, _ = fisher_errors(ours, ref)
    _, approx_err = fisher_errors(approx, ours)
    precisions = {}
    for precision in ("tf32", "bf16"):  # the same exact Fisher with lower-precision GEMMs, squares in fp32
        t_p, value = timed(lambda: network_fisher(logits, model.pool.layers, images.split(batch_size),
                                                  precision=precision)[0], device)
        precisions.update({f"fisher_{precision}_s": t_p, f"fisher_rel_err_{precision}": fisher_errors(value, ours)[1],
                           f"fisher_{precision}_speedup": t_ours / t_p})
    model.train()
    n = len(images)
    return {"fisher_classes": n_seen, "fisher_scale": max(float(v.abs().max()) for v in ref.values()), "fisher_images": n, "fisher_loop_s": t_loop, "fisher_ours_s": t_ours,
            "fisher_approx_s": t_approx, "fisher_speedup": t_loop / t_ours, "fisher_max_rel_err": max_rel,
            "approx_fisher_samples": sampled, "approx_fisher_speedup": t_ours / t_approx,
            "approx_fisher_rel_err": approx_err, "fisher_loop_img_s": n / t_loop, "fisher_ours_img_s": n / t_ours,
            "fisher_approx_img_s": n / t_approx, "fisher_loop_peak_mb": mem_loop, "fisher_ours_peak_mb": mem_ours,
            "fisher_class_batch": class_batch, "fisher_batched_s": t_batched, "fisher_batched_img_s": n / t_batched,
            "fisher_batched_speedup": t_loop / t_batched, "fisher_batched_vs_ours": t_ours / t_batched,
            "fisher_batched_rel_err": fisher_errors(batched, ours)[1], **precisions}


def step_fn(model, batches: list, device: torch.device, **arg_overrides) -> Callable[[], None]:
    """One optimizer step of ``model`` over ``batches`` (micro-batches), as the training loop makes it."""
    batches = [[t.to(device) for t in b] for b in batches]
    model.train()

    def one():
        saved = model.settings
        model.settings = dataclasses.replace(saved, **arg_overrides)  # e.g. virtual_bs_n, vbs_mode
        model.epoch_iteration = 0
        for x, y, nx in batches:
            model.meta_observe(x, y, nx)  # under --precision bf16: autocast, as in training
        model.settings = saved
    one()  # warm-up
    return one


def interleaved(fns: dict[str, Callable[[], Any]], device: torch.device, repeats: int) -> dict[str, float]:
    """Median time of each function, called in turn ``repeats`` times (drifts of the machine hit all alike)."""
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(repeats):
        for key, fn in fns.items():
            times[key].append(timed(fn, device)[0])
    return {k: statistics.median(v) for k, v in times.items()}


def step_flops(model, batch, device: torch.device) -> float:
    from torch.utils.flop_counter import FlopCounterMode
    x, y, nx = (t.to(device) for t in batch)
    with FlopCounterMode(display=False) as counter:
        model.epoch_iteration = 0
        model.meta_observe(x, y, nx)
    return float(counter.get_total_flops())


def run_tasks(argv: list[str], repeats: int, on_task: Optional[Callable] = None) -> tuple[dict, Any, Any]:
    """Begin/end every task of ``argv``'s run; time ``observe`` at the first and the last task."""
    args, dataset, model = build(argv)
    device = model.device
    times: dict[Any, Any] = {"phases": {}, "flops": {}, "begin_task_s": {}}
    phases = PhaseTimer(model, device)
    for t in range(dataset.n_tasks):
        loader, _ = dataset.get_data_loaders()
        if t == 0:
            times["loader_images_per_s"], times["loader_images"] = loader_images_per_s(dataset)
        phases.start_task(t)
        start = time.perf_counter()
        model.meta_begin_task(dataset)
        times["begin_task_s"][t] = time.perf_counter() - start
        times["phases"][t] = dict(phases.seconds[t])
        phases.task = None
        if t in (0, dataset.n_tasks - 1):  # FLOPs of the begin_task phases, re-run on a copy
            times["flops"][t] = phase_flops(model, dataset)
        print(f"[{args.model}] task {t + 1}: begin_task {times['begin_task_s'][t]:.1f} s", file=sys.stderr,
              flush=True)
        if on_task is not None:
            on_task(t, model, dataset)
        if t == 0:  # the step at task 1 is timed later, interleaved with the step at the last task
            batch = next(iter(loader))
            first = model_copy(model)
            first_step = step_fn(first, [batch], device)
            times["images_0"] = len(batch[0])
            micro = [b for _, b in zip(range(VBS_MICRO_BATCHES), loader)]
            if len(micro) >= 2:
                n = len(micro)
                times["vbs"] = interleaved(
                    {mode: step_fn(model, micro, device, virtual_bs_n=n, vbs_mode=mode)
                     for mode in ("accumulate", "batched")}, device, max(repeats, STEP_REPEATS))
                times["vbs_n"] = n
            times["step_flops"] = step_flops(model, batch, device)
            times["host_syncs_per_step"] = count_host_syncs(model, batch, device)
            times["train_images"] = len(dataset.train_dataset(t))
        if t == dataset.n_tasks - 1:
            last_step = step_fn(model, [next(iter(loader))], device)
            both = interleaved({"first": first_step, "last": last_step}, device, max(repeats, STEP_REPEATS))
            times[0], times[t] = both["first"], both["last"]
        model.meta_end_task(dataset)
    phases.remove()
    return times, model, dataset


def benchmark(common: list[str], fisher_images: int, fisher_batch: int, sampled: int, repeats: int,
              project: Optional[dict] = None) -> dict:
    """All figures for one configuration (``common``: dataset/backbone flags of a second_order run).

    ``project``: the run to project the time of (``train_images`` and ``test_images`` per task, ``epochs``);
    default: the benchmark's own run."""
    out: dict[str, Any] = {}
    fisher_batches: dict = {}

    def at_task(t, model, dataset):
        if t in (0, dataset.n_tasks - 1):  # 10 seen classes, then all of them (where the Fisher costs most)
            n = min(fisher_images, len(dataset.train_dataset(t)))
            images = torch.stack([dataset.train_dataset(t)[i][0] for i in range(n)]).to(model.device)
            figures = fisher_figures(model, images, fisher_batch, sampled, model.device)
            suffix = "_task1" if t == 0 else ""
            fisher_batches.update({k + suffix: v for k, v in figures.items()})

    ita, model, dataset = run_tasks(with_overrides(common, ["--model", "ita", "--alpha_ita", "1", *STEP_ARGS]), repeats,
                                    at_task)
    out.update(fisher_batches)
    device = model.device
    out["device"] = accelerator.device_name(device)
    last = dataset.n_tasks - 1
    out.update(ita_step_task1_s=ita[0], ita_step_task10_s=ita[last], ita_step_ratio=ita[last] / ita[0],
               train_img_s=ita["images_0"] / ita[0], train_peak_mb=peak_memory_mb(device))
    if "vbs" in ita:
        out.update(vbs_micro_batches=ita["vbs_n"], vbs_accumulate_s=ita["vbs"]["accumulate"],
                   vbs_batched_s=ita["vbs"]["batched"], vbs_speedup=ita["vbs"]["accumulate"] / ita["vbs"]["batched"])
    if accelerator.is_accelerator(device):
        name = accelerator.device_name(device)
        peak = next((v for k, v in BF16_PEAK_FLOPS.items() if k in name), None)
        out["train_mfu"] = ita["step_flops"] / ita[0] / peak if peak else None
    # evaluation: the merged composition of 10 task modules against the plain backbone
    args = model.args
    x = torch.stack([dataset.test_dataset(0)[i][0] for i in range(min(64, len(dataset.test_dataset(0))))]).to(device)
    model.eval()
    plain = get_backbone(args, dataset.n_classes, dataset.img_size, dataset.in_chans).to(device).eval()
    with torch.no_grad():
        model(x), plain(x)  # warm-up (and the merge)
        merged_times, plain_times = [], []
        for _ in range(max(repeats, STEP_REPEATS)):  # interleaved, so drifts of the machine hit both alike
            merged_times.append(timed(lambda: model(x), device)[0])
            plain_times.append(timed(lambda: plain(x), device)[0])
        t_merged, t_plain = statistics.median(merged_times), statistics.median(plain_times)
    out.update(eval_merged_s=t_merged, eval_plain_s=t_plain, merged_eval_ratio=t_plain / t_merged,
               eval_img_s=len(x) / t_merged, eval_peak_mb=peak_memory_mb(device))
    from torch.utils.flop_counter import FlopCounterMode
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(x)
    eval_flops_per_image = counter.get_total_flops() / len(x)
    steps = -(-ita["train_images"] // ita["images_0"])  # optimizer steps of one epoch of the benchmark's task
    test_images = len(dataset.test_dataset(0))
    out["phase_seconds"], out["phase_flops"] = {}, {}
    for t, tag in ((0, "task1"), (last, f"task{last + 1}")):
        out["phase_seconds"][tag] = {**ita["phases"][t], "training": ita[t] * steps,
                                     "evaluation": (t + 1) * test_images / out["eval_img_s"]}
        out["phase_flops"][tag] = {**ita["flops"][t], "training": ita["step_flops"] * steps,
                                   "evaluation": eval_flops_per_image * (t + 1) * test_images}
        out["phase_seconds"][tag]["begin_task_total"] = ita["begin_task_s"][t]
    out.update(loader_images_per_s=ita["loader_images_per_s"], train_images_per_s=out["train_img_s"],
               host_syncs_per_step=ita["host_syncs_per_step"], bench_train_images=ita["train_images"],
               bench_test_images=test_images, n_tasks=last + 1)
    out["projected_run_s"] = projected_run_seconds(out, project)
    iel, _, _ = run_tasks(with_overrides(common, ["--model", "iel", "--beta_iel", "1", *STEP_ARGS]), repeats)
    out.update(iel_step_task1_s=iel[0], iel_step_task10_s=iel[last], iel_step_ratio=iel[last] / iel[0])
    return out


def print_table(res: dict) -> None:
    rows = []
    for suffix in ("_task1", ""):
        at = f", {res['fisher_classes' + suffix]} classes"
        rows += [(f"Fisher{at}, per-class loop (batch 8)", res["fisher_loop_s" + suffix],
                  res["fisher_loop_img_s" + suffix], ""),
                 (f"Fisher{at}, ours (exact)", res["fisher_ours_s" + suffix], res["fisher_ours_img_s" + suffix],
                  f"x{res['fisher_speedup' + suffix]:.2f} vs loop, max rel. err "
                  f"{res['fisher_max_rel_err' + suffix]:.1e}"),
                 (f"Fisher{at}, ours, {res['fisher_class_batch' + suffix]} classes per vmapped backward",
                  res["fisher_batched_s" + suffix], res["fisher_batched_img_s" + suffix],
                  f"x{res['fisher_batched_speedup' + suffix]:.2f} vs loop, x{res['fisher_batched_vs_ours' + suffix]:.2f} "
                  f"vs one by one, rel. err {res['fisher_batched_rel_err' + suffix]:.1e}"),
                 (f"Fisher{at}, sampled labels (k={res['approx_fisher_samples']})", res["fisher_approx_s" + suffix],
                  res["fisher_approx_img_s" + suffix], f"x{res['approx_fisher_speedup' + suffix]:.2f} vs exact, "
                                                       f"rel. err {res['approx_fisher_rel_err' + suffix]:.3f}")]
    rows += [
            ("ITA step, task 1", res["ita_step_task1_s"], res["train_img_s"], ""),
            ("ITA step, task 10", res["ita_step_task10_s"], None, f"ratio {res['ita_step_ratio']:.2f}"),
            *([(f"ITA step, {res['vbs_micro_batches']} micro-batches accumulated", res["vbs_accumulate_s"], None, ""),
               (f"ITA step, {res['vbs_micro_batches']} micro-batches as one batch", res["vbs_batched_s"], None,
                f"x{res['vbs_speedup']:.2f} vs accumulated")] if "vbs_speedup" in res else []),
            ("IEL step, task 1", res["iel_step_task1_s"], None, ""),
            ("IEL step, task 10", res["iel_step_task10_s"], None, f"ratio {res['iel_step_ratio']:.2f}"),
            ("eval, plain backbone", res["eval_plain_s"], None, ""),
            ("eval, merged 10-task model", res["eval_merged_s"], res["eval_img_s"],
             f"plain/merged {res['merged_eval_ratio']:.2f}")]
    print(f"device: {res['device']}   Fisher on {res['fisher_images']} images; the headline keys (no suffix) are "
          f"at the last task")
    print(f"{'measurement':50s} {'seconds':>9s} {'images/s':>9s}  notes")
    for name, secs, ips, note in rows:
        print(f"{name:50s} {secs:9.4f} {'' if ips is None else f'{ips:9.1f}':>9s}  {note}")
    for tag, secs in res["phase_seconds"].items():
        flops = res["phase_flops"][tag]
        print(f"phases at {tag}: " + ", ".join(f"{k} {v:.2f} s" + (f" / {flops[k] / 1e9:.1f} GFLOP" if k in flops else "")
                                            for k, v in secs.items()))
    print(f"Fisher GEMM precision: tf32 x{res['fisher_tf32_speedup']:.2f} (rel. err {res['fisher_rel_err_tf32']:.1e}), "
          f"bf16 x{res['fisher_bf16_speedup']:.2f} (rel. err {res['fisher_rel_err_bf16']:.1e}) vs fp32")
    print(f"loader {res['loader_images_per_s']:.0f} img/s, training {res['train_images_per_s']:.0f} img/s, "
          f"host syncs per step {res['host_syncs_per_step']:.3f}, projected run {res['projected_run_s']:.0f} s")
    print(f"peak memory (MB): Fisher loop {res['fisher_loop_peak_mb']:.0f}, ours {res['fisher_ours_peak_mb']:.0f}, "
          f"training {res['train_peak_mb']:.0f}, eval {res['eval_peak_mb']:.0f}"
          + (f"; train MFU {res['train_mfu']:.3f}" if res.get("train_mfu") is not None else ""))


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default="../shared/data/cifar100_mini.npz", help="CIFAR-100 mini npz")
    parser.add_argument("--quick", action="store_true", help="32 px, 64 Fisher images (a few minutes on 2 cores)")
    parser.add_argument("--img_size", type=int, default=None, help="image size (default 64; 32 with --quick)")
    parser.add_argument("--device", default=None, help="cpu / cuda (default: cuda when available)")
    parser.add_argument("--out", default=None, help="also write the figures as JSON to this file")
    parser.add_argument("--precision", default="fp32", choices=["fp32", "bf16"], help="bf16: autocast (GPU)")
    parser.add_argument("--project_train_images", type=int, default=None,
                        help="training images per task of the projected run (default: the benchmark's; 5000 for "
                             "seq-cifar100-224)")
    parser.add_argument("--project_test_images", type=int, default=None, help="test images per task (1000 there)")
    parser.add_argument("--project_epochs", type=int, default=1, help="epochs per task of the projected run")
    parser.add_argument("--n_tasks", type=int, default=10)
    parser.add_argument("--backbone", default="efficientnet_lite0",
                        help="backbone (vit for ViT-B/16: pass --pretrained_path or run offline on random weights)")
    opts = parser.parse_args(argv)
    size = opts.img_size or (32 if opts.quick else 64)
    common = ["--dataset", "seq-custom", "--data_path", opts.data, "--n_tasks", str(opts.n_tasks), "--img_size", str(size),
              "--normalization", "half", "--backbone", opts.backbone, "--batch_size", "16",
              "--base_path", "data/benchmark", "--precision", opts.precision]
    if opts.device:
        common += ["--device", opts.device]
    if opts.quick:  # the begin_task phases with the top-1 Fisher (the exact one is timed on its own images)
        common += ["--fisher_mc_classes", "1"]
    res = benchmark(common, fisher_images=64 if opts.quick else 128, fisher_batch=64 if opts.quick else 128,
                    sampled=1, repeats=3 if opts.quick else 5,
                    project={"train_images": opts.project_train_images, "test_images": opts.project_test_images,
                             "epochs": opts.project_epochs})
    res["command"] = "python benchmarks/speed.py " + " ".join(argv if argv is not None else sys.argv[1:])
    print_table(res)
    if opts.out:
        write_json(opts.out, res)
    return 0


if __name__ == "__main__":
    from utils.errors import UserError, one_line
    try:
        sys.exit(main())
    except UserError as exc:  # bad input or a device this machine lacks: one line, its exit code
        print(f"error: {one_line(exc)}", file=sys.stderr)
        sys.exit(exc.exit_code)
