"""Data in the official on-disk layouts and random ViT-B/16-named weights in a Hugging Face cache, for running
Mammoth's own test command lines (tests/test_mammoth_lines.py)."""
from __future__ import annotations

import os

import torch

from tests.dataset_builders import write_cifar100, write_class_tree, write_idx_set
from tests.test_datasets_core import write_cifar10

VIT_TAGS = ("augreg2_in21k_ft_in1k", "augreg_in21k")  # --pretrain_type in21k-ft-in1k (default) and in21k


def write_all_datasets(base: str) -> None:
    """MNIST (IDX), CIFAR-10/100 (python pickles), CropDisease (train/test class folders), ImageNet-R (wnid folders)."""
    write_idx_set(os.path.join(base, "MNIST", "raw"), per_class_train=2, per_class_test=1)
    write_cifar10(base, per_class=1)
    write_cifar100(base, per_class_train=1, per_class_test=1)
    crops = [f"crop_{i:02d}" for i in range(35)]
    for split in ("train", "test"):  # square, as the real 256x256 leaves (its ITA test transform has no crop)
        write_class_tree(os.path.join(base, "cropdisease", split), crops, per_class=1, size=(8, 8))
    write_class_tree(os.path.join(base, "imagenet-r"), [f"n{i:08d}" for i in range(200)], per_class=2)


def write_vit_b16_cache(hub_cache: str, **dims: int) -> None:
    """Random ``vit_base_patch16_224`` weights (shrunk to ``dims`` if given) where timm looks for the real ones."""
    import timm
    torch.manual_seed(0)
    state = timm.create_model("vit_base_patch16_224", pretrained=False, num_classes=1000, **dims).state_dict()
    commit = "0" * 40
    for tag in VIT_TAGS:
        repo = os.path.join(hub_cache, f"models--timm--vit_base_patch16_224.{tag}")
        os.makedirs(os.path.join(repo, "refs"), exist_ok=True)
        os.makedirs(os.path.join(repo, "snapshots", commit), exist_ok=True)
        with open(os.path.join(repo, "refs", "main"), "w") as fh:
            fh.write(commit)
        torch.save(state, os.path.join(repo, "snapshots", commit, "pytorch_model.bin"))
