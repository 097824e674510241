"""The exact Fisher pass of this project against the reference implementation's, side by side.

    python -m benchmarks.fisher_reference [--mammoth DIR|TAR.GZ] [--embed_dim 192] [--depth 12] [--img_size 224]
                                          [--classes 10] [--images 32] [--repeats 2] [--out FILE.json]

The reference is the authors' code in the Mammoth snapshot (``models/lora_prototype_utils/lora_prompt.py``,
``Model.__compute_fisher_hooks``: full backward hooks, one backward per class down to the image, per-sample
products ``(g^T x)^2`` summed over the batch), run on its own ViT (``backbone/vit.py`` with ``use_lora=True``) at
its published batch (``--ref_batch``, 8 = the published micro-batch). This project's pass is
``models.second_order_utils.fisher.network_fisher`` on a timm ViT with the adapters injected, at its CPU
statistics batch (``--our_batch``), and again as ``ours_blas``: the same pass with torch's own fp32 products instead
of the oneDNN ones it routes them to on a CPU (``utils/onednn_products.py``), which separates what the backend gives
from what the pass does less of. All load the same random ViT weights (timm layout) and the same images, each side
runs in its own Python process with one thread, and the three alternate ``--repeats`` times; the script checks that
the Fisher of every adapted weight agrees (relative error) and prints the seconds of each side (each first runs
one batch untimed, whose one-time costs, such as oneDNN generating its kernels, a run of thousands of images
amortises), the ratio
(reference / ours, best of the repeats) and the FLOPs of each side (``torch.utils.flop_counter``, counted in the
same processes on one batch, scaled to the images).
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tarfile
import tempfile
import time
import types
from typing import Any, Optional

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import torch  # noqa: E402

DEFAULT_MAMMOTH = os.path.join(ROOT, "..", "shared", "mammoth", "mammoth-e75a491.tar.gz")
TARGETS = {"qkv": "attn.qkv", "proj": "attn.proj", "fc1": "mlp.fc1", "fc2": "mlp.fc2"}
SIDES = ("reference", "ours", "ours_blas")  # ours_blas: this project's pass with torch's own fp32 products


def make_inputs(folder: str, opts: argparse.Namespace) -> None:
    """A random timm ViT's weights (head over ``--classes``) and ``--images`` random images, saved in ``folder``."""
    from timm.models.vision_transformer import VisionTransformer
    torch.manual_seed(opts.seed)
    net = VisionTransformer(img_size=opts.img_size, patch_size=16, embed_dim=opts.embed_dim, depth=opts.depth,
                            num_heads=opts.num_heads, num_classes=opts.classes)
    with torch.no_grad():
        net.head.weight.mul_(20.0)  # a confident, non-uniform prediction, as a pre-tuned head gives
    torch.save(net.state_dict(), os.path.join(folder, "weights.pt"))
    torch.save(torch.randn(opts.images, 3, opts.img_size, opts.img_size), os.path.join(folder, "images.pt"))


SQUARING = ("pow", "square_", "pow_", "mul_", "linalg_vector_norm")  # the square-and-sum passes' first kernel


# fused attention kernels without a FLOP rule: (index of the query argument, FLOPs per query element per key)
FUSED_ATTENTION = {"_scaled_dot_product_flash_attention_for_cpu": (0, 4),
                   "_scaled_dot_product_flash_attention_for_cpu_backward": (1, 10)}


def count_flops(fn: Any) -> tuple[int, int, float]:
    """Matmul FLOPs, kernels (aten operations that are not views) and bytes written by the per-sample
    square-and-sum passes (elements of the 3-d tensors squared) of ``fn()``. torch's counter has no rule for the
    CPU's fused attention kernels: their products are added here (forward q k^T and p v; backward 5 products,
    q k^T recomputed), so the two sides count the same attention arithmetic whichever kernel runs it."""
    from torch.utils._python_dispatch import TorchDispatchMode
    from torch.utils.flop_counter import FlopCounterMode

    class Kernels(TorchDispatchMode):
        count, squared, attention = 0, 0, 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            if not getattr(func, "is_view", False):
                Kernels.count += 1
                name = func.__name__.split(".")[0]
                if name in SQUARING and args[0].dim() == 3:
                    Kernels.squared += args[0].numel()
                elif name in FUSED_ATTENTION:
                    q, k = args[FUSED_ATTENTION[name][0]], args[FUSED_ATTENTION[name][0] + 1]
                    Kernels.attention += FUSED_ATTENTION[name][1] * q.numel() * k.shape[-2]
            return out
    with FlopCounterMode(display=False) as counter, Kernels():
        fn()
    return int(counter.get_total_flops()) + Kernels.attention, Kernels.count, float(Kernels.squared)


