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


def local_file_overlay(path: str, flag: str = "--pretrained_path") -> dict[str, Any]:
    """``pretrained_cfg_overlay`` loading a user's local weights file (.pth/.bin/.safetensors, or a JAX .npz)."""
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
    # .npz files are Google's JAX checkpoints: timm reads them with the model's own ``load_pretrained``.
    return {"file": path, "custom_load": path.lower().endswith(".npz")}


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
            return {"file": cached, "custom_load": False}
        from huggingface_hub import constants
        if not hub_offline() and host_reachable(constants.ENDPOINT):
            return {}
        where = f"Hugging Face hub ({hub_id})"
    elif url:
        cached = cached_url_file(url)
        if cached:
            return {"file": cached, "custom_load": bool(getattr(cfg, "custom_load", False))}
        if not hub_offline() and host_reachable(url):
            return {}
        where = url
    else:
        raise UserError(f"timm has no downloadable weights for '{tag}'; {how_to_fix}")
    raise UserError(f"pretrained weights '{tag}' are not in the local cache and the {where} cannot be "
                    f"reached (offline); {how_to_fix}")


def create_timm_model(arch: str, tag: Optional[str], pretrained: bool, pretrained_path: Optional[str],
                      how_to_fix: str, overlay: Optional[dict[str, Any]] = None, **kwargs: Any) -> nn.Module:
    """``timm.create_model(arch.tag, ...)`` with the weight sources above.

    ``pretrained_path`` (a local file) wins over the registry weights of ``tag``; ``overlay`` adjusts the
    registry's pretrained config (e.g. another URL). Download failures become one-line UserErrors.
    """
    import timm
    from timm.models import get_pretrained_cfg

    name = f"{arch}.{tag}" if tag else arch
    if not pretrained:
        return timm.create_model(arch, pretrained=False, **kwargs)
    if pretrained_path:
        cfg_overlay = local_file_overlay(pretrained_path)
    else:
        cfg = get_pretrained_cfg(name)
        if cfg is None:
            raise UserError(f"timm has no pretrained config '{name}'")
        if overlay:
            import dataclasses
            cfg = dataclasses.replace(cfg, **overlay)
        cfg_overlay = {**(overlay or {}), **remote_weights_overlay(name, cfg, how_to_fix)}
    try:
        return timm.create_model(name, pretrained=True, pretrained_cfg_overlay=cfg_overlay, **kwargs)
    except (UserError, TypeError, AttributeError, NameError):  # user errors pass; programming errors stay loud
        raise
    except Exception as exc:  # noqa: BLE001 - hub/http/file errors of many libraries
        source = pretrained_path or name
        detail = " ".join(str(exc).split())[:200]
        raise UserError(f"cannot load pretrained weights {source} into {arch}: {type(exc).__name__}: {detail}; "
                        f"{how_to_fix}") from exc
