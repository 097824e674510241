"""The malloc settings every run applies (``utils/malloc_policy.py``) against glibc's defaults, timed in one run.

    python -m benchmarks.malloc_env [--images 128] [--size 96] [--repeats 4]

Runs the same work in two child processes, one with glibc's default malloc and one that first calls
``malloc_policy.keep_freed_memory()`` as ``main.py`` does, one thread
each: forward passes of EfficientNet-Lite0 (random weights; the demo's backbone) over ``--images`` images of
``--size`` px, as in the demo's evaluations and feature passes, and one epoch of the alignment's GMM noise at 100
classes. Prints each child's CPU seconds (user + system: the kernel's share is what the settings remove), page
faults and peak memory, the ratios, and whether both computed the same logits bit for bit.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import resource
import subprocess
import sys
import time
from typing import Optional

from utils.malloc_policy import keep_freed_memory, user_settings


def child(images: int, size: int, repeats: int, policy: bool) -> dict[str, float | str]:
    """The timed work in this process (after ``keep_freed_memory()`` with ``policy``): forward passes and GMM noise;
    CPU seconds, faults, peak RSS, logits hash."""
    if policy and not keep_freed_memory():
        raise RuntimeError("the malloc settings could not be applied (not glibc)")
    import timm
    import torch
    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = timm.create_model("efficientnet_lite0", pretrained=False).eval()
    x = torch.randn(images, 3, size, size)
    digest = hashlib.sha256()
    with torch.no_grad():
        model(x)  # warm-up
        before = resource.getrusage(resource.RUSAGE_SELF)
        start = time.process_time()
        for _ in range(repeats):
            digest.update(model(x).numpy().tobytes())
        forward = time.process_time() - start
        start = time.process_time()
        for _ in range(repeats):
            torch.randn(100, 256, 1280).mul_(0.5).add_(1.0)  # an epoch of the alignment's noise, scaled
        noise = time.process_time() - start
    after = resource.getrusage(resource.RUSAGE_SELF)
    return {"forward": forward, "noise": noise, "system": after.ru_stime - before.ru_stime,
            "faults": after.ru_minflt - before.ru_minflt, "max_rss_mb": after.ru_maxrss / 1024,
            "logits": digest.hexdigest()}


def measure(env: dict[str, str], opts: argparse.Namespace, policy: bool) -> dict[str, float | str]:
    cmd = [sys.executable, "-m", "benchmarks.malloc_env", "--child", "--images", str(opts.images), "--size",
           str(opts.size), "--repeats", str(opts.repeats), *(["--policy"] if policy else [])]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=128, help="images per forward pass (the demo's eval batch)")
    parser.add_argument("--size", type=int, default=96)
    parser.add_argument("--repeats", type=int, default=4)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--policy", action="store_true", help=argparse.SUPPRESS)
    opts = parser.parse_args(argv)
    if opts.child:
        print(json.dumps(child(opts.images, opts.size, opts.repeats, opts.policy)))
        return 0
    base = {k: v for k, v in os.environ.items() if not user_settings({k: v})} | {"OMP_NUM_THREADS": "1"}
    runs = {"glibc defaults": measure(base, opts, False), "keep_freed_memory()": measure(base, opts, True)}
    print(f"{opts.repeats} forward passes of {opts.images} images at {opts.size} px (EfficientNet-Lite0) and "
          f"{opts.repeats} epochs of GMM noise (100 classes x 256 x 1280), one thread; load average "
          f"{os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
    print(f"  {'':24s} {'forward CPU s':>14s} {'noise CPU s':>12s} {'system s':>9s} {'page faults':>12s} "
          f"{'peak MB':>8s}")
    for label, r in runs.items():
        print(f"  {label:24s} {r['forward']:14.2f} {r['noise']:12.2f} {r['system']:9.2f} {r['faults']:12.0f} "
              f"{r['max_rss_mb']:8.0f}")
    old, new = runs.values()
    print(f"  ratios defaults/kept: forward {old['forward'] / new['forward']:.2f}x, noise "
          f"{old['noise'] / new['noise']:.2f}x; the same logits bit for bit: {old['logits'] == new['logits']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
