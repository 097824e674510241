"""Lean checkpoints: the backbone's pretrained tensors are not saved, only their hash.

:class:`PretrainedIndex` records, when a model is built, every parameter and buffer of its backbone
(references, no copies) with a sha256 of their initial content. :meth:`PretrainedIndex.strip` then
removes from a checkpoint state every tensor whose content still equals one of them (whatever its
name: a frozen ``W0`` wrapped by an adapter, a clone kept as ``theta0``), writing where it was and
which pretrained tensor it is. :meth:`PretrainedIndex.fill` puts copies of those tensors back when a
freshly built model (same pretrained weights: same digest) resumes; another backbone is refused.

Only content decides: a tensor that was trained (SGD, SLCA, RanPAC's first-task adaptation) no
longer matches and is saved in full, so stripping can never lose information.
"""
from __future__ import annotations

import hashlib
from typing import Any, Iterator, Union

import torch
from torch import nn

from utils.errors import UserError

PROBES = 8  # elements compared before a full hash (cheap rejection of trained tensors)
Path = list[Union[str, int]]


def tensor_digest(tensor: torch.Tensor) -> str:
    """sha256 of a tensor's dtype, shape and bytes (moved to the CPU one tensor at a time)."""
    t = tensor.detach()
    h = hashlib.sha256(f"{t.dtype}{tuple(t.shape)}{'meta' if t.is_meta else ''}".encode())
    if t.numel() and not t.is_meta:  # a meta tensor has no content (device checks build models on it)
        h.update(t.cpu().contiguous().reshape(-1).view(torch.uint8).numpy().data)
    return h.hexdigest()


def _probe(tensor: torch.Tensor) -> tuple:
    """(dtype, shape, a few elements at fixed positions): equal for equal tensors."""
    t = tensor.detach()
    n = t.numel()
    if n == 0 or t.is_meta:
        return (str(t.dtype), tuple(t.shape), b"meta" if t.is_meta else b"")
    idx = torch.linspace(0, n - 1, min(PROBES, n)).long().to(t.device)
    return (str(t.dtype), tuple(t.shape), t.reshape(-1)[idx].cpu().view(torch.uint8).numpy().tobytes())


def _dict_leaves(tree: Any, path: Path) -> Iterator[tuple[Path, torch.Tensor]]:
    """(path, tensor) of every tensor that is a dict value in ``tree`` (lists are searched too)."""
    items = tree.items() if isinstance(tree, dict) else enumerate(tree) if isinstance(tree, list) else ()
    for k, v in items:
        if isinstance(v, torch.Tensor):
            if isinstance(tree, dict):
                yield path + [k], v
        else:
            yield from _dict_leaves(v, path + [k])


def _without(tree: Any, drop: set[tuple]) -> Any:
    """A shallow rebuild of ``tree`` without the leaves at the paths in ``drop`` (tensors are not copied)."""
    def walk(node: Any, path: tuple) -> Any:
        if isinstance(node, dict):
            return {k: walk(v, path + (k,)) for k, v in node.items() if path + (k,) not in drop}
        if isinstance(node, list):
            return [walk(v, path + (i,)) for i, v in enumerate(node)]
        return node
    return walk(tree, ())


class PretrainedIndex:
    """The initial tensors of a backbone, their hashes and a digest identifying the pretrained weights."""

    def __init__(self, backbone: nn.Module):
        seen: set[int] = set()
        self.tensors: list[torch.Tensor] = []
        for t in list(backbone.parameters()) + list(backbone.buffers()):
            if id(t) not in seen:
                seen.add(id(t))
                self.tensors.append(t)
        self.hashes = [tensor_digest(t) for t in self.tensors]
        self.digest = hashlib.sha256("".join(self.hashes).encode()).hexdigest()
        self._by_probe: dict[tuple, list[int]] = {}
        for i, t in enumerate(self.tensors):
            self._by_probe.setdefault(_probe(t), []).append(i)

    def _match(self, tensor: torch.Tensor) -> int:
        """Index of the pretrained tensor whose initial content equals ``tensor``, or -1."""
        candidates = self._by_probe.get(_probe(tensor), [])
        if not candidates:
            return -1
        digest = tensor_digest(tensor)
        return next((i for i in candidates if self.hashes[i] == digest), -1)

    def strip(self, state: dict[str, Any]) -> dict[str, Any]:
        """``state`` without its pretrained tensors, plus ``pretrained = {digest, omitted: [[path, index]]}``."""
        omitted = []
        for path, tensor in _dict_leaves(state, []):
            i = self._match(tensor)
            if i >= 0:
                omitted.append([path, i])
        lean = _without(state, {tuple(p) for p, _ in omitted})
        lean["pretrained"] = {"digest": self.digest, "omitted": omitted}
        return lean

    def fill(self, state: dict[str, Any], where: str) -> dict[str, Any]:
        """The full state of a lean ``state`` (copies of this backbone's pretrained tensors put back).

        Raises a one-line :class:`UserError` when the checkpoint was made on other pretrained weights."""
        info = state.get("pretrained")
        if info is None:
            return state
        if info["digest"] != self.digest:
            raise UserError(f"checkpoint {where} was made on other pretrained backbone weights (hash "
                            f"{info['digest'][:12]}, these are {self.digest[:12]}); resume with the same "
                            f"--backbone/--pretrain_type and weight files")
        full = {k: v for k, v in state.items() if k != "pretrained"}
        for path, index in info["omitted"]:
            node = full
            for key in path[:-1]:
                node = node[key]
            node[path[-1]] = self.tensors[int(index)].detach().clone()
        return full