def project_gpu(flops: float, kernels: float, squared: float, precision: str, square_bytes: int,
                gpu: str = "h100", launch_s: float = 5e-6) -> float:
    """Seconds on ``gpu``: matmul FLOPs at ``phases.UTILISATION`` of the precision's peak, plus the square-and-sum
    pass (``square_bytes`` per squared element) at ``phases.BANDWIDTH_UTILISATION`` of the bandwidth, plus
    ``launch_s`` per kernel (nothing overlapped: an upper bound for both sides)."""
    from benchmarks.phases import BANDWIDTH_UTILISATION, GPUS, rate
    return (flops / rate(gpu, precision) + squared * square_bytes / (BANDWIDTH_UTILISATION *
            GPUS[gpu]["bytes_per_s"]) + kernels * launch_s)


def project_vit_b(images: int, classes: int, kernels: dict[str, float], depth: int, ours_precision: str
                  ) -> dict[str, float]:
    """H100 seconds of both sides at ViT-B/16 (768 wide, 12 blocks, 197 tokens): FLOPs from
    ``phases.vit_flops`` (the reference: ``classes`` backward passes through every block and the patch embedding,
    its fused attention backward recomputing q k^T; ours: ``classes - 1`` passes of ``fisher_direction`` and, as
    an upper bound, the full forward), the per-sample products squared (every adapted layer; ours: not the last
    block's proj, fc1 and fc2), and this run's kernel counts scaled from ``depth`` to 12 blocks."""
    from benchmarks.phases import vit_flops
    d, blocks = 768, 12
    v = vit_flops(d, blocks, 197, 196)
    embed_grad = 2 * 196 * (3 * 16 * 16) * d
    ref = images * (v["forward"] + classes * (v["fisher_class"] + embed_grad + v["attention"] / 2))
    ours = images * (v["forward"] + (classes - 1) * v["fisher_direction"])
    squared = {"reference": images * classes * blocks * 12 * d ** 2,
               "ours": images * (classes - 1) * ((blocks - 1) * 12 + 3) * d ** 2}
    scale = blocks / depth
    return {"reference": project_gpu(ref, kernels["reference"] * scale, squared["reference"], "fp32", 16),
            "ours": project_gpu(ours, kernels["ours"] * scale, squared["ours"], ours_precision, ours_square_bytes())}


def ours_square_bytes() -> int:
    """Bytes per squared per-sample element of this project's square-and-sum on CUDA: none with the fused kernel
    (the products stay on chip; its operand reads are a GEMM's, not counted for any GEMM), else the one-read
    ``norm`` form's (the GEMM's write and one read)."""
    from benchmarks.phases import SQUARE_SUM_BYTES, cuda_square_sum_form
    return 0 if cuda_square_sum_form() == "fused" else SQUARE_SUM_BYTES


def timed(fn: Any) -> tuple[float, float, Any]:
    """Wall seconds, CPU seconds of this (single-threaded) process, and the result of ``fn()``. The CPU seconds
    are what the ratio uses: on a shared machine other jobs stretch the wall time, not the CPU time."""
    wall, cpu = time.perf_counter(), time.process_time()
    out = fn()
    return time.perf_counter() - wall, time.process_time() - cpu, out


