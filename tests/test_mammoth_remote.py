"""--loadcheck from https / Hugging Face / OneDrive URLs and the OneDrive dataset mirrors, with the network
faked at its boundary (urllib's opener, huggingface_hub.hf_hub_download, onedrivedownloader.download)."""
import hashlib
import io
import os
import zipfile

import numpy as np
import pytest
import torch

import datasets.utils.download as download
from backbone import get_backbone
from tests.conftest import make_npz, tiny_run_args
from tests.dataset_builders import dataset_for
from utils import checkpoints
from app.config import parse_args
from utils.errors import UserError
from app.remote import resolve_checkpoint
from app.runner import main, run


class FakeResponse(io.BytesIO):
    status = 200

    def __init__(self, payload):
        super().__init__(payload)
        self.headers = {"Content-Length": str(len(payload))}


@pytest.fixture
def network(monkeypatch):
    """Downloads allowed, but every request is served by the test (and counted)."""
    monkeypatch.delenv("CL_NO_DOWNLOAD", raising=False)
    served = {"urls": [], "files": {}}

    def fake_open(url, start, timeout):
        served["urls"].append(url)
        if url not in served["files"]:
            raise download.urllib.error.URLError("no route (test)")
        return FakeResponse(served["files"][url])

    monkeypatch.setattr(download, "_open", fake_open)
    return served


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_npz(str(tmp_path_factory.mktemp("remote") / "d.npz"), n_classes=6, per_class=6)


def test_https_checkpoint_is_verified_cached_and_resumed(network, data, tmp_path, capsys):
    base = ["--model", "sgd", *tiny_run_args(data, tmp_path, n_tasks=3), "--plots", "0"]
    full = run([*base, "--results_file", str(tmp_path / "full.json")])
    run([*base, "--savecheck", "task", "--stop_after", "1", "--ckpt_name", "part",
         "--results_file", str(tmp_path / "part.json")])
    payload = (tmp_path / "ckpt" / "part" / "task_1.pt").read_bytes()
    url = "https://example.org/ckpts/task_1.pt"
    network["files"][url] = payload
    digest = hashlib.sha256(payload).hexdigest()
    bad = main([*base, "--loadcheck", f"{url}#sha256={'0' * 64}", "--results_file", str(tmp_path / "x.json")])
    assert bad == 2 and "sha256 mismatch" in capsys.readouterr().err
    assert not [f for f in os.listdir(tmp_path / "ckpt" / "downloads") if f.endswith(".pt")]  # nothing kept
    resumed = run([*base, "--loadcheck", f"{url}#sha256={digest}", "--results_file", str(tmp_path / "r.json")])
    assert resumed["accuracy_matrix_class_il"] == full["accuracy_matrix_class_il"]  # same as never stopping
    n_requests = len(network["urls"])
    run([*base, "--loadcheck", f"{url}#sha256={digest}", "--results_file", str(tmp_path / "r2.json")])
    assert len(network["urls"]) == n_requests  # the second run uses the cached file


def mammoth_style_weights(net):
    """``net``'s weights under Mammoth's key names (``net.<timm key>``, ``net.head.heads.<k>``), two heads."""
    state = {f"net.{k[len('body.'):]}": v.clone() + 1 for k, v in net.state_dict().items() if k.startswith("body.")}
    w, b = net.classifier.weight.detach() + 1, net.classifier.bias.detach() + 1
    state.update({"net.head.heads.0.weight": w[:4], "net.head.heads.0.bias": b[:4],
                  "net.head.heads.1.weight": w[4:], "net.head.heads.1.bias": b[4:]})
    return {"model": state, "args": {"model": "sgd"}, "results": [], "optimizer": {}}


