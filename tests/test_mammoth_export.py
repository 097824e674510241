"""``python -m app.export_mammoth`` into a real Mammoth checkout (the source snapshot in ../shared/mammoth), run there
offline with Mammoth's own ``main.py``, and the same numbers on both sides.

Mammoth imports ``open_clip`` (its dataset modules build a CLIP test transform at import) and ``six``; the test
runs it in a cached environment that overlays the project's (same torch and timm: Mammoth's pin
``timm==0.9.8`` is not needed for these methods) with those few packages. The data are synthetic images in the
official layouts; torchvision checks the CIFAR archives' md5 sums, so the test's interpreter accepts the synthetic
files (``sitecustomize`` in the test's environment only). Mammoth's own ``tests/test_second_order.py`` (full-size
ViT-B/16, about 6 min per task on one CPU core) runs with ``CL_MAMMOTH_VIT=1``."""
from __future__ import annotations

import ast
import fcntl
import hashlib
import json
import os
import pickle
import site
import subprocess
import sys
import tarfile

import pytest
import torch

from app.export_mammoth import main as export_main
from app.mammoth_export import METHODS
from tests.conftest import SHARED_DATA, shared_missing
from tests.dataset_builders import write_cifar100, write_idx_set
from tests.test_datasets_core import write_cifar10

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SNAPSHOT = os.path.join(os.path.dirname(SHARED_DATA), "mammoth", "mammoth-e75a491.tar.gz")
EXTRA = ("open_clip_torch==3.3.0", "ftfy==6.3.1", "regex==2026.11.15", "wcwidth", "six")
CACHE = os.environ.get("CL_MAMMOTH_ENV") or os.path.join(
    os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "second-order-cl", "mammoth-env")
SITE = """import os
import torchvision.datasets.cifar as cifar
cifar.check_integrity = lambda fpath, md5=None: os.path.isfile(fpath)  # synthetic archives: no md5 match
"""


def mammoth_python() -> str:
    """The cached environment: a venv whose site-packages extend the project's with :data:`EXTRA`. One folder per
    project environment and package list, so that test runs from other checkouts never rebuild it under a run."""
    key = hashlib.sha256("\n".join([site.getsitepackages()[0], *EXTRA]).encode()).hexdigest()[:12]
    root = f"{CACHE}-{key}"
    python = os.path.join(root, "bin", "python")
    stamp = os.path.join(root, ".ready")
    os.makedirs(os.path.dirname(CACHE), exist_ok=True)
    with open(root + ".lock", "w") as lock:  # parallel test workers build it once
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not os.path.isfile(stamp):
            build_environment(root, python, stamp)
    return python


def build_environment(root: str, python: str, stamp: str) -> None:
    """Create the venv, point it at the project's site-packages, install :data:`EXTRA` without dependencies."""
    subprocess.run([sys.executable, "-m", "venv", "--clear", "--without-pip", root], check=True)
    out = subprocess.run([python, "-c", "import site; print(site.getsitepackages()[0])"], check=True,
                         capture_output=True, text=True).stdout.strip()
    with open(os.path.join(out, "_project.pth"), "w") as fh:
        fh.write(site.getsitepackages()[0] + "\n")
    subprocess.run([sys.executable, "-m", "pip", "--python", python, "install", "-q", "--no-deps", *EXTRA],
                   check=True)
    with open(stamp, "w"):
        pass


def write_zero_clip(root: str) -> None:
    """The ``ViT-B-16``/``openai`` weights open_clip loads from Mammoth's cache folder, as zero tensors of the
    right shapes (a few KiB: Mammoth only takes the CLIP test transform from them)."""
    import open_clip
    state = open_clip.create_model("ViT-B-16", pretrained=None).state_dict()
    zero = torch.zeros(1)
    repo = os.path.join(root, "checkpoints", "ViT-B-16", "cachedir", "open_clip",
                        "models--timm--vit_base_patch16_clip_224.openai")
    commit = "0" * 40
    os.makedirs(os.path.join(repo, "refs"))
    os.makedirs(os.path.join(repo, "snapshots", commit))
    with open(os.path.join(repo, "refs", "main"), "w") as fh:
        fh.write(commit)
    torch.save({k: zero.expand(v.shape) if v.dim() else zero[0].clone() for k, v in state.items()},
               os.path.join(repo, "snapshots", commit, "open_clip_pytorch_model.bin"))