def run_ours(folder: str, opts: argparse.Namespace) -> dict[str, Any]:
    from timm.models.vision_transformer import VisionTransformer

    from utils import malloc_policy, onednn_products
    malloc_policy.keep_freed_memory()  # as main.py does at the start of every run
    if opts.side == "ours_blas":  # the same pass with torch's own fp32 products (no oneDNN routing)
        onednn_products.available = lambda: False

    from models.second_order_utils import fisher, fisher_scores
    from models.second_order_utils.fisher import network_fisher
    from models.second_order_utils.modules import inject_adapters
    net = VisionTransformer(img_size=opts.img_size, patch_size=16, embed_dim=opts.embed_dim, depth=opts.depth,
                            num_heads=opts.num_heads, num_classes=opts.classes)
    net.load_state_dict(torch.load(os.path.join(folder, "weights.pt"), weights_only=True))
    net.eval().requires_grad_(False)
    layers = inject_adapters(net, "lora", 16)
    images = torch.load(os.path.join(folder, "images.pt"), weights_only=True)

    def once(x: torch.Tensor, class_batch: int = 1) -> dict[str, torch.Tensor]:
        return network_fisher(net, layers, list(x.split(opts.our_batch)), class_batch=class_batch)[0]
    once(images[:min(opts.our_batch, fisher_scores.CPU_FISHER_ROWS)])  # untimed: one forward's one-time costs
    seconds, cpu_seconds, sums = timed(lambda: once(images))
    counts = gpu_counts = None
    if opts.count_flops:
        scale = len(images) / min(len(images), opts.our_batch)
        counts = [c * scale for c in count_flops(lambda: once(images[:opts.our_batch]))]
        # as on CUDA: the class backward passes vmapped in chunks (fisher.auto_class_batch), the "norm" square-sum,
        # the whole batch in one forward (no fisher.cpu_chunks)
        saved, saved_rows = dict(fisher.SQUARE_SUM_FORM), fisher_scores.CPU_FISHER_ROWS
        fisher.SQUARE_SUM_FORM["cpu"] = fisher.ACCELERATOR_SQUARE_SUM_FORM
        fisher_scores.CPU_FISHER_ROWS = opts.our_batch
        try:
            chunk = max(1, fisher.CLASS_BATCH_ROWS // min(len(images), opts.our_batch))  # auto on an accelerator
            gpu_counts = [c * scale for c in count_flops(lambda: once(images[:opts.our_batch], chunk))]
        finally:
            fisher.SQUARE_SUM_FORM.update(saved)
            fisher_scores.CPU_FISHER_ROWS = saved_rows
    fisher = {f"{short}_{name.split('.')[1]}": v for name, v in sums.items()
              for short, long in TARGETS.items() if name.endswith(long)}
    return {"seconds": seconds, "cpu_seconds": cpu_seconds, "counts": counts, "gpu_counts": gpu_counts,
            "fisher": fisher}


def run_reference(folder: str, opts: argparse.Namespace) -> dict[str, Any]:
    sys.path.insert(0, opts.mammoth)
    os.chdir(opts.mammoth)
    for package in ("models", "datasets"):  # the packages without their __init__ (which imports every dataset)
        module = types.ModuleType(package)
        module.__path__ = [os.path.join(opts.mammoth, package)]
        sys.modules[package] = module
    from models.lora_prototype_utils.lora_prompt import Model
    from models.lora_prototype_utils.lora_vit import VisionTransformer
    vit = VisionTransformer(embed_dim=opts.embed_dim, depth=opts.depth, num_heads=opts.num_heads,
                            num_classes=opts.classes, img_size=opts.img_size)
    saved = torch.load(os.path.join(folder, "weights.pt"), weights_only=True)
    state = {k.replace("head.", "head.heads.0."): v for k, v in saved.items()}
    vit.load_state_dict(state)  # its head is an incremental classifier: one task's head of --classes classes
    vit.eval()
    model = Model.__new__(Model)
    torch.nn.Module.__init__(model)
    model.vit, model.device, model.fisher_mc_classes = vit, torch.device("cpu"), 100  # N_CLASSES: all seen classes
    names = {f"blocks.{i}.{long}.weight": f"{short}_{i}" for i in range(opts.depth) for short, long in TARGETS.items()}
    params = {n: p for n, p in vit.named_parameters() if n in names}
    cls_names = {"head.heads.0.weight": "weight", "head.heads.0.bias": "bias"}
    cls_params = {n: p for n, p in vit.named_parameters() if n in cls_names}
    images = torch.load(os.path.join(folder, "images.pt"), weights_only=True)

    class Loader:
        def __init__(self, x: torch.Tensor):
            self.train_loader = [(b, None, None) for b in x.split(opts.ref_batch)]

    def once(x: torch.Tensor) -> dict[str, torch.Tensor]:
        return model._Model__compute_fisher_hooks(params, names, cls_params, cls_names, Loader(x))[0]
    once(images[:opts.ref_batch])  # untimed, as on our side: one batch's one-time costs
    seconds, cpu_seconds, fisher = timed(lambda: once(images))
    counts = [c * len(images) / min(len(images), opts.ref_batch)
              for c in count_flops(lambda: once(images[:opts.ref_batch]))] if opts.count_flops else None
    return {"seconds": seconds, "cpu_seconds": cpu_seconds, "counts": counts, "gpu_counts": counts,
            "fisher": {k: v.detach() for k, v in fisher.items()}}


def extract(path: str) -> str:
    """The Mammoth source folder (a .tar.gz is extracted to a temporary folder first)."""
    if os.path.isdir(path):
        return path
    folder = tempfile.mkdtemp(prefix="mammoth_")
    with tarfile.open(path) as tar:
        tar.extractall(folder, filter="data")
    return folder


def side(name: str, folder: str, opts: argparse.Namespace, argv: list[str]) -> dict[str, Any]:
    """One side in its own single-threaded process; its Fisher saved in ``folder``."""
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    out = os.path.join(folder, f"{name}.pt")
    subprocess.run([sys.executable, "-m", "benchmarks.fisher_reference", "--side", name, "--workdir", folder,
                    "--mammoth", opts.mammoth, *argv], check=True, cwd=ROOT, env=env)
    return torch.load(out, weights_only=True)


def compare(ours: dict[str, torch.Tensor], ref: dict[str, torch.Tensor]) -> float:
    if sorted(ours) != sorted(ref):
        raise RuntimeError(f"different layers: {sorted(ours)[:4]}... vs {sorted(ref)[:4]}...")
    return max(float((ours[k] - ref[k]).norm() / ref[k].norm()) for k in ref)


def parse(argv: Optional[list[str]]) -> tuple[argparse.Namespace, list[str]]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mammoth", default=DEFAULT_MAMMOTH, help="Mammoth source folder or its .tar.gz")
    parser.add_argument("--embed_dim", type=int, default=192, help="ViT width (ViT-B/16: 768)")
    parser.add_argument("--depth", type=int, default=12)
    parser.add_argument("--num_heads", type=int, default=3)
    parser.add_argument("--img_size", type=int, default=224, help="224 px: 197 tokens, as ViT-B/16")
    parser.add_argument("--classes", type=int, default=10, help="seen classes (the published line: 10 per task)")
    parser.add_argument("--images", type=int, default=32)
    parser.add_argument("--ref_batch", type=int, default=8, help="the reference's batch (published micro-batch 8)")
    parser.add_argument("--our_batch", type=int, default=64, help="this project's batch (its CPU default)")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=None)
    parser.add_argument("--side", choices=SIDES, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--workdir", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--count_flops", action="store_true", help=argparse.SUPPRESS)
    opts = parser.parse_args(argv)
    passed = [a for a in (argv if argv is not None else sys.argv[1:])]
    return opts, passed


