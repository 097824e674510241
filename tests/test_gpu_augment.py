"""Device-side RandomResizedCrop + flip (datasets/utils/gpu_augment.py) against torchvision's CPU transform.

Statistics over 20,000 crops of a 32x32 image (the seq-cifar100-224 source): the area fraction, aspect ratio, top
and left offsets follow the same distributions as ``RandomResizedCrop.get_params`` (two-sample Kolmogorov-Smirnov
statistic < 0.02; the 1e-3 critical value at these sizes is 0.019); the flip rate is 1/2 within 0.015.
"""
import numpy as np
import pytest
import torch
from scipy.stats import ks_2samp
from torchvision import transforms

from datasets.utils.gpu_augment import DeviceRRCFlip, sample_crops

N, H, W = 20000, 32, 32
SCALE, RATIO = (0.08, 1.0), (3 / 4, 4 / 3)


def torchvision_crops(n, height=H, width=W, scale=SCALE, ratio=RATIO):
    torch.manual_seed(0)
    image = torch.zeros(3, height, width)
    return np.array([transforms.RandomResizedCrop.get_params(image, list(scale), list(ratio)) for _ in range(n)],
                    dtype=np.float64)


def features(crops):
    top, left, h, w = crops.T
    return {"area": h * w / (H * W), "aspect": w / h, "top": top, "left": left, "h": h}


@pytest.mark.parametrize("scale, ratio", [(SCALE, RATIO), ((0.9, 1.0), (2.0, 3.0))])  # 2nd: fallbacks happen
def test_crop_parameters_follow_torchvision(scale, ratio):
    ref = features(torchvision_crops(N, scale=scale, ratio=ratio))
    ours = features(sample_crops(N, H, W, scale, ratio, torch.Generator().manual_seed(1)).double().numpy())
    for key in ref:
        assert ks_2samp(ref[key], ours[key]).statistic < 0.02, key
    assert (ours["top"] + ours["h"] <= H).all() and (ours["top"] >= 0).all()


def test_a_crop_is_placed_where_its_parameters_say():
    images = torch.rand(64, 3, H, W, generator=torch.Generator().manual_seed(0))
    aug = DeviceRRCFlip(8, mean=(0, 0, 0), std=(1, 1, 1), scale=(1 / 16, 1 / 16), ratio=(1.0, 1.0), seed=3)
    out = aug(images)  # 8x8 crops resized to 8x8: plain slices, possibly mirrored
    crops = sample_crops(64, H, W, (1 / 16, 1 / 16), (1.0, 1.0), torch.Generator().manual_seed(3))
    flipped = 0
    for b, (top, left, h, w) in enumerate(crops.long().tolist()):
        assert (h, w) == (8, 8)
        piece = images[b, :, top:top + 8, left:left + 8]
        if torch.allclose(out[b], piece, atol=1e-5):
            continue
        assert torch.allclose(out[b], piece.flip(-1), atol=1e-5)
        flipped += 1
    assert 16 <= flipped <= 48


def test_flip_rate_is_one_half_and_normalisation_applied():
    ramp = torch.linspace(0, 1, W).expand(1, 1, H, W).repeat(4000, 3, 1, 1)  # brighter to the right
    aug = DeviceRRCFlip(16, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25), scale=(1.0, 1.0), ratio=(1.0, 1.0))
    out = aug(ramp)
    assert abs(float(out.mean()) - 0.0) < 0.05  # (x - 0.5) / 0.25 of a symmetric ramp
    flipped = (out[:, 0, :, 0] > out[:, 0, :, -1]).all(1).float().mean()
    assert abs(float(flipped) - 0.5) < 0.015


def test_seq_cifar100_224_augments_on_the_device_when_asked(tmp_path):
    from datasets.utils.gpu_augment import DeviceAugmentedLoader
    from tests.dataset_builders import dataset_for, write_cifar100
    write_cifar100(tmp_path, per_class_train=2)
    common = ("--dataset", "seq-cifar100-224", "--backbone", "resnet18", "--device", "cpu")
    on = dataset_for(tmp_path, *common, "--gpu_augmentation", "1")
    loader, test_loader = on.get_data_loaders()
    assert isinstance(loader, DeviceAugmentedLoader) and len(loader) == len(loader.loader) == 5
    x, y, _ = next(iter(loader))
    assert x.shape == (4, 3, 224, 224) and y.shape == (4,)
    assert next(iter(test_loader))[0].shape[-1] == 224  # the test pipeline is unchanged
    auto = dataset_for(tmp_path, *common)  # auto: on with CUDA only
    assert not isinstance(auto.get_data_loaders()[0], DeviceAugmentedLoader)


@pytest.mark.parametrize("model, views", [("sgd", (0,)), ("er", (3, 8, 8))])
def test_not_aug_view_built_only_for_models_that_read_it(tmp_path, model, views):
    from tests.conftest import make_npz, tiny_run_args
    from tests.test_second_order_model import build
    extra = ("--buffer_size", "8") if model == "er" else ()
    _, dataset, _ = build(["--model", model, *tiny_run_args(make_npz(str(tmp_path / "d.npz")), tmp_path), *extra])
    assert tuple(dataset.train_dataset(0)[0][2].shape) == views


def test_yaml_transforms_map_to_the_device_pipeline():
    from datasets.utils.gpu_augment import rrc_flip_spec
    ops = [{"RandomResizedCrop": {"size": 224, "interpolation": 3}}, "RandomHorizontalFlip", "ToTensor",
           {"Normalize": {"mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5]}}]
    spec = rrc_flip_spec(ops, None, None)
    assert spec == {"size": 224, "scale": (0.08, 1.0), "ratio": (3 / 4, 4 / 3), "mean": (0.5, 0.5, 0.5),
                    "std": (0.5, 0.5, 0.5), "mode": "bicubic"}
    assert rrc_flip_spec([ops[0], {"RandomHorizontalFlip": {"p": 0.2}}, *ops[2:]], None, None) is None
    assert rrc_flip_spec(ops[:1] + ["ColorJitter"] + ops[1:], None, None) is None
