"""Checkpoints: atomic, checksummed, loaded with ``weights_only=True``; resume after the last complete task.

Layout: ``<checkpoint_path>/<run name>/task_<k>.pt`` holds the state after tasks 0..k-1 were
trained and evaluated (k = tasks done). Each file is a 72-byte header (``MAGIC`` and the hex sha256
of the rest) followed by the ``torch.save`` of the state, streamed to disk while it is hashed (no
in-memory copy); a truncated or corrupted file is detected and the previous good one is used.
Models leave their frozen pretrained weights out of the state (:mod:`utils.frozen_weights`).
"""
from __future__ import annotations

import argparse
import hashlib
import io
import os
import random
import re
import warnings
from typing import Any, Optional

import numpy as np
import torch

from utils import accelerator
from utils.args import changes_results, result_args
from utils.errors import UserError
from utils.io import atomic_write

FORMAT_VERSION = 2
MAGIC = b"CLCKPT02"
HEADER = len(MAGIC) + 64
CHUNK = 1 << 20


def run_name(args: argparse.Namespace) -> str:
    """``--ckpt_name`` or ``<model>_<dataset>_s<seed>_<hash of the result-changing args>``."""
    if args.ckpt_name:
        return args.ckpt_name
    digest = hashlib.sha256(repr(result_args(args)).encode()).hexdigest()[:10]
    return f"{args.model}_{args.dataset}_s{args.seed}_{digest}"


def semantic_differences(saved: dict[str, Any], args: argparse.Namespace) -> list[str]:
    """``key: saved -> now`` for each result-changing argument that differs between a checkpoint and ``args``."""
    now = vars(args)
    keys = sorted(k for k in set(saved) | set(now) if changes_results(k))
    return [f"{k}: {saved.get(k)!r} -> {now.get(k)!r}" for k in keys if saved.get(k) != now.get(k)]


def check_checkpoint_matches(path: str, saved: dict[str, Any], args: argparse.Namespace, strict: bool) -> None:
    """A checkpoint must come from the same model and dataset; with ``strict`` (``--resume``) from the same
    semantic arguments too. Without ``--ckpt_name`` the run folder is keyed by a hash of the semantic
    arguments, so ``--resume`` can only find a checkpoint of identical arguments; ``--ckpt_name`` makes the
    folder name explicit, and this check then refuses a checkpoint of different arguments."""
    if (saved.get("model"), saved.get("dataset")) != (args.model, args.dataset):
        raise UserError(f"checkpoint {path} is from model {saved.get('model')} on {saved.get('dataset')}, "
                        f"not {args.model} on {args.dataset}; pick the matching checkpoint")
    if strict:
        diff = semantic_differences(saved, args)
        if diff:
            raise UserError(f"checkpoint {path} was made with other arguments ({'; '.join(diff[:3])}); resume with "
                            f"the same arguments, or start a new run under another --ckpt_name")


def run_dir(args: argparse.Namespace) -> str:
    return os.path.join(args.checkpoint_path, run_name(args))


def rng_state() -> dict[str, Any]:
    """The global RNG states: torch's CPU generator, numpy, python and every device of the machine's accelerator."""
    state = {"torch": torch.get_rng_state(), "numpy": _numpy_state(), "python": _python_state()}
    devices = accelerator.rng_states()
    if devices is not None:
        state["device"] = devices
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    kind, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), int(pos), int(has_gauss), float(gauss)))
    version, internal, gauss_next = state["python"]
    random.setstate((int(version), tuple(int(v) for v in internal.tolist()), gauss_next))
    if "cuda" in state:  # written before the device-generic layout
        accelerator.set_rng_states({"type": "cuda", "states": state["cuda"]})
    accelerator.set_rng_states(state.get("device"))


def _numpy_state() -> list:
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    return [kind, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(gauss)]


def _python_state() -> list:
    version, internal, gauss_next = random.getstate()
    return [version, torch.tensor(internal, dtype=torch.int64), gauss_next]


