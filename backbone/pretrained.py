"""Helpers for pretrained weights: by-position key remapping and timm weight sources that fail fast offline.

timm's own ``pretrained=True`` machinery does the loading (Hugging Face cache, URL cache, local files
through ``pretrained_cfg_overlay=dict(file=...)``). What this module adds:

* weights already in the local cache are loaded as a local file, so a cached run never touches the network;
* when they are not cached and the machine is offline (``HF_HUB_OFFLINE=1`` or the host is unreachable),
  a one-line :class:`UserError` names the missing weights and says how to supply them, instead of timm's
  ~50 s of retries followed by a traceback.
"""
from __future__ import annotations

import os
import socket
from collections import OrderedDict
from typing import Any, Mapping, Optional
from urllib.parse import urlparse

import torch
from torch import nn

from utils.errors import UserError

HUB_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
LOCAL_WEIGHT_SUFFIXES = (".pth", ".pt", ".bin", ".npz", ".safetensors")


def remap_by_position(source: Mapping[str, torch.Tensor], target: Mapping[str, torch.Tensor],
                      what: str = "weights") -> "OrderedDict[str, torch.Tensor]":
    """Rename ``source`` entries to ``target``'s keys pairing them by position; shapes must agree.

    Used when two implementations of one architecture store the same tensors in the same order
    under different names (e.g. EfficientNet-PyTorch vs timm).
    """
    if len(source) != len(target):
        raise ValueError(f"{what}: {len(source)} source entries but the model has {len(target)}")
    mapped: "OrderedDict[str, torch.Tensor]" = OrderedDict()
    for (src_key, src), (dst_key, dst) in zip(source.items(), target.items()):
        if tuple(src.shape) != tuple(dst.shape):
            raise ValueError(f"{what}: {src_key} {tuple(src.shape)} does not fit {dst_key} {tuple(dst.shape)}")
        mapped[dst_key] = src
    return mapped


def hub_offline() -> bool:
    """True when the Hugging Face hub must not be contacted (``HF_HUB_OFFLINE`` / ``TRANSFORMERS_OFFLINE``)."""
    try:
        from huggingface_hub import constants
        if getattr(constants, "HF_HUB_OFFLINE", False):
            return True
    except ImportError:
        pass
    return any(os.environ.get(var, "").strip().lower() in ("1", "true", "yes", "on")
               for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))


def host_reachable(url: str, timeout: float = 3.0) -> bool:
    """Whether a TCP connection to ``url``'s host can be opened within ``timeout`` seconds."""
    parsed = urlparse(url)
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    try:
        with socket.create_connection((parsed.hostname or "", port), timeout=timeout):
            return True
    except OSError:
        return False


def cached_hub_file(hf_hub_id: str) -> Optional[str]:
    """Path of a weights file of ``hf_hub_id`` (``repo`` or ``repo@revision``) in the local HF cache, if any."""
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:
        return None
    repo, _, revision = hf_hub_id.partition("@")
    for filename in HUB_WEIGHT_FILES:
        path = try_to_load_from_cache(repo, filename, revision=revision or None)
        if isinstance(path, str) and os.path.isfile(path):
            return path
    return None


def cached_url_file(url: str) -> Optional[str]:
    """Path of ``url``'s download in torch's hub cache (``$TORCH_HOME/hub/checkpoints``), if present."""
    path = os.path.join(torch.hub.get_dir(), "checkpoints", os.path.basename(urlparse(url).path))
    return path if os.path.isfile(path) else None


def check_weights_file(path: str, flag: str = "--pretrained_path") -> str:
    """``path`` if it is an existing weights file of a known format, else a one-line UserError."""
    path = os.path.expanduser(path)
    if not os.path.isfile(path):
        raise UserError(f"{flag} {path}: no such file; give a .pth, .npz or .safetensors weights file")
    if not path.lower().endswith(LOCAL_WEIGHT_SUFFIXES):
        raise UserError(f"{flag} {path}: unknown weights format; use one of {', '.join(LOCAL_WEIGHT_SUFFIXES)}")
    if path.lower().endswith(".safetensors"):
        try:
            import safetensors  # noqa: F401
        except ImportError:
            raise UserError(f"{flag} {path}: reading .safetensors needs `pip install safetensors`") from None
    return path


