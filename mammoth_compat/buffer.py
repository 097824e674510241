"""Mammoth's ``Buffer`` API over the framework's reservoir buffer (``utils.buffer`` re-exports it).

Same storage, reservoir sampling and checkpoint format as :class:`models.utils.buffer.Buffer`,
plus Mammoth's keywords: ``add_data(examples, labels=None, logits=None, task_labels=None,
true_labels=None)``; ``get_data(size, transform=None, return_index=False, device=None,
mask_task_out=None, cpt=None, return_not_aug=False, not_aug_transform=None)``;
``get_data_by_index``; ``get_all_data(transform=None, device=None)``; ``empty()``; ``device``.

A transform is applied to the whole batch when it is a ``torch.nn.Module`` (the kornia
``self.transform`` of a model), otherwise to each stored image separately (a torchvision
pipeline on tensors, as in Mammoth's older models).
"""
from __future__ import annotations

from typing import Any, Callable, Optional

import torch
from torch import nn

from models.utils.buffer import FIELDS
from models.utils.buffer import Buffer as ReservoirBuffer
from models.utils.buffer import reservoir_index
from mammoth_compat.selection import ScoredSelection


def reservoir(num_seen_examples: int, buffer_size: int) -> int:
    """Mammoth's ``reservoir``: slot for the next example, or -1 to drop it."""
    return reservoir_index(num_seen_examples, buffer_size)


def apply_transform(x: torch.Tensor, transform: Optional[Callable]) -> torch.Tensor:
    """``transform`` on a batch of stored images (batch-wise for modules, else image by image)."""
    if transform is None:
        return x
    if isinstance(transform, nn.Module):
        return transform(x)
    return torch.stack([transform(img) for img in x])


SCORED = ("lars", "labrs", "abs")


class _NoScores:
    """Reservoir and balancoir keep no per-slot scores: a model's score updates change nothing (as in Mammoth)."""

    def update(self, *_: Any, **__: Any) -> None:
        return None