class _HashingWriter:
    """A write-only stream that hashes what it passes on to ``fh``."""

    def __init__(self, fh: Any):
        self.fh, self.sha = fh, hashlib.sha256()

    def write(self, data: bytes) -> int:
        self.sha.update(data)
        return self.fh.write(data)

    def flush(self) -> None:
        self.fh.flush()


class _Window(io.RawIOBase):
    """A read-only, seekable view of ``fh`` from byte ``start`` on (``torch.load`` of the payload in place)."""

    def __init__(self, fh: Any, start: int):
        super().__init__()
        self.fh, self.start = fh, start
        self.fh.seek(start)

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        return self.fh.readinto(buffer)

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        if whence == io.SEEK_SET:
            offset += self.start
        return self.fh.seek(offset, whence) - self.start

    def tell(self) -> int:
        return self.fh.tell() - self.start


def save_checkpoint(path: str, state: dict[str, Any]) -> None:
    """Atomically write ``state`` (tensors and plain types), streamed and hashed on the way to disk."""
    def write(fh: Any) -> None:
        fh.write(MAGIC + b"0" * 64)
        writer = _HashingWriter(fh)
        torch.save({**state, "format_version": FORMAT_VERSION}, writer)
        end = fh.tell()
        fh.seek(len(MAGIC))
        fh.write(writer.sha.hexdigest().encode())
        fh.seek(end)

    atomic_write(path, write, binary=True)


def _file_sha256(fh: Any) -> str:
    sha = hashlib.sha256()
    for chunk in iter(lambda: fh.read(CHUNK), b""):
        sha.update(chunk)
    return sha.hexdigest()


def load_checkpoint(path: str) -> dict[str, Any]:
    """Read and verify a checkpoint written by :func:`save_checkpoint` (``weights_only=True``)."""
    try:
        with open(path, "rb") as fh:
            header = fh.read(HEADER)
            if len(header) != HEADER or not header.startswith(MAGIC):
                raise ValueError("no checkpoint header")
            if _file_sha256(fh) != header[len(MAGIC):].decode("ascii", "replace"):
                raise ValueError("checksum mismatch")
            state = torch.load(io.BufferedReader(_Window(fh, HEADER), CHUNK), map_location="cpu",
                               weights_only=True)
    except FileNotFoundError:
        raise UserError(f"checkpoint {path} does not exist") from None
    except Exception as exc:  # truncated zip, bad pickle, wrong structure, checksum
        raise UserError(f"checkpoint {path} is corrupt or not a checkpoint of this framework "
                        f"({type(exc).__name__}: {str(exc)[:80]})") from None
    if not isinstance(state, dict) or state.get("format_version") != FORMAT_VERSION:
        version = state.get("format_version") if isinstance(state, dict) else None
        raise UserError(f"checkpoint {path} has format {version}, expected {FORMAT_VERSION}")
    return state


def load_run_checkpoint(path: str) -> dict[str, Any]:
    """:func:`load_checkpoint` of a run's checkpoint, whose stored arguments are checked."""
    state = load_checkpoint(path)
    check_stored_args(path, state.get("args"))
    return state


def check_stored_args(path: str, stored: Any) -> None:
    """The arguments stored in a checkpoint: a mapping of flag names, naming the model and the dataset."""
    fix = "the file is damaged or was not written by this framework: use another checkpoint"
    if not isinstance(stored, dict):
        what = "no arguments" if stored is None else f"arguments that are a {type(stored).__name__}, not a mapping"
        raise UserError(f"checkpoint {path} stores {what}; {fix}")
    bad = [k for k in stored if not isinstance(k, str)]
    if bad:
        raise UserError(f"checkpoint {path} stores an argument named {bad[0]!r:.40} (not a flag name); {fix}")
    for key in ("model", "dataset"):
        if not isinstance(stored.get(key), str) or not stored[key]:
            raise UserError(f"checkpoint {path} stores no {key} name in its arguments; {fix}")


def checkpoint_path(args: argparse.Namespace, tasks_done: int) -> str:
    return os.path.join(run_dir(args), f"task_{tasks_done}.pt")