def headless_file_overlay(path: str, classifier: Any = "head") -> dict[str, Any]:
    """``pretrained_cfg_overlay`` that loads a weights file into a headless (``num_classes=0``) timm model.

    Google's JAX ``.npz`` files go through the model's own ``load_pretrained`` (timm's npz reader, which
    skips the head of a headless model). Other files are read with timm's ``load_state_dict`` (weights
    only; plain, ``state_dict``/``model``-nested, or safetensors), the classifier is dropped, and timm's
    filter (patch/position-embedding resampling, format conversions) and a *strict* load follow, so a
    file for another architecture fails instead of silently leaving weights random.
    """
    if path.lower().endswith(".npz"):
        return {"file": path, "custom_load": True}
    from timm.models import load_state_dict
    state = load_state_dict(path)
    for name in ((classifier,) if isinstance(classifier, str) else tuple(classifier or ())):
        state.pop(f"{name}.weight", None)
        state.pop(f"{name}.bias", None)
    return {"state_dict": state, "num_classes": 0, "custom_load": False}


def remote_weights_overlay(tag: str, cfg: Any, how_to_fix: str) -> dict[str, Any]:
    """``pretrained_cfg_overlay`` for the registry weights of timm ``tag`` (``cfg`` is its pretrained config).

    Cached weights become a local-file overlay; missing weights on an offline machine raise a one-line
    UserError ending with ``how_to_fix``; otherwise ``{}`` lets timm download them as usual.
    """
    hub_id = getattr(cfg, "hf_hub_id", None)
    url = getattr(cfg, "url", None)
    if hub_id:
        cached = cached_hub_file(hub_id)
        if cached:
            return headless_file_overlay(cached, cfg.classifier)
        from huggingface_hub import constants
        if not hub_offline() and host_reachable(constants.ENDPOINT):
            return {}
        where = f"the Hugging Face hub ({hub_id})"
    elif url:
        cached = cached_url_file(url)
        if cached:
            return headless_file_overlay(cached, cfg.classifier)
        if not hub_offline() and host_reachable(url):
            return {}
        where = url
    else:
        raise UserError(f"timm has no downloadable weights for '{tag}'; {how_to_fix}")
    raise UserError(f"pretrained weights '{tag}' are not in the local cache and {where} cannot be reached "
                    f"(offline); {how_to_fix}")


def create_headless_timm_model(arch: str, tag: Optional[str], pretrained: bool, pretrained_path: Optional[str],
                               how_to_fix: str, overlay: Optional[dict[str, Any]] = None,
                               **kwargs: Any) -> nn.Module:
    """``timm.create_model(arch.tag, num_classes=0, ...)``: a feature extractor, weights from the sources above.

    ``pretrained_path`` (a local file) wins over the registry weights of ``tag``; ``overlay`` adjusts the
    registry's pretrained config (e.g. another URL). Every loading failure becomes a one-line UserError
    ending with ``how_to_fix``.
    """
    import dataclasses

    import timm
    from timm.models import get_pretrained_cfg

    if not pretrained:
        return timm.create_model(arch, pretrained=False, num_classes=0, **kwargs)
    name = f"{arch}.{tag}" if tag else arch
    path = check_weights_file(pretrained_path) if pretrained_path else None
    try:
        cfg = get_pretrained_cfg(name)
    except RuntimeError:  # timm: "Invalid pretrained tag"
        cfg = None
    if cfg is None and path:  # a local file needs no registry weights: use the architecture's default config
        name, overlay = arch, None
        cfg = get_pretrained_cfg(arch)
    if cfg is None:
        raise UserError(f"timm has no pretrained weights named '{name}'; {how_to_fix}")
    if overlay:
        cfg = dataclasses.replace(cfg, **overlay)
    try:
        source = headless_file_overlay(path, cfg.classifier) if path else remote_weights_overlay(name, cfg, how_to_fix)
        model = timm.create_model(name, pretrained=True, pretrained_cfg_overlay={**(overlay or {}), **source},
                                  num_classes=0, **kwargs)
    except (UserError, TypeError, AttributeError, NameError):  # user errors pass; programming errors stay loud
        raise
    except Exception as exc:  # noqa: BLE001 - hub/http/file errors of several libraries
        detail = " ".join(str(exc).split())[:300]
        raise UserError(f"cannot load pretrained weights {path or name} into {arch}: {type(exc).__name__}: "
                        f"{detail}; {how_to_fix}") from exc
    if isinstance(getattr(model, "pretrained_cfg", None), dict):  # timm keeps the overlay: not a second copy of
        model.pretrained_cfg.pop("state_dict", None)                # the weights in host memory, beside the model's
    return model
