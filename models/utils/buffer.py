"""Reservoir replay buffer (tensors only, so it is saved with checkpoints and restored exactly)."""
from __future__ import annotations

from typing import Any, Callable, Optional

import torch
from torchvision import transforms

from utils import distributed, seeding
from utils.args import add_rehearsal_args  # noqa: F401 - re-exported for the models

FIELDS = ("examples", "labels", "logits", "task_labels")


def reservoir_index(num_seen: int, buffer_size: int, generator: Optional[torch.Generator] = None) -> int:
    """Slot for the ``num_seen``-th example (0-based) of a stream, or -1 to drop it (Vitter's algorithm R)."""
    if num_seen < buffer_size:
        return num_seen
    rand = int(torch.randint(0, num_seen + 1, (1,), generator=generator).item())
    return rand if rand < buffer_size else -1


def replay_transform(dataset: Any) -> Callable[[torch.Tensor], torch.Tensor]:
    """The dataset's train augmentation for one stored (C, H, W) float image in [0, 1]."""
    return transforms.Compose([transforms.ToPILImage(), dataset.get_transform()])


class Buffer:
    """Fixed-size reservoir of examples (non-augmented images), labels, optional logits and task ids.

    Every example of the stream has the same probability ``buffer_size / num_seen`` of being
    stored. With ``seed`` (what the models pass: the run's seed) the reservoir and the replay draws
    (indices and the augmentation of each replayed example) come from two generators seeded from
    (seed, "reservoir"/"replay"), saved in checkpoints: a resumed run draws the same samples as an
    uninterrupted one, and every DDP rank the same ones. Without ``seed`` the global torch RNG is used.

    Under ``--distributed ddp`` every rank offers the whole global batch (gathered from all
    ranks, in rank order) to its reservoir, so the buffers stay identical across ranks (and rank
    0's checkpoint holds the buffer).
    """

    FIELDS: tuple[str, ...] = FIELDS  # stored tensors; ``examples`` first

    def __init__(self, buffer_size: int, seed: Optional[int] = None):
        if buffer_size < 1:
            raise ValueError("buffer_size must be >= 1")
        self.buffer_size = buffer_size
        self.num_seen_examples = 0
        self.examples: Optional[torch.Tensor] = None
        self.labels: Optional[torch.Tensor] = None
        self.logits: Optional[torch.Tensor] = None
        self.task_labels: Optional[torch.Tensor] = None
        self.generator: Optional[torch.Generator] = None  # reservoir RNG (same on every rank)
        self.replay_generator: Optional[torch.Generator] = None  # replay indices and augmentation seeds
        if seed is not None:
            self.generator = seeding.generator(seed, 0, "reservoir")
            self.replay_generator = seeding.generator(seed, 0, "replay")
        for name in self.FIELDS[len(FIELDS):]:  # fields a subclass adds
            setattr(self, name, None)

    def _distributed_generator(self) -> torch.Generator:
        if self.generator is None:
            seed = distributed.broadcast_object(int(torch.randint(0, 2 ** 62, (1,)).item()))
            self.generator = torch.Generator().manual_seed(int(seed))
        return self.generator

    def __len__(self) -> int:
        return min(self.num_seen_examples, self.buffer_size)

    def is_empty(self) -> bool:
        return len(self) == 0

    def _allocate(self, name: str, like: torch.Tensor) -> None:
        dtype = torch.long if name in ("labels", "task_labels", "true_labels") else like.dtype
        setattr(self, name, torch.zeros((self.buffer_size, *like.shape[1:]), dtype=dtype, device=like.device))

    @torch.no_grad()
    def add_data(self, examples: torch.Tensor, labels: Optional[torch.Tensor] = None,
                 logits: Optional[torch.Tensor] = None,
                 task_labels: Optional[torch.Tensor] = None) -> None:
        """Offer each example of a batch to the reservoir."""
        self._add({"examples": examples, "labels": labels, "logits": logits, "task_labels": task_labels})

    def _add(self, given: dict[str, Optional[torch.Tensor]]) -> None:
        """Offer each example of ``given['examples']`` (with its other fields) to the reservoir."""
        generator = self.generator
        if distributed.is_distributed():
            given = {k: None if v is None else distributed.all_gather_cat(v.contiguous()) for k, v in given.items()}
            generator = self._distributed_generator()
        for name, value in given.items():
            if value is not None and getattr(self, name) is None:
                self._allocate(name, value)
        for i in range(given["examples"].shape[0]):
            slot = reservoir_index(self.num_seen_examples, self.buffer_size, generator)
            self.num_seen_examples += 1
            if slot < 0:
                continue
            for name, value in given.items():
                if value is not None:
                    getattr(self, name)[slot] = value[i].detach().to(getattr(self, name).dtype)

    def get_data(self, size: int, transform: Optional[Callable] = None,
                 device: Optional[torch.device] = None) -> tuple[torch.Tensor, ...]:
        """``size`` distinct stored samples (all if fewer): (examples, labels[, logits][, task_labels]).

        ``transform`` is applied to each example separately (e.g. :func:`replay_transform`).
        """
        n = len(self)
        if n == 0:
            raise RuntimeError("the buffer is empty")
        gen = self.replay_generator
        choice = torch.randperm(n, generator=gen)[:min(size, n)]
        examples = self.examples[choice]
        if transform is not None and gen is None:
            examples = torch.stack([transform(e.cpu()) for e in examples])
        elif transform is not None:  # each example's augmentation from its own seed: no global RNG consumed
            seeds = torch.randint(0, 2 ** 62, (len(examples),), generator=gen).tolist()
            augmented = []
            for e, seed in zip(examples, seeds):
                with seeding.seeded(seed):
                    augmented.append(transform(e.cpu()))
            examples = torch.stack(augmented)
        out = [examples]
        out += [getattr(self, name)[choice] for name in self.FIELDS[1:] if getattr(self, name) is not None]
        if device is not None:
            out = [t.to(device) for t in out]
        return tuple(out)

    def get_all_data(self) -> tuple[torch.Tensor, ...]:
        """Every stored sample, in slot order, without transform."""
        return tuple(getattr(self, name)[:len(self)] for name in self.FIELDS if getattr(self, name) is not None)

    def state_dict(self) -> dict[str, Any]:
        """Tensors and ints only (checkpoint-safe with ``weights_only=True``)."""
        state: dict[str, Any] = {"buffer_size": self.buffer_size, "num_seen_examples": self.num_seen_examples}
        state.update({name: getattr(self, name).cpu() for name in self.FIELDS if getattr(self, name) is not None})
        if self.generator is not None:
            state["generator"] = self.generator.get_state()
        if self.replay_generator is not None:
            state["replay_generator"] = self.replay_generator.get_state()
        return state

    def load_state_dict(self, state: dict[str, Any], device: Optional[torch.device] = None) -> None:
        if int(state["buffer_size"]) != self.buffer_size:
            raise ValueError(f"checkpoint buffer holds {state['buffer_size']} examples, not {self.buffer_size}")
        self.num_seen_examples = int(state["num_seen_examples"])
        if "generator" in state:
            self.generator = torch.Generator()
            self.generator.set_state(state["generator"])
        if "replay_generator" in state:
            self.replay_generator = torch.Generator()
            self.replay_generator.set_state(state["replay_generator"])
        for name in self.FIELDS:
            value = state.get(name)
            setattr(self, name, None if value is None else value.to(device or value.device))

    def to(self, device: torch.device) -> "Buffer":
        for name in self.FIELDS:
            if getattr(self, name) is not None:
                setattr(self, name, getattr(self, name).to(device))
        return self
