"""Time Mammoth's four ``second_order`` test lines (``--debug_mode 1``) end to end with a full-size ViT-B/16.

    python -m benchmarks.debug_lines [--lines 1,2,3,4] [--out FILE]

Nothing is downloaded: CIFAR-100 is written in its official on-disk layout from ``../shared/data/cifar100_mini.npz``,
CropDisease as ``train/<class>/`` + ``test/<class>/`` folders of 256-px images (35 classes), and random
``vit_base_patch16_224`` weights (full size) into a temporary Hugging Face cache under both timm names that
``--pretrain_type`` resolves. Each line runs as its own ``python main.py`` process (imports and weight loading
included); the JSON has each line's wall-clock and CPU seconds, its final accuracies and the machine's load average.
On a busy machine the wall-clock is inflated; with ``OMP_NUM_THREADS=1`` the CPU seconds are what the line takes on
one idle core, an upper bound of its wall-clock on 2 idle cores.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from typing import Optional

import numpy as np

from benchmarks.gpu_check import HUB_NAME, write_cifar100, write_hub_weights

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LINES = [  # ../shared/docs/mammoth-test-lines.txt, lines 1-4
    "--model second_order --dataset seq-cifar100-224 --model_config best --n_epochs 2 --batch_size 4 --non_verbose 1 "
    "--num_workers 0 --seed 0 --debug_mode 1",
    "--model second_order --dataset seq-cropdisease --model_config best --n_epochs 2 --batch_size 4 --non_verbose 1 "
    "--num_workers 0 --seed 0 --debug_mode 1",
    "--model second_order --dataset seq-cifar100-224 --lr 0.001 --n_epochs 2 --batch_size 4 --use_iel true "
    "--dataset_config second_order_ta --non_verbose 1 --num_workers 0 --seed 0 --debug_mode 1",
    "--model second_order --dataset seq-cropdisease --lr 0.001 --n_epochs 2 --batch_size 4 --use_iel true "
    "--dataset_config second_order_ta --non_verbose 1 --num_workers 0 --seed 0 --debug_mode 1",
]
OTHER_HUB_NAME = "timm/vit_base_patch16_224.augreg2_in21k_ft_in1k"  # --pretrain_type in21k-ft-in1k


def write_cropdisease(base_path: str, per_class: int = 2, size: int = 256) -> None:
    """35 class folders of random RGB images under ``<base_path>/cropdisease/{train,test}/``."""
    from PIL import Image
    rng = np.random.RandomState(0)
    for split in ("train", "test"):
        for c in range(35):
            folder = os.path.join(base_path, "cropdisease", split, f"crop_{c:02d}")
            os.makedirs(folder, exist_ok=True)
            for i in range(per_class):
                pixels = rng.randint(0, 256, (size, size, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(os.path.join(folder, f"{i}.jpg"))


def write_world(work: str, npz: str) -> dict[str, str]:
    """Data and weights under ``work``; returns the environment the lines run with."""
    base = os.path.join(work, "data")
    write_cifar100(npz, base)
    write_cropdisease(base)
    hf_home = os.path.join(work, "hf")
    write_hub_weights(hf_home, None)
    hub = os.path.join(hf_home, "hub")
    shutil.copytree(os.path.join(hub, "models--" + HUB_NAME.replace("/", "--")),
                    os.path.join(hub, "models--" + OTHER_HUB_NAME.replace("/", "--")))
    return {**os.environ, "HF_HOME": hf_home, "HF_HUB_OFFLINE": "1", "CL_NO_DOWNLOAD": "1"}


def time_line(line: str, work: str, env: dict[str, str], index: int) -> dict:
    results = os.path.join(work, f"line{index}.json")
    argv = [sys.executable, os.path.join(ROOT, "main.py"), *line.split(), "--base_path", os.path.join(work, "data"),
            "--checkpoint_path", os.path.join(work, "ckpt"), "--plots", "0", "--results_file", results]
    load_before = os.getloadavg()[0]
    cpu_before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    proc = subprocess.run(argv, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    cpu_after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (cpu_after.ru_utime - cpu_before.ru_utime) + (cpu_after.ru_stime - cpu_before.ru_stime)
    row = {"line": index, "command": line, "seconds": round(seconds, 1), "cpu_seconds": round(cpu, 1),
           "exit_code": proc.returncode,
           "load_1min_before": round(load_before, 2), "load_1min_after": round(os.getloadavg()[0], 2)}
    if proc.returncode == 0:
        with open(results) as fh:
            saved = json.load(fh)
        row.update(n_tasks=saved["n_tasks"], final_class_il=saved["final_class_il"], complete=saved["complete"])
    else:
        row["error"] = proc.stderr.strip().splitlines()[-1:] or [""]
    return row


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lines", default="1,2,3,4", help="which of the four lines (1-based, comma-separated)")
    parser.add_argument("--data", default=os.path.join(os.path.dirname(ROOT), "shared", "data", "cifar100_mini.npz"))
    parser.add_argument("--out", default=None, help="write the JSON here too")
    args = parser.parse_args(argv)
    wanted = [int(v) for v in args.lines.split(",")]
    if not os.path.isfile(args.data):
        print(f"error: {args.data} not found; pass --data PATH to cifar100_mini.npz", file=sys.stderr)
        return 2
    if any(not 1 <= i <= len(LINES) for i in wanted):
        print(f"error: --lines takes numbers 1..{len(LINES)}", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="debug-lines-") as work:
        env = write_world(work, args.data)
        rows = []
        for i in wanted:
            rows.append(time_line(LINES[i - 1], work, env, i))
            print(json.dumps(rows[-1]), flush=True)
    report = {"date": time.strftime("%Y-%m-%d"), "cpus": os.cpu_count(), "omp_num_threads": env.get("OMP_NUM_THREADS"),
              "lines": rows}
    if args.out:
        tmp = args.out + ".tmp"
        with open(tmp, "w") as fh:
            json.dump(report, fh, indent=1)
        os.replace(tmp, args.out)
    return 0 if all(r["exit_code"] == 0 for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
