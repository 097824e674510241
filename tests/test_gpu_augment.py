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


@pytest.mark.parametrize("mode", ["bicubic", "bilinear"])
def test_crop_resize_gives_kornias_crop_and_resize(mode):
    from kornia.geometry.transform import crop_and_resize
    from datasets.utils.gpu_augment import crop_resize
    images = torch.rand(32, 3, H, W, generator=torch.Generator().manual_seed(0))
    crops = sample_crops(32, H, W, SCALE, RATIO, torch.Generator().manual_seed(4))
    top, left, h, w = crops.unbind(1)
    x0, y0, x1, y1 = left, top, left + w - 1, top + h - 1
    boxes = torch.stack([torch.stack([x0, y0], 1), torch.stack([x1, y0], 1), torch.stack([x1, y1], 1),
                         torch.stack([x0, y1], 1)], 1).float()
    ref = crop_and_resize(images, boxes, (24, 24), mode=mode, align_corners=True)
    assert torch.allclose(crop_resize(images, crops, 24, mode), ref, atol=2e-5)


class HostTraffic(torch.utils._python_dispatch.TorchDispatchMode):
    """Counts the ops that are a host-device copy or a host sync on an accelerator: a tensor made from Python
    values, a value read back, a copy between devices (none of which the CPU shows as a copy)."""

    def __init__(self):
        super().__init__()
        self.ops = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = str(func)
        devices = {a.device for a in torch.utils._pytree.tree_flatten((args, kwargs))[0] if isinstance(a, torch.Tensor)}
        if "lift_fresh" in name or "_local_scalar_dense" in name or \
                (name.startswith(("aten._to_copy", "aten.copy_")) and ("device" in kwargs or len(devices) > 1)):
            self.ops.append(name)
        return func(*args, **kwargs)


def test_augmenting_a_batch_makes_no_host_device_copy():
    aug = DeviceRRCFlip(24, mean=(0.5, 0.4, 0.3), std=(0.2, 0.2, 0.2), seed=1)
    images = torch.rand(16, 3, H, W)
    aug(images)  # the first call places the constants on the device
    assert all(t.device == images.device for t in aug.constants(images.device))
    with HostTraffic() as traffic:
        for _ in range(3):
            aug(images)
            aug(images, rows=(32, 16))
    assert traffic.ops == []
    with HostTraffic() as traffic:  # the counter does see what it must not find
        torch.tensor([1.0, 2.0]).sum().item()
    assert traffic.ops == ["aten.lift_fresh.default", "aten._local_scalar_dense.default"]


def test_shares_of_a_global_batch_get_the_crops_and_flips_of_their_global_rows():
    images = torch.rand(10, 3, H, W, generator=torch.Generator().manual_seed(2))
    whole = [DeviceRRCFlip(16, (0.5,) * 3, (0.25,) * 3, seed=9) for _ in range(3)]
    ref = torch.cat([whole[0](images), whole[0](images[:7])])  # two global batches, one process
    first, second = whole[1], whole[2]  # two ranks: rows 0-4 / 5-9 of the first batch, 0-3 / 4-6 of the second
    rank0 = torch.cat([first(images[:5], rows=(10, 0)), first(images[:4], rows=(7, 0))])
    rank1 = torch.cat([second(images[5:], rows=(10, 5)), second(images[4:7], rows=(7, 4))])
    assert torch.equal(torch.cat([rank0[:5], rank1[:5], rank0[5:], rank1[5:]]), ref)


def test_a_sharded_device_augmented_loader_equals_the_single_process_loader(tmp_path, monkeypatch):
    """Each rank's batches, concatenated in rank order, are the single process's batches: same images, same crop
    and flip per global image index (batch 8 over 2 ranks, 20 images: a final batch of 4)."""
    from datasets.utils.gpu_augment import DeviceAugmentedLoader
    from tests.dataset_builders import dataset_for, write_cifar100
    from utils import distributed
    write_cifar100(tmp_path, per_class_train=2)
    argv = ("--dataset", "seq-cifar100-224", "--backbone", "resnet18", "--device", "cpu", "--gpu_augmentation", "1",
            "--num_workers", "0", "--seed", "3")

    def batches(world: int, rank: int, size: int = 8) -> list:
        monkeypatch.setattr(distributed, "world_size", lambda: world)
        monkeypatch.setattr(distributed, "rank", lambda: rank)
        loader = dataset_for(tmp_path, *argv).get_data_loaders()[0]
        assert isinstance(loader, DeviceAugmentedLoader)
        loader.loader.batch_sampler.batch_size = size
        return [(x, y) for _ in range(2) for x, y, _ in loader]  # two passes (epochs)

    single, shares = batches(1, 0), [batches(2, r) for r in range(2)]
    assert [len(y) for _, y in single] == [8, 8, 4] * 2
    for i, (x, y) in enumerate(single):
        assert torch.equal(torch.cat([shares[0][i][1], shares[1][i][1]]), y)
        assert torch.allclose(torch.cat([shares[0][i][0], shares[1][i][0]]), x, atol=1e-6)
    assert not torch.allclose(single[0][0], single[3][0])  # the second pass draws anew
    # the batch size does not change an image's augmentation either (the statistics passes rely on it)
    small = batches(1, 0, size=5)
    assert torch.allclose(torch.cat([x for x, _ in small]), torch.cat([x for x, _ in single]), atol=1e-6)
