"""Generated malformed inputs of the kinds beyond npz files, image folders and YAML values (used by
tests/test_fuzz_inputs.py): incomplete test sets, backbone settings out of range, configuration files that
cannot be read, checkpoints with malformed stored arguments, data paths that are not regular files, devices
this machine lacks, corrupt caches and a flag given under two of its names.

Each ``<family>_case(rng, index, tmp, monkeypatch)`` writes what it needs under ``tmp`` and returns the
command line and a description; ``index`` picks the kind (so a few variants cover every kind), ``rng``
everything else. Every case is certainly invalid.
"""
from __future__ import annotations

import argparse
import os
import pickle
import random
import socket
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import yaml

import app.config
from tests.bad_inputs import write_image_folder

TINY_VIT = ("--backbone", "vit_tiny", "--embed_dim", "32", "--depth", "1", "--num_heads", "2")
Case = tuple[list[str], str]


def run_args(tmp: Path, data: str, *extra: str, backbone: tuple[str, ...] = TINY_VIT) -> list[str]:
    """A seconds-long seq-custom run on ``data`` writing under ``tmp/work``."""
    work = tmp / "work"
    return ["--model", "sgd", "--dataset", "seq-custom", "--data_path", data, "--n_epochs", "1", "--batch_size", "4",
            "--lr", "0.05", "--seed", "0", "--non_verbose", "--plots", "0", *backbone,
            "--base_path", str(work / "data"), "--checkpoint_path", str(work / "ckpt"),
            "--results_file", str(work / "res" / "r.json"), *extra]


def write_npz(rng: random.Random, path: Path, n_classes: int, train_per_class: Any = None,
              test_classes: Any = None, size: int = 0) -> str:
    """A uint8 NHWC npz with ``n_classes`` classes: ``train_per_class`` training images per class (a list, or
    2-4 each) and one test image of each class in ``test_classes`` (default: all)."""
    npr = np.random.RandomState(rng.randrange(2 ** 31))
    size = size or rng.randint(4, 10)
    per = train_per_class or [rng.randint(2, 4) for _ in range(n_classes)]
    y_train = np.repeat(np.arange(n_classes), per)
    y_test = np.asarray(sorted(range(n_classes) if test_classes is None else test_classes), dtype=np.int64)
    np.savez(path, x_train=npr.randint(0, 256, (len(y_train), size, size, 3)).astype(np.uint8), y_train=y_train,
             x_test=npr.randint(0, 256, (len(y_test), size, size, 3)).astype(np.uint8), y_test=y_test)
    return str(path)


# ----- incomplete test sets --------------------------------------------------------------------------------------
def testset_case(rng: random.Random, index: int, tmp: Path, monkeypatch: Any) -> Case:
    n_classes = rng.randint(3, 8)
    n_tasks = rng.randint(2, n_classes)
    base, extra = divmod(n_classes, n_tasks)
    starts = np.cumsum([0] + [base + (1 if t < extra else 0) for t in range(n_tasks)])
    kind = ("lacks_class", "lacks_task", "empty", "validation", "folder_lacks_class", "folder_empty")[index % 6]
    tasks = ["--n_tasks", str(n_tasks)]
    if kind == "lacks_class":
        gone = set(rng.sample(range(n_classes), rng.randint(1, n_classes - 1)))
        return run_args(tmp, write_npz(rng, tmp / "d.npz", n_classes, test_classes=set(range(n_classes)) - gone),
                        *tasks), f"test set without classes {sorted(gone)}"
    if kind == "lacks_task":
        task = rng.randrange(n_tasks)
        kept = [c for c in range(n_classes) if not starts[task] <= c < starts[task + 1]]
        return run_args(tmp, write_npz(rng, tmp / "d.npz", n_classes, test_classes=kept), *tasks), \
            f"test set without task {task + 1} of {n_tasks}"
    if kind == "empty":
        return run_args(tmp, write_npz(rng, tmp / "d.npz", n_classes, test_classes=[]), *tasks), "empty test set"
    if kind == "validation":
        per = [rng.randint(2, 6) for _ in range(n_classes)]
        lonely = rng.sample(range(n_classes), rng.randint(1, n_classes))
        for c in lonely:
            per[c] = 1  # a class of one training image keeps it: nothing held out
        percent = rng.choice(("10", "25", "0.3", "50"))
        return run_args(tmp, write_npz(rng, tmp / "d.npz", n_classes, train_per_class=per), *tasks,
                        "--validation", percent), f"--validation {percent} with one-image classes {sorted(lonely)}"
    names = [f"c{i}" for i in range(n_classes)]
    root = write_image_folder(tmp / "images", classes=names, per_class=2)
    gone = rng.sample(names, rng.randint(1, n_classes - 1)) if kind == "folder_lacks_class" else names
    for name in gone:
        for f in os.listdir(os.path.join(root, "test", name)):
            os.remove(os.path.join(root, "test", name, f))
        if rng.random() < 0.5:
            os.rmdir(os.path.join(root, "test", name))
    return run_args(tmp, root, *tasks, "--img_size", "8"), f"image folder without test images of {gone}"


