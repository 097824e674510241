"""Seeded fuzzing of the CLI with malformed npz files, image folders and YAML configs.

Every variant is certainly invalid (the mutation kind guarantees it; the generator picks where and how), and
must end with exit code 2, one ``error:`` line, no traceback and no new file. Runs in-process through the CLI
entry ``app.runner.main``. Besides npz files, image folders and YAML values, the families of
``tests/fuzz_cases.py`` (incomplete test sets, backbone settings, unreadable configs, checkpoint arguments, data
paths, devices, caches, aliases) run ``PER_FAMILY // 2`` variants each, their index picking the kind.
``CL_FUZZ_SEED`` picks another seed (the default is fixed: reproducible runs), ``CL_FUZZ_PER_FAMILY`` more
variants;
a failing variant names its seed, family and mutation in the test id and message.
"""
from __future__ import annotations

import os
import random
import shutil
import zipfile

import numpy as np
import pytest
import yaml

import app.config
from tests.bad_inputs import (folder_run_args, npy_bytes, npy_with_header, png_header_only, run_expecting_error,
                              write_image_folder, write_npz_members)
from tests.fuzz_cases import FAMILIES
from tests.conftest import read_file, write_bytes

SEED = int(os.environ.get("CL_FUZZ_SEED", "19"))
PER_FAMILY = int(os.environ.get("CL_FUZZ_PER_FAMILY", "12"))  # 3 families: 36 variants per run by default
KEYS = ("x_train", "y_train", "x_test", "y_test")


# ----- npz files ---------------------------------------------------------------------------------------------------
def base_arrays(rng: random.Random) -> dict[str, np.ndarray]:
    """A valid seq-custom dataset of random shape (2-5 classes, 4-10 px, NCHW or NHWC, RGB or gray)."""
    n_classes, per_class, size = rng.randint(2, 5), rng.randint(2, 4), rng.randint(4, 10)
    gray, nchw = rng.random() < 0.3, rng.random() < 0.5
    npr = np.random.RandomState(rng.randrange(2 ** 31))
    out = {}
    for split, n in (("train", per_class), ("test", 1)):
        y = np.repeat(np.arange(n_classes), n)
        x = npr.randint(0, 256, size=(len(y), size, size) if gray else (len(y), size, size, 3)).astype(np.uint8)
        out[f"x_{split}"], out[f"y_{split}"] = (x.transpose(0, 3, 1, 2).copy() if nchw and not gray else x), y
    return out


def npz_drop_key(rng, a):
    del a[rng.choice(KEYS)]


def npz_bad_dtype(rng, a):
    key = rng.choice(("x_train", "x_test"))
    a[key] = a[key].astype(rng.choice((np.float32, np.int16, np.float64, np.bool_)))


def npz_bad_ndim(rng, a):
    key = rng.choice(("x_train", "x_test"))
    a[key] = a[key].reshape(len(a[key]), -1) if rng.random() < 0.5 else a[key][..., None, None]


def npz_bad_channels(rng, a):
    n = rng.choice((2, 4, 5))
    for split in ("train", "test"):
        a[f"x_{split}"] = np.zeros((len(a[f"y_{split}"]), 7, 7, n), np.uint8)


def npz_size_mismatch(rng, a):
    x = a["x_test"]
    h_axis = 2 if x.ndim == 4 and x.shape[1] == 3 and x.shape[3] != 3 else 1
    cut = rng.randint(1, x.shape[h_axis] - 1)
    a["x_test"] = np.take(x, range(cut), axis=h_axis).copy()


def npz_channel_mismatch(rng, a):
    key = rng.choice(("x_train", "x_test"))
    x = a[key]
    if x.ndim == 3:
        a[key] = np.repeat(x[..., None], 3, axis=3)
    else:
        a[key] = (x[:, 0] if x.shape[1] == 3 and x.shape[3] != 3 else x[..., 0]).copy()


def npz_label_length(rng, a):
    key = rng.choice(("y_train", "y_test"))
    a[key] = a[key][:len(a[key]) - rng.randint(1, len(a[key]))]


