"""Transforms are tried on one image of the data before training: a failure is one line, and the try leaves the
global random generators as they were (a run's results do not change)."""
from __future__ import annotations

import random

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision import transforms

from datasets.utils.transforms import build_transform, check_on_image
from utils.errors import UserError


def states() -> tuple:
    return torch.get_rng_state(), np.random.get_state()[1].copy(), random.getstate()


def test_trying_a_random_transform_consumes_no_global_randomness():
    image = Image.new("RGB", (12, 12), (10, 20, 30))
    transform = build_transform([{"RandomCrop": {"size": 8, "padding": 2}}, "RandomHorizontalFlip", "ToTensor"])
    torch.manual_seed(5), np.random.seed(5), random.seed(5)
    before = states()
    check_on_image(transform, image, "TRANSFORM")
    after = states()
    assert torch.equal(before[0], after[0]) and np.array_equal(before[1], after[1]) and before[2] == after[2]


def test_a_crop_larger_than_the_images_is_one_line():
    with pytest.raises(UserError, match=r"TRANSFORM fails on the 6x6 images .*crop size \(9, 9\)"):
        check_on_image(build_transform([{"RandomCrop": {"size": 9}}, "ToTensor"]), Image.new("RGB", (6, 6)),
                       "TRANSFORM")


def test_a_transform_must_end_in_a_tensor():
    with pytest.raises(UserError, match="no ToTensor"):
        build_transform([{"Resize": {"size": 8}}])
    with pytest.raises(UserError, match=r"not a \(C, H, W\) tensor"):
        check_on_image(transforms.Compose([transforms.ToTensor(), transforms.Lambda(lambda x: x[0])]),
                       Image.new("RGB", (4, 4)), "TEST_TRANSFORM")