# ----- backbone settings -----------------------------------------------------------------------------------------
BACKBONE_FLAGS = {"vit_tiny": ("embed_dim", "depth", "num_heads", "patch_size"), "mnistmlp": ("hidden_size",),
                  "resnet18": ("num_filters",)}


def backbone_case(rng: random.Random, index: int, tmp: Path, monkeypatch: Any) -> Case:
    data = write_npz(rng, tmp / "d.npz", 4, size=8)
    if index % 4 == 3:  # heads that do not divide the width
        heads = rng.randint(2, 12)
        width = heads * rng.randint(1, 8) + rng.randint(1, heads - 1)
        flags = ("--backbone", "vit_tiny", "--embed_dim", str(width), "--depth", "1", "--num_heads", str(heads))
        return run_args(tmp, data, "--n_tasks", "2", backbone=flags), f"{heads} heads for width {width}"
    name = sorted(BACKBONE_FLAGS)[index % 3]
    flag = rng.choice(BACKBONE_FLAGS[name])
    value = str(rng.choice((0, -rng.randint(1, 10 ** 6))))
    settings = {"vit_tiny": {"embed_dim": "32", "depth": "1", "num_heads": "2"}, "mnistmlp": {"hidden_size": "8"},
                "resnet18": {"num_filters": "4"}}[name]
    settings[flag] = value
    flags = ("--backbone", name, *(t for k, v in settings.items() for t in (f"--{k}", v)))
    return run_args(tmp, data, "--n_tasks", "2", backbone=flags), f"{name} --{flag} {value}"


# ----- configuration files that cannot be read -------------------------------------------------------------------
def config_case(rng: random.Random, index: int, tmp: Path, monkeypatch: Any) -> Case:
    ds_dir, model_dir = tmp / "dsconf", tmp / "modelconf"
    (ds_dir / "seq-custom").mkdir(parents=True)
    model_dir.mkdir()
    monkeypatch.setattr(app.config, "DATASET_CONFIG_DIR", str(ds_dir))
    monkeypatch.setattr(app.config, "MODEL_CONFIG_DIR", str(model_dir))
    size = rng.randint(4, 10)
    kind = ("binary", "key_not_a_name", "deep", "no_tensor", "crop_too_large")[index % 5]
    which = rng.choice(("dataset", "model")) if kind in ("binary", "key_not_a_name", "deep") else "dataset"
    if kind == "binary":
        text: bytes = b"\xff" + rng.randbytes(rng.randint(1, 2000))
    elif kind == "key_not_a_name":
        key = rng.choice(("1", "2.5", "true", "null", "0x1F", "2026-01-01"))
        body = f"{key}: {rng.randint(0, 9)}\n"
        text = (body if which == "dataset" or rng.random() < 0.5 else "default:\n  " + body).encode()
    elif kind == "deep":
        depth = rng.randint(5000, 50000)
        opener, closer = rng.choice((("[", "]"), ("{a: ", "}")))
        text = (f"{'lr' if which == 'model' else 'N_TASKS'}: " + opener * depth + "1" + closer * depth + "\n").encode()
        if which == "model":
            text = b"default:\n  " + text
    elif kind == "no_tensor":
        ops = rng.sample([{"Resize": {"size": size}}, {"RandomHorizontalFlip": {}}, {"CenterCrop": {"size": size}},
                          "Grayscale", {"Normalize": {"mean": [0.5] * 3, "std": [0.5] * 3}}], rng.randint(1, 3))
        text = yaml.safe_dump({rng.choice(("TRANSFORM", "TEST_TRANSFORM")): ops}).encode()
    else:
        crop = rng.randint(size + 1, 4000)
        text = yaml.safe_dump({rng.choice(("TRANSFORM", "TEST_TRANSFORM")): [
            {"RandomCrop": {"size": crop}}, "ToTensor"]}).encode()
    target = ds_dir / "seq-custom" / "fuzz.yaml" if which == "dataset" else model_dir / "sgd.yaml"
    target.write_bytes(text)
    extra = ["--dataset_config", "fuzz"] if which == "dataset" else []
    data = write_npz(rng, tmp / "d.npz", 4, size=size)
    return run_args(tmp, data, "--n_tasks", "2", "--normalization", "none", *extra), \
        f"{which} yaml {kind}: {text[:80]!r}"