def write_data(base: str) -> None:
    """CIFAR-10/100 (with the ``meta`` files torchvision reads) and MNIST where both frameworks read them."""
    write_cifar10(base, per_class=2)
    with open(os.path.join(base, "CIFAR10", "cifar-10-batches-py", "batches.meta"), "wb") as fh:
        pickle.dump({"label_names": [f"class{i}" for i in range(10)]}, fh)
    write_cifar100(base, per_class_train=1, per_class_test=1)
    with open(os.path.join(base, "CIFAR100", "cifar-100-python", "meta"), "wb") as fh:
        pickle.dump({"fine_label_names": [f"class{i}" for i in range(100)],
                     "coarse_label_names": [f"group{i}" for i in range(20)]}, fh)
    for raw in ("raw", os.path.join("MNIST", "raw"), os.path.join("MyMNIST", "raw")):  # this project; torchvision
        write_idx_set(os.path.join(base, "MNIST", raw), per_class_train=3, per_class_test=1, gz=False)


@pytest.fixture(scope="module")
def mammoth(tmp_path_factory):
    """(python, checkout, data folder, environment): the snapshot extracted, the export written into it."""
    if not os.path.isfile(SNAPSHOT):
        shared_missing(SNAPSHOT)
    python = mammoth_python()
    tmp = tmp_path_factory.mktemp("mammoth")
    with tarfile.open(SNAPSHOT) as tar:
        tar.extractall(tmp, filter="data")
    checkout = str(next(p for p in tmp.iterdir() if (p / "main.py").is_file()) if not (tmp / "main.py").is_file()
                   else tmp)
    assert export_main(["--to", checkout]) == 0
    data = str(tmp / "data")
    write_data(data)
    os.makedirs(tmp / "site")
    (tmp / "site" / "sitecustomize.py").write_text(SITE)
    env = {**os.environ, "PYTHONPATH": str(tmp / "site"), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    subprocess.run([python, "-c", f"import sys; sys.path.insert(0, {ROOT!r}); "
                    f"from tests.test_mammoth_export import write_zero_clip; write_zero_clip({checkout!r})"],
                   check=True, env=env, cwd=checkout)
    return python, checkout, data, env


def test_bad_target_is_one_line_and_writes_nothing(tmp_path, capsys):
    (tmp_path / "main.py").write_text("")
    assert export_main(["--to", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "not a Mammoth checkout" in err
    assert sorted(os.listdir(tmp_path)) == ["main.py"]
    assert export_main(["--to", str(tmp_path), "--methods", "nonesuch"]) == 2


def test_exported_files_import_only_mammoth_and_third_party(mammoth):
    """Every import of ``models``/``utils``/``datasets``/``backbone`` in the written files resolves in the checkout
    (Mammoth's own modules or the written support package); the flagship replaces Mammoth's file."""
    _, checkout, _, _ = mammoth
    written = []
    for folder, _, files in os.walk(checkout):
        written += [os.path.join(folder, f) for f in files
                    if f.endswith(".py") and ("second_order_cl" in folder or f[:-3] in METHODS)]
    assert len(written) > 20
    for path in written:
        with open(path) as fh:
            tree = ast.parse(fh.read())
        for node in ast.walk(tree):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module] if isinstance(node, ast.ImportFrom) and node.module and not node.level else [])
            for name in names:
                assert not name.startswith("mammoth_compat"), (path, name)
                if name.split(".")[0] in ("models", "utils", "datasets", "backbone"):
                    base = os.path.join(checkout, *name.split("."))
                    assert os.path.isfile(base + ".py") or os.path.isdir(base), (path, name)
    with open(os.path.join(checkout, "models", "second_order.py")) as fh:
        assert "Generated by second-order-cl" in fh.readline()


def test_same_numbers_in_mammoth_and_here(mammoth, tmp_path):
    """Fisher, pre-tuned heads, penalty gradients and values, losses and the trained parameters of two tasks'
    first steps: the exported flagship under Mammoth's ``main.initialize`` equals this project's run."""
    python, checkout, data, env = mammoth
    probe = os.path.join(ROOT, "tests", "mammoth_export_probe.py")
    here, there = str(tmp_path / "here.pt"), str(tmp_path / "there.pt")
    subprocess.run([sys.executable, probe, "project", here, data], check=True, cwd=ROOT, env=env,
                   capture_output=True)
    done = subprocess.run([python, probe, "mammoth", there, data], cwd=checkout, env=env, capture_output=True,
                          text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    a, b = torch.load(here), torch.load(there)
    assert list(a) == list(b) and len(a) == 46
    assert float(a["1/penalty_fisher/1"].abs().max()) > 1e-3  # task 0's Fisher reaches task 1's penalty
    for key in a:
        torch.testing.assert_close(b[key], a[key], rtol=1e-4, atol=1e-6, msg=key)


@pytest.mark.parametrize("method", ["simplecil", "seed"])
def test_same_features_statistics_in_mammoth_and_here(mammoth, tmp_path, method):
    """Three tasks of SimpleCIL (APER on seq-cifar10: task 0 trains, later tasks have no optimiser) and SEED (two
    experts on seq-mnist: task 2 picks one by KL and distils from its copy): losses, trained weights, the statistics
    ``end_task`` reads from the task's training images with the test transform (through Mammoth's own train set
    there; CIFAR's augmentation would change the prototypes) and the logits of a fixed batch are this project's."""
    python, checkout, data, env = mammoth
    probe = os.path.join(ROOT, "tests", "mammoth_export_probe_features.py")
    here, there = str(tmp_path / "here.pt"), str(tmp_path / "there.pt")
    subprocess.run([sys.executable, probe, "project", method, here, data], check=True, cwd=ROOT, env=env,
                   capture_output=True)
    done = subprocess.run([python, probe, "mammoth", method, there, data], cwd=checkout, env=env,
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    a, b = torch.load(here), torch.load(there)
    assert list(a) == list(b)
    assert [float(a[f"{t}/trains"]) for t in range(3)] == ([1.0, 0.0, 0.0] if method == "simplecil" else [1.0] * 3)
    if method == "simplecil":
        assert a["2/proto_counts"].tolist() == [10.0] * 6 + [0.0] * 4  # ten training images per class
        assert bool((a["2/proto_sums"][:6].norm(dim=1) > 1).all()) and float(a["2/logits"].abs().max()) <= 1
    else:
        # expert 1, first trained on task 1, knows the classes from task 1 on
        assert a["2/known"].tolist() == [[1.0] * 6 + [0.0] * 4, [0.0] * 2 + [1.0] * 4 + [0.0] * 4]
        assert bool(a["2/logits"][:, :6].isfinite().all()) and float(a["2/logits"][:, :6].std()) > 0.1
    for key in a:
        torch.testing.assert_close(b[key], a[key], rtol=1e-5, atol=1e-6, msg=key)


def test_published_configurations_give_the_same_settings_in_mammoth(mammoth, tmp_path):
    """``--model_config best`` on every section of the exported ``models/config/<name>.yaml``: Mammoth's parser
    gives each key the value this project's parser gives it."""
    python, checkout, _, env = mammoth
    methods = [m for m in METHODS if os.path.isfile(os.path.join(ROOT, "models", "config", f"{m}.yaml"))]
    assert {"simplecil", "seed", "apt", "inflora"} <= set(methods)
    script = os.path.join(ROOT, "tests", "mammoth_export_configs.py")
    here, there = str(tmp_path / "here.json"), str(tmp_path / "there.json")
    subprocess.run([sys.executable, script, "project", here, ",".join(methods)], check=True, cwd=ROOT, env=env,
                   capture_output=True)
    done = subprocess.run([python, script, "mammoth", there, ",".join(methods)], cwd=checkout, env=env,
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    with open(here) as fh_here, open(there) as fh_there:
        a, b = json.load(fh_here), json.load(fh_there)
    assert a["simplecil/seq-cifar100-224"]["aper_adapt"] is False and a["seed/seq-cifar100-224"]["num_experts"] == 5
    assert "(missing)" not in json.dumps(b)
    assert b == a


DEBUG_FLAGS = {"seed": ["--num_experts", "2"]}  # two experts: tasks 2-4 select one by KL in Mammoth's loop


@pytest.mark.parametrize("method", ["second_order", "tmc", "task_arithmetic", "simplecil", "seed"])
def test_debug_line_runs_in_mammoth(mammoth, method):
    python, checkout, data, env = mammoth
    cmd = [python, "main.py", "--model", method, "--dataset", "seq-cifar10", "--lr", "0.001", "--n_epochs", "1",
           "--batch_size", "4", "--non_verbose", "1", "--num_workers", "0", "--seed", "0", "--debug_mode", "1",
           "--base_path", data + os.sep, *DEBUG_FLAGS.get(method, [])]
    done = subprocess.run(cmd, cwd=checkout, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "Accuracy for 5 task(s)" in done.stdout + done.stderr
    if method == "simplecil":  # no optimiser: Mammoth's loop never iterates a train loader
        assert "STOP ITERATION" not in done.stdout


@pytest.fixture(scope="module")
def vit_hub(mammoth):
    """A Hugging Face cache holding random full-size ViT-B/16 weights under the names timm loads (written once)."""
    from tests.mammoth_setup import write_vit_b16_cache
    hub = os.path.join(os.path.dirname(mammoth[2]), "hub")
    write_vit_b16_cache(hub)
    return hub


@pytest.mark.parametrize("method", ["apt", "inflora"])
def test_vit_debug_line_runs_in_mammoth(mammoth, vit_hub, method):
    """The ViT methods on seq-cifar100-224 with Mammoth's own ViT-B/16 backbone (handed to them as timm's class):
    the first task, one optimisation step, the debug-mode evaluation (full-size ViT-B on the CPU: kept short)."""
    python, checkout, data, env = mammoth
    cmd = [python, "main.py", "--model", method, "--dataset", "seq-cifar100-224", "--lr", "0.001", "--n_epochs", "1",
           "--batch_size", "2", "--fitting_mode", "iters", "--n_iters", "1", "--stop_after", "1", "--non_verbose",
           "1", "--num_workers", "0", "--seed", "0", "--debug_mode", "1", "--base_path", data + os.sep]
    done = subprocess.run(cmd, cwd=checkout, env={**env, "HF_HUB_CACHE": vit_hub}, capture_output=True, text=True,
                          timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "Accuracy for 1 task(s)" in done.stdout + done.stderr


VIT_KEYS = {"apt": 15, "inflora": 25}  # what tests/mammoth_export_vit_probe.py saves


@pytest.mark.parametrize("method", ["apt", "inflora"])
def test_vit_methods_same_numbers_in_mammoth_and_here(mammoth, tmp_path, method):
    """APT and InfLoRA over two tasks' first steps on seq-cifar100-224 (a ViT shrunk through both frameworks'
    builders, weights from the same cache): Mammoth's own ViT, the timm copy the export hands to the method and
    this project's ViT compute the same features; InfLoRA's designed projections (from the task's images read
    through Mammoth's dataset), losses, trained parameters, subspace memory and the final logits are the
    project's, to fp32 rounding."""
    from tests.mammoth_setup import write_vit_b16_cache
    python, checkout, data, env = mammoth
    hub = str(tmp_path / "hub")
    write_vit_b16_cache(hub, embed_dim=32, depth=2, num_heads=2)
    env = {**env, "HF_HUB_CACHE": hub, "CL_TEST_VIT_B16_DIMS": "embed_dim=32,depth=2,num_heads=2"}
    probe = os.path.join(ROOT, "tests", "mammoth_export_vit_probe.py")
    here, there = str(tmp_path / "here.pt"), str(tmp_path / "there.pt")
    done = subprocess.run([sys.executable, probe, "project", method, here, data], cwd=ROOT, env=env,
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    done = subprocess.run([python, probe, "mammoth", method, there, data], cwd=checkout, env=env, capture_output=True,
                          text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    a, b = torch.load(here, weights_only=True), torch.load(there, weights_only=True)
    assert list(a) == list(b) and len(a) == VIT_KEYS[method]
    for key in a:
        torch.testing.assert_close(b[key], a[key], rtol=1e-4, atol=1e-6, msg=key)
    torch.testing.assert_close(a["own_vit_features"], a["features"], rtol=1e-5, atol=1e-6)
    assert float(a["0/loss/0"]) != float(a["0/loss/1"]) and bool(torch.isfinite(a["logits"]).all())
    if method == "inflora":  # task 1's branch reads only input directions outside task 0's memory
        for name in [k.split("/", 2)[2] for k in a if k.startswith("0/memory/")]:
            memory, design = a[f"0/memory/{name}"], a[f"1/begin/design/{name}"]
            assert float(torch.trace(memory)) >= 1 and float(torch.trace(design)) > 2.5
            assert float((design @ memory).abs().max()) < 1e-4, name


@pytest.mark.skipif(os.environ.get("CL_MAMMOTH_VIT") != "1", reason="full-size ViT-B/16: set CL_MAMMOTH_VIT=1")
def test_mammoths_own_second_order_tests(mammoth, vit_hub):
    """Mammoth's ``tests/test_second_order.py`` on seq-cifar100-224 with random ViT-B/16 weights in the HF cache."""
    python, checkout, data, env = mammoth
    hub = vit_hub
    os.symlink(data, os.path.join(checkout, "data"))  # Mammoth's tests read ./data/
    done = subprocess.run([python, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/test_second_order.py",
                           "-k", "cifar100"], cwd=checkout, env={**env, "HF_HUB_CACHE": hub}, capture_output=True,
                          text=True)
    assert done.returncode == 0, done.stdout[-3000:]


@pytest.mark.skipif(os.environ.get("CL_MAMMOTH_VIT") != "1", reason="full-size ViT-B/16: set CL_MAMMOTH_VIT=1")
def test_simplecil_debug_line_on_mammoths_vit(mammoth):
    """SimpleCIL's debug line on seq-cifar100-224 with Mammoth's ViT-B/16 (random weights in the HF cache; about
    6.5 min of CPU): the backbone view of Mammoth's ViT and the 224-pixel test transform, ten tasks untrained."""
    from tests.mammoth_setup import write_vit_b16_cache
    python, checkout, data, env = mammoth
    hub = os.path.join(os.path.dirname(data), "hub")
    write_vit_b16_cache(hub)
    cmd = [python, "main.py", "--model", "simplecil", "--dataset", "seq-cifar100-224", "--lr", "0.001",
           "--n_epochs", "1", "--batch_size", "4", "--non_verbose", "1", "--num_workers", "0", "--seed", "0",
           "--debug_mode", "1", "--base_path", data + os.sep]
    done = subprocess.run(cmd, cwd=checkout, env={**env, "HF_HUB_CACHE": hub}, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "Accuracy for 10 task(s)" in done.stdout + done.stderr and "STOP ITERATION" not in done.stdout


def test_the_contribution_guide_matches_the_export():
    """docs/mammoth.md's section names every exported method and the command and flags the tests run."""
    with open(os.path.join(ROOT, "docs", "mammoth.md")) as fh:
        text = fh.read()
    section = text[text.index("## Contributing a method to Mammoth"):]
    assert "python -m app.export_mammoth --to path/to/mammoth" in section
    for name in METHODS:
        assert f"models/{name}.py" in section, name
    assert "`open_clip_torch` and `six`" in section and all(p.startswith(("open_clip_torch", "six", "ftfy", "regex",
                                                                          "wcwidth")) for p in EXTRA)


def test_adapters_replace_every_reference_to_a_layer():
    """A backbone holding a layer twice (Mammoth's MLP: ``fc1`` and in ``_features``) computes with the adapter."""
    from torch import nn
    from models.second_order_utils.modules import AdaptedLayer, inject_adapters

    class Body(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc1 = nn.Linear(4, 3)
            self.seq = nn.Sequential(self.fc1, nn.ReLU())

        def forward(self, x):
            return self.seq(x)
    body = Body()
    layers = inject_adapters(body, "lora", 1)
    assert list(layers) == ["fc1"]
    assert isinstance(body.fc1, AdaptedLayer) and body.seq[0] is body.fc1