class Buffer(ReservoirBuffer):
    """Reservoir buffer with Mammoth's signatures; ``device`` is where tensors are stored."""

    FIELDS = (*FIELDS, "true_labels")

    def __init__(self, buffer_size: int, device: str | torch.device = "cpu", n_tasks: Optional[int] = None,
                 mode: str = "reservoir", sample_selection_strategy: str = "reservoir", **kwargs: Any):
        strategy = sample_selection_strategy if sample_selection_strategy != "reservoir" else mode
        if strategy not in ("reservoir", "balancoir", *SCORED):
            raise ValueError(f"sample selection strategy {strategy!r} is not available; use reservoir, balancoir, "
                             f"{', '.join(SCORED)}")
        super().__init__(buffer_size)
        self.device = torch.device(device)
        self.sample_selection_strategy = strategy
        self.sample_selection_fn = ScoredSelection(strategy, buffer_size, kwargs.get("dataset")) \
            if strategy in SCORED else _NoScores()

    def _add(self, given: dict[str, Optional[torch.Tensor]]) -> None:
        if self.sample_selection_strategy == "reservoir":
            return super()._add(given)
        scores = given.pop("sample_selection_scores", None)
        if given["labels"] is None:
            raise ValueError(f"the {self.sample_selection_strategy} buffer needs the labels of the examples")
        for name, value in given.items():
            if value is not None and getattr(self, name) is None:
                self._allocate(name, value)
        for i in range(given["examples"].shape[0]):
            if self.sample_selection_strategy == "balancoir":
                slot = self._balanced_slot(int(given["labels"][i]))
            else:
                slot = self.sample_selection_fn.slot(self.num_seen_examples, self.labels)
            self.num_seen_examples += 1
            if slot >= 0:
                for name, value in given.items():
                    if value is not None:
                        getattr(self, name)[slot] = value[i].detach().to(getattr(self, name).dtype)
                if scores is not None:
                    self.sample_selection_fn.update([slot], scores[i:i + 1])

    def _balanced_slot(self, label: int) -> int:
        """Balanced reservoir ("balancoir"): a full buffer takes a sample of a class stored less often than the
        median class always, any other with reservoir probability; it replaces a random sample of the most
        stored class."""
        seen = self.num_seen_examples
        if seen < self.buffer_size:
            return seen
        stored = self.labels[:self.buffer_size].cpu()
        counts = torch.bincount(stored, minlength=label + 1)
        rare = float(counts[label]) < float(counts[counts > 0].float().quantile(0.5))
        if not rare and int(torch.randint(seen + 1, (1,))) >= self.buffer_size:
            return -1
        candidates = torch.nonzero(stored == int(counts.argmax())).flatten()
        return int(candidates[torch.randint(len(candidates), (1,))])

    def to(self, device: str | torch.device) -> "Buffer":
        self.device = torch.device(device)
        return super().to(self.device)

    def add_data(self, examples: torch.Tensor, labels: Optional[torch.Tensor] = None,
                 logits: Optional[torch.Tensor] = None, task_labels: Optional[torch.Tensor] = None,
                 true_labels: Optional[torch.Tensor] = None, sample_selection_scores: Optional[torch.Tensor] = None,
                 **_: Any) -> None:
        given = {"examples": examples, "labels": labels, "logits": logits, "task_labels": task_labels,
                 "true_labels": true_labels}
        given = {k: None if v is None else v.to(self.device) for k, v in given.items()}
        if sample_selection_scores is not None and self.sample_selection_strategy in SCORED:
            given["sample_selection_scores"] = sample_selection_scores
        self._add(given)

    def _fields(self) -> list[str]:
        return [name for name in self.FIELDS if getattr(self, name) is not None]

    def is_full(self) -> bool:
        return self.num_seen_examples >= self.buffer_size

    @property
    def used_attributes(self) -> list[str]:
        """The fields that hold data (``examples``, ``labels``, ...)."""
        return self._fields()

    def _select(self, index: torch.Tensor, transform: Optional[Callable], device: Optional[torch.device]) -> tuple:
        target = torch.device(device) if device is not None else self.device
        out = [apply_transform(self.examples[index].to(target), transform).to(target)]
        out += [getattr(self, name)[index].to(target) for name in self._fields()[1:]]
        return tuple(out)

    def get_data(self, size: int, transform: Optional[Callable] = None, return_index: bool = False,
                 device: Optional[torch.device] = None, mask_task_out: Optional[int] = None,
                 cpt: Optional[int] = None, return_not_aug: bool = False,
                 not_aug_transform: Optional[Callable] = None, **_: Any) -> tuple[torch.Tensor, ...]:
        """``size`` distinct random samples (all if fewer): ``([index,] [not_aug,] examples, labels, ...)``.

        ``mask_task_out=t`` leaves out the samples of task ``t`` (by ``task_labels``, else ``labels // cpt``).
        """
        candidates = torch.arange(len(self))
        if mask_task_out is not None:
            if self.task_labels is not None:
                tasks = self.task_labels[:len(self)].cpu()
            elif cpt is not None:
                tasks = self.labels[:len(self)].cpu() // cpt
            else:
                raise ValueError("mask_task_out needs task_labels in the buffer or cpt")
            candidates = candidates[tasks != mask_task_out]
        if len(candidates) == 0:
            raise RuntimeError("the buffer has no samples to return")
        choice = candidates[torch.randperm(len(candidates))[:min(size, len(candidates))]]
        out = self._select(choice.to(self.examples.device), transform, device)
        if return_not_aug:
            target = torch.device(device) if device is not None else self.device
            out = (apply_transform(self.examples[choice.to(self.examples.device)].to(target), not_aug_transform),
                   *out)
        if return_index:
            out = (choice.to(torch.device(device) if device is not None else self.device), *out)
        return out

    def get_balanced_data(self, size: int, transform: Optional[Callable] = None,
                          n_classes: int = -1) -> tuple[torch.Tensor, ...]:
        """``size`` samples spread evenly over ``n_classes`` random stored classes (-1: all) that each hold enough
        of them (fewer classes when too few do; plain random samples when none does)."""
        n = len(self)
        size = min(int(size), n)
        classes, counts = torch.unique(self.labels[:n].cpu(), return_counts=True)
        wanted = len(classes) if n_classes == -1 else min(int(n_classes), len(classes))
        while wanted > 0:
            per_class = torch.full((wanted,), size // wanted)
            per_class[:size % wanted] += 1
            eligible = classes[counts >= per_class[0]]
            if len(eligible) >= wanted:
                break
            wanted = len(eligible)
        if wanted == 0:
            return self.get_data(size, transform=transform)
        chosen = eligible[torch.randperm(len(eligible))[:wanted]]
        stored = self.labels[:n].cpu()
        index = torch.cat([torch.nonzero(stored == c).flatten()[torch.randperm(int((stored == c).sum()))[:int(k)]]
                           for c, k in zip(chosen.tolist(), per_class.tolist())])
        return self._select(index.to(self.examples.device), transform, None)

    def get_data_by_index(self, indexes: torch.Tensor, transform: Optional[Callable] = None,
                          device: Optional[torch.device] = None) -> tuple[torch.Tensor, ...]:
        return self._select(torch.as_tensor(indexes).to(self.examples.device), transform, device)

    def get_all_data(self, transform: Optional[Callable] = None,  # type: ignore[override]
                     device: Optional[torch.device] = None) -> tuple[torch.Tensor, ...]:
        if self.is_empty():
            raise RuntimeError("the buffer is empty")
        return self._select(torch.arange(len(self), device=self.examples.device), transform, device)

    def empty(self) -> None:
        """Forget every stored sample (Mammoth's ``empty``)."""
        for name in self.FIELDS:
            setattr(self, name, None)
        self.num_seen_examples = 0