def latest_checkpoint(folder: str) -> Optional[tuple[str, dict[str, Any]]]:
    """The newest checkpoint in ``folder`` that verifies; corrupt ones are reported and skipped."""
    if not os.path.isdir(folder):
        return None
    found = []
    for f in os.listdir(folder):
        m = re.fullmatch(r"task_(\d+)\.pt", f)
        if m:
            found.append((int(m.group(1)), os.path.join(folder, f)))
    for _, path in sorted(found, reverse=True):
        try:
            return path, load_checkpoint(path)
        except UserError as exc:
            warnings.warn(f"skipping {exc}; falling back to the previous checkpoint")
    return None


def is_framework_checkpoint(path: str) -> bool:
    """True for a file written by :func:`save_checkpoint` (it starts with ``MAGIC``; only the header is read)."""
    try:
        with open(path, "rb") as fh:
            return fh.read(len(MAGIC)) == MAGIC
    except FileNotFoundError:
        raise UserError(f"checkpoint {path} does not exist") from None
    except OSError:
        return False


def read_foreign_weights(path: str) -> dict[str, torch.Tensor]:
    """The network weights of a checkpoint from elsewhere: Mammoth's (``{"model": ...}``, keys ``net.*``) or a
    bare state dict, loaded with ``weights_only=True``."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise UserError(f"checkpoint {path} is corrupt or not a checkpoint (neither this framework's nor a tensor "
                        f"state dict, as Mammoth's --save_checkpoint_mode safe writes; {type(exc).__name__}: "
                        f"{str(exc).splitlines()[0][:80] if str(exc) else ''})") from None
    if isinstance(state, dict) and isinstance(state.get("model"), dict):
        state = state["model"]
    elif isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    tensors = {k: v for k, v in state.items() if isinstance(v, torch.Tensor)} if isinstance(state, dict) else {}
    if not tensors:
        raise UserError(f"checkpoint {path} holds no state dict (expected Mammoth's {{'model': ...}} or tensors)")
    return tensors


def backbone_keys(weights: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Mammoth/timm key names -> this framework's backbone keys (``body.*``, one ``classifier``).

    ``module.``/``net.`` prefixes are dropped; Mammoth's ``classifier``/``head``/``fc`` and the ViT's
    incremental ``head.heads.<k>`` (concatenated in order) become ``classifier``.
    """
    out: dict[str, torch.Tensor] = {}
    heads: dict[str, list[tuple[int, torch.Tensor]]] = {"weight": [], "bias": []}
    for key, value in weights.items():
        for prefix in ("module.", "net."):
            key = key[len(prefix):] if key.startswith(prefix) else key
        match = re.fullmatch(r"head\.heads\.(\d+)\.(weight|bias)", key)
        if match:
            heads[match.group(2)].append((int(match.group(1)), value))
            continue
        head = re.fullmatch(r"(classifier|head|fc)\.(weight|bias)", key)
        if head:
            out[f"classifier.{head.group(2)}"] = value
        elif key.startswith(("body.", "classifier.")):
            out[key] = value
        else:
            out[f"body.{key}"] = value
    for name, parts in heads.items():
        if parts:
            out[f"classifier.{name}"] = torch.cat([v for _, v in sorted(parts, key=lambda p: p[0])])
    return out


def load_foreign_weights(net: torch.nn.Module, path: str) -> tuple[int, int]:
    """Load a foreign checkpoint's weights into ``net``; returns (loaded, left at their initial value)."""
    weights = backbone_keys(read_foreign_weights(path))
    own = net.state_dict()
    usable = {k: v for k, v in weights.items() if k in own}
    wrong = [k for k, v in usable.items() if tuple(v.shape) != tuple(own[k].shape)]
    if wrong:
        raise UserError(f"checkpoint {path}: {wrong[0]} has shape {tuple(usable[wrong[0]].shape)}, the network "
                        f"{tuple(own[wrong[0]].shape)}; use the backbone and dataset it was trained with")
    if not usable:
        raise UserError(f"checkpoint {path}: none of its {len(weights)} tensors matches the backbone "
                        f"(e.g. {next(iter(weights))}); use the backbone it was trained with")
    net.load_state_dict(usable, strict=False)
    return len(usable), len(own) - len(usable)