def npz_label_type(rng, a):
    key = rng.choice(("y_train", "y_test"))
    a[key] = a[key].astype(np.float32) + 0.5 if rng.random() < 0.5 else a[key].reshape(-1, 1)


def npz_negative_label(rng, a):
    key = rng.choice(("y_train", "y_test"))
    a[key] = a[key].copy()
    a[key][rng.randrange(len(a[key]))] = -rng.randint(1, 10 ** 6)


def npz_empty_train(rng, a):
    a["x_train"], a["y_train"] = a["x_train"][:0], a["y_train"][:0]


def npz_zero_size(rng, a):
    for split in ("train", "test"):
        a[f"x_{split}"] = np.zeros((len(a[f"y_{split}"]), 0, rng.randint(0, 5), 3), np.uint8)


def npz_class_names(rng, a):
    n = int(a["y_train"].max()) + 1
    a["class_names"] = np.array([f"c{i}" for i in range(n + rng.randint(1, 4))])


def npz_header_lies(rng, a):
    """Handled in write_variant: a header that declares terabytes (a single bad value in the data)."""


def npz_truncated(rng, a):
    """Handled in write_variant: the file cut at a random offset."""


def npz_flipped_bytes(rng, a):
    """Handled in write_variant: a burst of flipped bytes inside an array's data (the zip CRC no longer matches)."""


def npz_not_an_npz(rng, a):
    """Handled in write_variant: an .npy, random bytes, an empty file or text."""


NPZ_MUTATIONS = [npz_drop_key, npz_bad_dtype, npz_bad_ndim, npz_bad_channels, npz_size_mismatch, npz_channel_mismatch,
                 npz_label_length, npz_label_type, npz_negative_label, npz_empty_train, npz_zero_size, npz_class_names,
                 npz_header_lies, npz_truncated, npz_flipped_bytes, npz_not_an_npz]


def write_npz_variant(rng: random.Random, mutation, folder) -> str:
    arrays = base_arrays(rng)
    mutation(rng, arrays)
    path = str(folder / "data.npz")
    if mutation is npz_header_lies:
        members = {k: npy_bytes(v) for k, v in arrays.items()}
        members[rng.choice(KEYS)] = npy_with_header(tuple(rng.randint(10 ** 4, 10 ** 6) for _ in range(4)))
        return write_npz_members(path, members)
    if mutation is npz_not_an_npz:
        kind = rng.choice(("npy", "random", "empty", "text"))
        path = str(folder / f"data.{rng.choice(('npz', 'npy', 'bin'))}")
        content = {"npy": npy_bytes(arrays["x_train"]), "random": rng.randbytes(rng.randint(1, 4000)), "empty": b"",
                   "text": b"x_train,y_train\n1,2\n"}[kind]
        with open(path, "wb") as fh:
            fh.write(content)
        return path
    np.savez(path, **arrays)
    raw = bytearray(read_file(path, "rb"))
    if mutation is npz_truncated:
        raw = raw[:rng.randint(0, len(raw) - 1)]
    elif mutation is npz_flipped_bytes:
        with zipfile.ZipFile(path) as archive:
            info = archive.getinfo(f"{rng.choice(('x_train', 'x_test'))}.npy")
        start = info.header_offset + 30 + len(info.filename) + len(info.extra) + 128  # past the npy header
        at = rng.randint(start, start + info.compress_size - 128 - 4)
        for i in range(rng.randint(1, 4)):
            raw[at + i] ^= rng.randint(1, 255)
    with open(path, "wb") as fh:
        fh.write(bytes(raw))
    return path