# ----- checkpoints with malformed stored arguments ---------------------------------------------------------------
def checkpoint_case(rng: random.Random, index: int, tmp: Path, monkeypatch: Any) -> Case:
    from utils.checkpoints import FORMAT_VERSION, save_checkpoint
    good = {"model": "sgd", "dataset": "seq-custom", "lr": 0.05}
    kind = ("missing", "list", "scalar", "no_model", "key_not_a_name", "model_not_a_name")[index % 6]
    dropped = rng.choice(("model", "dataset"))
    stored = {"missing": None, "list": [rng.randint(0, 9) for _ in range(rng.randint(0, 4))],
              "scalar": rng.choice(("sgd", 3, 1.5, True)), "no_model": {k: v for k, v in good.items() if k != dropped},
              "key_not_a_name": {**good, rng.randint(0, 99): "x"},
              "model_not_a_name": {**good, rng.choice(("model", "dataset")): rng.choice((None, 3, ["sgd"]))}}[kind]
    state = {"format_version": FORMAT_VERSION, "model_state": {}, "record": {}, "rng": {}, "tasks_done": 0}
    if stored is not None:
        state["args"] = stored
    path = tmp / "stored" / "task_1.pt"
    save_checkpoint(str(path), state)
    return run_args(tmp, write_npz(rng, tmp / "d.npz", 4), "--n_tasks", "2", "--loadcheck", str(path)), \
        f"checkpoint args {kind}: {stored!r:.60}"


# ----- data paths that are not regular files or folders ----------------------------------------------------------
def path_case(rng: random.Random, index: int, tmp: Path, monkeypatch: Any) -> Case:
    kind = ("device", "fifo", "socket", "image_fifo", "link_loop", "too_large")[index % 6]
    extra = ["--n_tasks", "2"]
    if kind == "device":
        data = rng.choice([d for d in ("/dev/zero", "/dev/null", "/dev/urandom", "/dev/full") if os.path.exists(d)])
    elif kind == "fifo":
        data = str(tmp / rng.choice(("d.npz", "data", "x.npy")))
        os.mkfifo(data)
    elif kind == "socket":
        data = str(tmp / "s")
        server = socket.socket(socket.AF_UNIX)
        server.bind(data)
        server.close()
    elif kind in ("image_fifo", "link_loop"):
        data = write_image_folder(tmp / "images", per_class=2)
        folder = os.path.join(data, rng.choice(("train", "test")), rng.choice("abcd"))
        name = os.path.join(folder, f"x{rng.randint(0, 99)}.{rng.choice(('png', 'jpg'))}")
        if kind == "image_fifo":
            os.mkfifo(name)
        elif rng.random() < 0.5:
            os.symlink(os.path.basename(name), name)  # a file linking to itself
        else:
            loop = os.path.join(os.path.dirname(folder), "zz")
            os.symlink("zz", loop)  # a class folder linking to itself
        extra += ["--img_size", "8"]
    else:  # the arrays' headers declare more than the memory the check may use
        data = write_npz(rng, tmp / "d.npz", 4, size=rng.randint(8, 16))
        monkeypatch.setenv("CL_MEMORY_LIMIT", str(rng.randint(1, 512)))
    return run_args(tmp, data, *extra), f"data path {kind}: {data}"