def main(argv: Optional[list[str]] = None) -> int:
    opts, passed = parse(argv)
    torch.set_num_threads(1)
    if opts.side:  # a child process
        result = (run_reference if opts.side == "reference" else run_ours)(opts.workdir, opts)
        torch.save(result, os.path.join(opts.workdir, f"{opts.side}.pt"))
        return 0
    opts.mammoth = os.path.abspath(extract(opts.mammoth))
    forward = [a for i, a in enumerate(passed) if a not in ("--mammoth", "--out") and
               (i == 0 or passed[i - 1] not in ("--mammoth", "--out"))]
    with tempfile.TemporaryDirectory(prefix="fisher_reference_") as folder:
        make_inputs(folder, opts)
        times: dict[str, list[float]] = {name: [] for name in SIDES}
        cpu: dict[str, list[float]] = {name: [] for name in SIDES}
        results: dict[str, dict[str, Any]] = {}
        flops: dict[str, list[float]] = {}  # side -> [matmul FLOPs, kernels, squared elements], as timed
        gpu_flops: dict[str, list[float]] = {}  # the same, configured as on CUDA
        for i in range(opts.repeats):  # alternating, so both sides see the same machine load
            for name in SIDES:
                count = not i and name != "ours_blas"  # the BLAS side runs the same operations as ours
                results[name] = side(name, folder, opts, [*forward, "--count_flops"] if count else forward)
                times[name].append(results[name]["seconds"])
                cpu[name].append(results[name]["cpu_seconds"])
                flops.setdefault(name, results[name]["counts"])
                gpu_flops.setdefault(name, results[name]["gpu_counts"])
    err = compare(results["ours"]["fisher"], results["reference"]["fisher"])
    blas_err = compare(results["ours_blas"]["fisher"], results["ours"]["fisher"])
    best = {k: min(v) for k, v in cpu.items()}
    ratio, blas_ratio = best["reference"] / best["ours"], best["reference"] / best["ours_blas"]
    pairs = [r / o for r, o in zip(cpu["reference"], cpu["ours"])]
    wall_ratio = min(times["reference"]) / min(times["ours"])
    tokens = (opts.img_size // 16) ** 2 + 1
    print(f"ViT width {opts.embed_dim}, {opts.depth} blocks, {tokens} tokens, {opts.classes} classes, "
          f"{opts.images} images; reference batch {opts.ref_batch}, ours {opts.our_batch}; one thread each; "
          f"load average {os.getloadavg()[0]:.1f}")
    for name in SIDES:
        counted = (f"  {flops[name][0] / 1e9:7.1f} GFLOP {flops[name][1]:6.0f} kernels "
                   f"({gpu_flops[name][1]:.0f} as on CUDA)") if flops.get(name) else "  (ours with torch's BLAS)"
        print(f"{name:9s} CPU {' '.join(f'{t:7.2f}' for t in cpu[name])} s  best {best[name]:7.2f} s  "
              f"(wall {' '.join(f'{t:.2f}' for t in times[name])}){counted}")
    print(f"reference / ours: {ratio:.2f}x CPU time best/best (pairs {' '.join(f'{r:.2f}' for r in pairs)}; "
          f"wall best/best {wall_ratio:.2f}x)   (max rel. err of the Fisher {err:.1e})")
    print(f"reference / ours_blas: {blas_ratio:.2f}x; ours_blas / ours: {best['ours_blas'] / best['ours']:.2f}x (the "
          f"fp32 products through oneDNN; Fisher equal within {blas_err:.1e})")
    from models.second_order_utils.flags import default_fisher_precision
    ours_precision = default_fisher_precision("cuda")
    # the reference: bmm write, pow read + write, sum read (16 bytes); ours: the CUDA form of fisher.square_sum
    projected = {"reference": project_gpu(*gpu_flops["reference"], "fp32", 16),
                 "ours": project_gpu(*gpu_flops["ours"], ours_precision, ours_square_bytes())}
    print(f"projected on an H100 (reference fp32, ours {ours_precision} = the CUDA default): reference "
          f"{projected['reference'] * 1e3:.2f} ms, ours {projected['ours'] * 1e3:.2f} ms, "
          f"ratio {projected['reference'] / projected['ours']:.2f}x")
    vit_b = project_vit_b(opts.images, opts.classes, {k: v[1] for k, v in gpu_flops.items() if v}, opts.depth,
                          ours_precision)
    print(f"projected at ViT-B/16 size (768 wide, 12 blocks; FLOPs counted from the shapes): reference "
          f"{vit_b['reference'] * 1e3:.1f} ms, ours {vit_b['ours'] * 1e3:.1f} ms, "
          f"ratio {vit_b['reference'] / vit_b['ours']:.2f}x")
    if opts.out:
        from utils.io import write_json  # here: the reference's process imports Mammoth's own utils package
        write_json(opts.out, {
            "settings": {k: v for k, v in vars(opts).items() if k not in ("side", "workdir")}, "tokens": tokens,
            "seconds": times, "cpu_seconds": cpu, "best_seconds": best, "ratio": ratio, "pair_ratios": pairs,
            "wall_ratio": wall_ratio, "ratio_blas": blas_ratio, "max_rel_err_blas": blas_err,
            "load_average": list(os.getloadavg()), "flops_kernels_squared": flops,
            "gpu_flops_kernels_squared": gpu_flops, "max_rel_err": err, "projected_h100_seconds": projected,
            "projected_h100_seconds_vit_b": vit_b, "ours_gpu_precision": ours_precision})
    return 0 if max(err, blas_err) < 1e-4 else 1


if __name__ == "__main__":
    sys.exit(main())