def test_hugging_face_url_with_a_mammoth_checkpoint(monkeypatch, data, tmp_path, capsys):
    monkeypatch.delenv("CL_NO_DOWNLOAD", raising=False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    args = ["--model", "sgd", *tiny_run_args(data, tmp_path, n_tasks=3), "--plots", "0"]
    ns = parse_args(args)
    net = get_backbone(ns, 6, 8)
    state = mammoth_style_weights(net)
    stored = tmp_path / "hub" / "model.pt"
    stored.parent.mkdir()
    torch.save(state, stored)
    calls = []

    def fake_hf_hub_download(repo_id, filename, revision=None, **kw):
        calls.append((repo_id, filename, revision))
        return str(stored)

    import huggingface_hub
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", fake_hf_hub_download)
    path = resolve_checkpoint("https://huggingface.co/someone/mammoth/resolve/v1/ckpts/model.pt", str(tmp_path))
    assert path == str(stored) and calls == [("someone/mammoth", "ckpts/model.pt", "v1")]
    assert resolve_checkpoint("hf://someone/mammoth/model.pt@main", str(tmp_path)) == str(stored)
    fresh = get_backbone(ns, 6, 8)
    loaded, left = checkpoints.load_foreign_weights(fresh, str(stored))
    assert (loaded, left) == (len(fresh.state_dict()), 0)
    for k, v in fresh.state_dict().items():
        assert torch.equal(v, net.state_dict()[k] + 1), k
    res = run([*args, "--loadcheck", "hf://someone/mammoth/model.pt", "--inference_only", "1",
               "--results_file", str(tmp_path / "r.json")])
    assert res["complete"] and f"loaded {loaded} tensors" in capsys.readouterr().err


def test_onedrive_checkpoint_link(monkeypatch, tmp_path):
    monkeypatch.delenv("CL_NO_DOWNLOAD", raising=False)
    calls = []

    def fake_download(url, filename, unzip=True, **kw):
        calls.append((url, unzip))
        torch.save({"w": torch.ones(2)}, filename)
        return filename

    import onedrivedownloader
    monkeypatch.setattr(onedrivedownloader, "download", fake_download)
    link = "https://unimore365-my.sharepoint.com/:u:/g/personal/x/AbC?e=1"
    path = resolve_checkpoint(link, str(tmp_path))
    assert calls == [(link, False)] and torch.equal(torch.load(path, weights_only=True)["w"], torch.ones(2))
    assert resolve_checkpoint(link, str(tmp_path)) == path and len(calls) == 1  # cached


def test_unreachable_url_is_a_one_line_error(network, data, tmp_path, capsys):
    code = main(["--model", "sgd", *tiny_run_args(data, tmp_path), "--loadcheck", "https://example.org/missing.pt"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "cannot download https://example.org/missing.pt" in err[0]


def zip_bytes(files):
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as zf:
        for name, payload in files.items():
            zf.writestr(name, payload)
    return buffer.getvalue()


def fake_onedrive(monkeypatch, payload):
    calls = []

    def fake_download(url, filename, unzip=True, **kw):
        calls.append(url)
        with open(filename, "wb") as fh:
            fh.write(payload)
        return filename

    import onedrivedownloader
    monkeypatch.setattr(onedrivedownloader, "download", fake_download)
    monkeypatch.delenv("CL_NO_DOWNLOAD", raising=False)
    return calls


def npz_bytes(n, seed):
    rng = np.random.RandomState(seed)
    buffer = io.BytesIO()
    np.savez(buffer, data=rng.randint(0, 255, (n, 4, 4, 3)).astype(np.uint8), targets=np.arange(n) % 200)
    return buffer.getvalue()


def test_cub200_falls_back_to_the_onedrive_mirror(monkeypatch, tmp_path):
    calls = fake_onedrive(monkeypatch, zip_bytes({"CUB200/train_data.npz": npz_bytes(400, 0),
                                                  "CUB200/test_data.npz": npz_bytes(200, 1)}))
    link = "https://x.sharepoint.com/:u:/g/cub?e=1"
    ds = dataset_for(tmp_path, "--dataset", "seq-cub200", "--onedrive_url", link)
    train, test = ds.splits  # Hugging Face is offline (HF_HUB_OFFLINE): the mirror is used
    assert calls == [link] and len(train) == 400 and len(test) == 200
    assert sorted(os.listdir(tmp_path / "CUB200"))[:2] == ["cub200.zip", "test_data.npz"]


def test_cropdisease_mirror_and_error_without_one(monkeypatch, tmp_path):
    from PIL import Image
    png = io.BytesIO()
    Image.new("RGB", (8, 8), (10, 20, 30)).save(png, format="PNG")
    files = {f"{split}/class_{c:02d}/0.png": png.getvalue() for split in ("train", "test") for c in range(35)}
    fake_onedrive(monkeypatch, zip_bytes(files))
    ds = dataset_for(tmp_path, "--dataset", "seq-cropdisease", "--onedrive_url", "https://1drv.ms/u/s!abc")
    train, test = ds.splits
    assert len(train) == 35 and len(test) == 35
    with pytest.raises(UserError, match="data not found and download failed"):
        dataset_for(tmp_path / "other", "--dataset", "seq-resisc45", "--onedrive_url", "none").splits


def _png(color) -> bytes:
    from PIL import Image
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8), color).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.mark.parametrize("dataset, n_classes", [("seq-cropdisease", 35), ("seq-resisc45", 45)])
def test_default_mirror_is_mammoths_and_its_manifest_layout_is_read(dataset, n_classes, monkeypatch, tmp_path):
    """No --onedrive_url: Mammoth's own link is tried, and its archive layout (an image list in JSON for
    CropDisease, in YAML for RESISC45, one top folder) is read with the labels it lists."""
    import json

    import yaml
    from datasets.utils.download import MAMMOTH_ONEDRIVE
    files, tables = {}, {}
    for split in ("train", "test"):
        paths = [f"{c:02d}_name/{split}_{c}.png" for c in range(n_classes)]
        labels = [(c * 2) % n_classes for c in range(n_classes)]  # labels not in folder order: read, not inferred
        for p, y in zip(paths, labels):
            files[p] = _png((y, 0, 0))
        tables[split] = (paths, labels)
    if dataset == "seq-cropdisease":
        archive = {f"cropdisease/images/{p}": v for p, v in files.items()}
        for split, (paths, labels) in tables.items():
            archive[f"cropdisease/{split}.json"] = json.dumps({"data": paths, "labels": labels})
    else:
        archive = {f"NWPU-RESISC45/{p}": v for p, v in files.items()}
        for split, (paths, labels) in tables.items():
            archive[f"NWPU-RESISC45/resisc45_{split}.yaml"] = yaml.safe_dump({"data": paths, "targets": labels})
    calls = fake_onedrive(monkeypatch, zip_bytes(archive))
    ds = dataset_for(tmp_path, "--dataset", dataset)
    train, test = ds.splits
    assert calls == [MAMMOTH_ONEDRIVE[dataset]]
    assert len(train) == n_classes and len(test) == n_classes
    assert train.targets.tolist() == tables["train"][1]
    assert [train.image(i).getpixel((0, 0))[0] for i in range(3)] == tables["train"][1][:3]  # the right files
    assert ds.CLASS_NAMES[(3 * 2) % n_classes] == "03_name"
