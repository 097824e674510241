"""Test set-up: offline hub, temporary caches, shared helpers for tiny on-disk datasets."""
from __future__ import annotations

import os
import sys
import tempfile

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED_ROOT = os.path.join(os.path.dirname(ROOT), "shared")  # the offline assets beside the clone
SHARED_DATA = os.path.join(SHARED_ROOT, "data")
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["CL_NO_DOWNLOAD"] = "1"  # no test may reach the network
os.environ.setdefault("CL_DEFAULT_NUM_WORKERS", "0")  # tiny data: worker processes would only cost start-up time
_cache = tempfile.mkdtemp(prefix="cl-test-cache-")
for _var, _sub in (("TORCH_HOME", "torch"), ("HF_HOME", "hf")):  # one cache per process: pytest -n workers
    if os.environ.get("PYTEST_XDIST_WORKER") or _var not in os.environ:  # would share the controller's otherwise
        os.environ[_var] = os.path.join(_cache, _sub)
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)
if os.environ.get("PYTEST_XDIST_WORKER_COUNT"):  # pytest -n N: share the cores between the workers
    _threads = str(max(1, (os.cpu_count() or 1) // int(os.environ["PYTEST_XDIST_WORKER_COUNT"])))
    os.environ["OMP_NUM_THREADS"] = _threads  # subprocesses (torchrun, main.py) too
    import torch
    torch.set_num_threads(int(_threads))


def read_file(path, mode: str = "r", **kwargs):
    """The whole content of ``path`` (text, or bytes with ``mode="rb"``), the file closed again."""
    with open(path, mode, **kwargs) as fh:
        return fh.read()


def write_bytes(path, data: bytes) -> None:
    """Write ``data`` to ``path``, the file closed again."""
    with open(path, "wb") as fh:
        fh.write(data)


def shared_missing(path: str) -> None:
    """A ../shared asset is absent. With ../shared beside the clone, or ``CL_REQUIRE_SHARED=1`` (set by .ci/run),
    the calling test fails: a file missing from present assets is a bug a skip would hide. Only a checkout without
    any ../shared folder skips the tests that need it."""
    if os.environ.get("CL_REQUIRE_SHARED") == "1":
        pytest.fail(f"{path} is not available, but CL_REQUIRE_SHARED=1 requires it (put ../shared beside the clone)")
    if os.path.isdir(SHARED_ROOT):
        pytest.fail(f"{path} is not available although {SHARED_ROOT} exists: restore the asset in ../shared")
    pytest.skip(f"{path} is not available (no ../shared beside the clone)")


def shared_file(name: str) -> str:
    """Path of a file in ../shared/data; the calling test is skipped when it is absent (failed under CI)."""
    path = os.path.join(SHARED_DATA, name)
    if not os.path.isfile(path):
        shared_missing(path)
    return path


def make_npz(path: str, n_classes: int = 4, per_class: int = 6, size: int = 8, channels_first: bool = True,
             seed: int = 0, **extra) -> str:
    """A tiny separable image dataset: class c has mean brightness proportional to c."""
    rng = np.random.RandomState(seed)

    def split(n):
        y = np.repeat(np.arange(n_classes), n)
        base = (y[:, None, None, None] * (200 // max(1, n_classes - 1))).astype(np.float64)
        x = np.clip(base + rng.randint(0, 30, size=(len(y), 3, size, size)), 0, 255).astype(np.uint8)
        return (x if channels_first else x.transpose(0, 2, 3, 1)), y

    x_train, y_train = split(per_class)
    x_test, y_test = split(max(2, per_class // 2))
    np.savez(path, x_train=x_train, y_train=y_train, x_test=x_test, y_test=y_test, **extra)
    return path


SECOND_ORDER_FAST = ["--num_epochs_pretuning", "1", "--num_epochs_align_pretuning", "1",
                     "--num_samples_align_pretuning", "8", "--batch_size_align_pretuning", "8"]
# flags that keep a model's tiny run fast; every registered model is in the matrix below, with [] if not listed
EXTRA_FLAGS = {
    "ita": [*SECOND_ORDER_FAST, "--alpha_ita", "1"],
    "iel": [*SECOND_ORDER_FAST, "--beta_iel", "1"],
    "second_order": SECOND_ORDER_FAST,
    "ewc_on": ["--e_lambda", "10"],
    "lwf_mc": [],
    "er": ["--buffer_size", "8", "--minibatch_size", "3"],
    "der": ["--buffer_size", "8"],
    "derpp": ["--buffer_size", "8"],
    "l2p": ["--pool_size", "4", "--top_k", "2", "--prompt_length", "2", "--lr", "0.01"],
    "coda_prompt": ["--pool_size", "6", "--prompt_length", "2", "--lr", "0.01"],
    "slca": ["--ca_samples_per_class", "8", "--ca_epochs", "2"],
    "ranpac": ["--rp_size", "64"],
    "task_arithmetic": [],
    "simplecil": [],
    "dualprompt": ["--g_prompt_layers", "0", "--e_prompt_layers", "0", "--g_prompt_length", "2",
                   "--e_prompt_length", "2", "--lr", "0.01"],
    "tmc": ["--lr", "0.01"],
    "inflora": ["--inflora_rank", "2", "--lr", "0.01"],
    "seed": ["--num_experts", "2", "--seed_cov_eps", "0.01"],
    "apt": ["--prompt_length", "1", "--memory_length", "2", "--lr", "0.01"],
}


@pytest.fixture
def tiny_npz(tmp_path) -> str:
    return make_npz(str(tmp_path / "tiny.npz"))


def tiny_run_args(data_path: str, tmp_path, *extra: str, n_tasks: int = 2) -> list[str]:
    """Arguments of a seconds-long seq-custom run on a tiny ViT."""
    return ["--dataset", "seq-custom", "--data_path", data_path, "--n_tasks", str(n_tasks), "--backbone", "vit_tiny",
            "--embed_dim", "32", "--depth", "1", "--num_heads", "2", "--lr", "0.05", "--n_epochs", "1",
            "--batch_size", "4", "--seed", "0", "--non_verbose", "--base_path", str(tmp_path / "data"),
            "--checkpoint_path", str(tmp_path / "ckpt"), *extra]


def pytest_runtest_logreport(report) -> None:
    """With ``CL_TEST_TIMINGS=FILE``, append each test phase's seconds as it finishes (a suite cut short still
    tells where the time went)."""
    path = os.environ.get("CL_TEST_TIMINGS")
    if path and report.when in ("setup", "call", "teardown"):
        with open(path, "a") as fh:
            fh.write(f"{report.duration:.2f}\t{report.when}\t{report.outcome}\t{report.nodeid}\n")