# ----- image folders -----------------------------------------------------------------------------------------------
def folder_variant(rng: random.Random, folder) -> tuple[str, list[str], str]:
    ext = rng.choice(("png", "jpg"))
    root = write_image_folder(folder / "images", per_class=rng.randint(2, 3), ext=ext)
    kind = rng.choice(("garbage", "truncated", "empty_file", "bomb", "no_test", "no_train", "unknown_test_class",
                       "no_images", "no_class_folders", "too_many_tasks"))
    extra: list[str] = []
    split, cls = rng.choice(("train", "test")), rng.choice("abcd")
    victim = os.path.join(root, split, cls, f"{rng.randint(0, 1) if split == 'train' else 0}.{ext}")
    if kind == "garbage":
        write_bytes(victim, rng.randbytes(rng.randint(1, 300)))
    elif kind == "truncated":
        data = read_file(victim, "rb")
        write_bytes(victim, data[:rng.randint(0, len(data) // 2)])
    elif kind == "empty_file":
        write_bytes(victim, b"")
    elif kind == "bomb":
        write_bytes(victim, png_header_only(rng.randint(20000, 60000), rng.randint(20000, 60000)))
    elif kind in ("no_test", "no_train"):
        shutil.rmtree(os.path.join(root, kind[3:]))
    elif kind == "unknown_test_class":
        os.makedirs(os.path.join(root, "test", "zz"))
        write_bytes(os.path.join(root, "test", "zz", f"0.{ext}"), read_file(victim, "rb"))
    elif kind == "no_images":
        for dirpath, _, files in os.walk(os.path.join(root, "train")):
            for f in files:
                os.rename(os.path.join(dirpath, f), os.path.join(dirpath, f + rng.choice((".txt", ".bak", "~"))))
    elif kind == "no_class_folders":
        shutil.rmtree(os.path.join(root, "train"))
        os.makedirs(os.path.join(root, "train"))
        write_bytes(os.path.join(root, "train", f"0.{ext}"), read_file(os.path.join(root, "test", "a", f"0.{ext}"),
                                                                         "rb"))
    else:
        extra = ["--n_tasks", str(rng.randint(5, 10 ** 6))]
    if kind in ("garbage", "truncated", "empty_file", "bomb"):
        extra = ["--num_workers", rng.choice(("0", "2"))]
    return root, extra, kind


# ----- YAML configs ------------------------------------------------------------------------------------------------
def yaml_variant(rng: random.Random) -> tuple[str, str, str]:
    """(which file: 'dataset' or 'model', its text, the kind of defect)."""
    number = lambda: round(rng.uniform(0.05, 1.0), 3)  # noqa: E731
    k = rng.choice([n for n in range(1, 7) if n != 3])
    bad_values = {"lr": [-number(), "fast", [number(), number()], {"a": 1}, 0],
                  "n_epochs": [0, -rng.randint(1, 9), 1.5, "many"], "batch_size": [0, "big", {"x": 1}],
                  "seed": [-rng.randint(1, 10 ** 6), 2 ** 32 + rng.randint(0, 10 ** 6), "x"],
                  "optimizer": ["sgdd", "lbfgs"], "n_epochz": [1], "drop_last": ["maybe", 2]}
    flag = rng.choice(sorted(bad_values))
    flag_value = {flag: rng.choice(bad_values[flag])}
    dataset_kinds = {
        "syntax": rng.choice(("a: [1, 2\n", "key: value\n\tbad: tab\n", "a: b: c\n", "- x\n  y: :\n", "'open\n")),
        "top_level": yaml.safe_dump(rng.choice(([1, 2], "text", 3.5))),
        "mean_length": yaml.safe_dump({"MEAN": [number() for _ in range(k)], "STD": [number() for _ in range(k)]}),
        "zero_std": yaml.safe_dump({"MEAN": [number()] * 3, "STD": rng.sample([0.0, -number(), number()], 3)}),
        "mean_not_numbers": yaml.safe_dump({"MEAN": rng.choice((["r", "g", "b"], {"r": 1}, "0.5")),
                                            "STD": [number()] * 3}),
        "std_without_mean": yaml.safe_dump({"STD": [number()] * 3}),
        "n_tasks": yaml.safe_dump({"N_TASKS": rng.choice((0, -3, "two", 2.5, [2]))}),
        "size": yaml.safe_dump({"SIZE": rng.choice((0, -8, [8], [8, 0], "big", [8, 8, 8]))}),
        "per_task": yaml.safe_dump({"N_CLASSES_PER_TASK": rng.choice((0, [2, 0], "2", [[2]]))}),
        "transform": yaml.safe_dump({"TRANSFORM": rng.choice(({"ToTensor": {}}, "ToTensor", [rng.choice((
            "NoSuchTransform", {"Normalize": {"mean": [0.5] * 3, "std": [0.5, 0.0, 0.5]}},
            {"Normalize": {"mean": [0.5] * k, "std": [0.5] * k}}, {"Resize": [8, 8]}, {"Resize": {"sise": 8}},
            {"ToTensor": {}, "Resize": {"size": 8}}))]))}),
        "flag_value": yaml.safe_dump(flag_value),
        "unknown_key": yaml.safe_dump({rng.choice(("lrr", "batchsize", "n_epoch", "seeed")): 1}),
    }
    model_kinds = {
        "section_list": yaml.safe_dump({"default": [flag, 1]}),
        "section_scalar": yaml.safe_dump({"default": rng.choice((0.1, "lr=0.1", True))}),
        "flag_value": yaml.safe_dump({"default": flag_value}),
        "top_level": yaml.safe_dump(rng.choice(([{"default": {}}], "default"))),
        "syntax": "default:\n  lr: 0.1\n lr: 0.2\n",
    }
    if rng.random() < 0.7:
        kind = rng.choice(sorted(dataset_kinds))
        return "dataset", dataset_kinds[kind], kind
    kind = rng.choice(sorted(model_kinds))
    return "model", model_kinds[kind], kind


# ----- the test ----------------------------------------------------------------------------------------------------
def variant_ids() -> list[str]:
    return [f"{family}-{i}" for family in ("npz", "folder", "yaml") for i in range(PER_FAMILY)] + \
        [f"{family}-{i}" for family in FAMILIES for i in range(max(1, PER_FAMILY // 2))]


@pytest.mark.parametrize("variant", variant_ids())
def test_malformed_input_is_one_line_exit_2(variant, tmp_path, capsys, monkeypatch):
    family, index = variant.rsplit("-", 1)
    rng = random.Random(f"{SEED}-{variant}")
    work = tmp_path / "work"
    work.mkdir()
    common = ["--n_epochs", "1", "--batch_size", "4", "--lr", "0.05", "--seed", "0", "--non_verbose", "--plots", "0",
              "--backbone", "vit_tiny", "--embed_dim", "32", "--depth", "1", "--num_heads", "2",
              "--base_path", str(work / "data"), "--checkpoint_path", str(work / "ckpt"),
              "--results_file", str(work / "res" / "r.json")]
    if family in FAMILIES:
        argv, what = FAMILIES[family](rng, int(index), tmp_path, monkeypatch)
    elif family == "npz":
        mutation = NPZ_MUTATIONS[(int(index) * 5 + SEED) % len(NPZ_MUTATIONS)]
        path = write_npz_variant(rng, mutation, tmp_path)
        what = mutation.__name__
        argv = ["--model", "sgd", "--dataset", "seq-custom", "--data_path", path, "--n_tasks", "2", *common]
    elif family == "folder":
        root, extra, what = folder_variant(rng, tmp_path)
        argv = folder_run_args(root, work, *extra)
    else:
        which, text, what = yaml_variant(rng)
        ds_dir, model_dir = tmp_path / "dsconf", tmp_path / "modelconf"
        (ds_dir / "seq-custom").mkdir(parents=True)
        model_dir.mkdir()
        monkeypatch.setattr(app.config, "DATASET_CONFIG_DIR", str(ds_dir))
        monkeypatch.setattr(app.config, "MODEL_CONFIG_DIR", str(model_dir))
        target = ds_dir / "seq-custom" / "fuzz.yaml" if which == "dataset" else model_dir / "sgd.yaml"
        target.write_text(text)
        data = write_npz_variant(random.Random(0), lambda r, a: None, tmp_path)
        argv = ["--model", "sgd", "--dataset", "seq-custom", "--data_path", data, "--n_tasks", "2",
                "--normalization", "none", *common]
        if which == "dataset":
            argv += ["--dataset_config", "fuzz"]
        what = f"{which} yaml {what}: {text!r:.120}"
    try:
        run_expecting_error(capsys, argv, tmp_path)
    except AssertionError as exc:
        raise AssertionError(f"CL_FUZZ_SEED={SEED} variant {variant} ({what}): {exc}") from None