# ----- devices ---------------------------------------------------------------------------------------------------
def device_case(rng: random.Random, index: int, tmp: Path, monkeypatch: Any) -> Case:
    lacking = ["meta", f"cuda:{torch.cuda.device_count() + rng.randint(0, 7)}"]
    if not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        lacking.append(rng.choice(("mps", "mps:0")))
    if not (hasattr(torch, "xpu") and torch.xpu.is_available()):
        lacking.append(f"xpu:{rng.randint(0, 3)}")
    lacking += [rng.choice(("hpu", "ipu", "vulkan", "xla", "lazy")), rng.choice(("gpu", "cuda0", "cpu:x", "tpu"))]
    device = lacking[index % len(lacking)]
    return run_args(tmp, write_npz(rng, tmp / "d.npz", 4), "--n_tasks", "2", "--device", device), \
        f"--device {device}"


# ----- corrupt caches ---------------------------------------------------------------------------------------------
def cache_case(rng: random.Random, index: int, tmp: Path, monkeypatch: Any) -> Case:
    n_classes, per = 4, [rng.randint(2, 4) for _ in range(4)]
    data = write_npz(rng, tmp / "d.npz", n_classes, train_per_class=per)
    rate = rng.choice(("0.1", "0.3", "0.5"))
    argv = run_args(tmp, data, "--n_tasks", "2", "--noise_rate", rate)
    from datasets.utils.labels import noisy_cache_file
    flags = argparse.Namespace(base_path=str(tmp / "work" / "data"), cache_path_noisy_labels="noisy_labels",
                               noise_type="symmetric", noise_rate=float(rate), seed=0)
    path = noisy_cache_file(flags, "seq-custom", sum(per))
    os.makedirs(os.path.dirname(path), exist_ok=True)
    n = sum(per)
    writers: dict[str, Callable[[], None]] = {
        "random_bytes": lambda: Path(path).write_bytes(rng.randbytes(rng.randint(0, 3000))),
        "floats": lambda: np.save(path, np.random.RandomState(0).rand(n)),
        "wrong_length": lambda: np.save(path, np.zeros(n + rng.choice((-1, 1)) * rng.randint(1, n - 1), np.int64)),
        "out_of_range": lambda: np.save(path, np.full(n, rng.choice((-1, n_classes + rng.randint(0, 99))))),
        "pickled": lambda: Path(path).write_bytes(pickle.dumps(list(range(n)))),
        "huge_header": lambda: Path(path).write_bytes(_npy_header((rng.randint(10 ** 9, 10 ** 12),))),
        "folder_is_a_file": lambda: (os.rmdir(os.path.dirname(path)),
                                     Path(os.path.dirname(path)).write_bytes(rng.randbytes(16))),
    }
    kind = sorted(writers)[index % len(writers)]
    writers[kind]()
    return argv, f"noisy-label cache {kind}"


def _npy_header(shape: tuple[int, ...]) -> bytes:
    import io
    buffer = io.BytesIO()
    np.lib.format.write_array_header_1_0(buffer, {"descr": "<i8", "fortran_order": False, "shape": shape})
    return buffer.getvalue()


# ----- one flag under two names -----------------------------------------------------------------------------------
def alias_case(rng: random.Random, index: int, tmp: Path, monkeypatch: Any) -> Case:
    if index % 2 == 0:
        a, b = rng.sample(range(4), 2) if rng.random() < 0.7 else [rng.randrange(4)] * 2
        first = rng.choice((["-O", str(a)], [f"-O{a}"]))
        second = rng.choice((["--code_optimization", str(b)], [f"--code_optimization={b}"]))
    else:
        a, b = round(rng.uniform(0.1, 1.0), 2), round(rng.uniform(0.1, 1.0), 2)
        first, second = ["--label_perc", str(a)], ["--label_perc_by_task", str(b)]
    pair = [first, second] if rng.random() < 0.5 else [second, first]
    return run_args(tmp, write_npz(rng, tmp / "d.npz", 4), "--n_tasks", "2", *pair[0], *pair[1]), \
        f"aliases {pair}"


FAMILIES: dict[str, Callable[..., Case]] = {
    "testset": testset_case, "backbone": backbone_case, "config": config_case, "checkpoint": checkpoint_case,
    "path": path_case, "device": device_case, "cache": cache_case, "alias": alias_case}
