"""Sample selection of Mammoth's ``Buffer`` beyond reservoir sampling (Buzzega et al., 2020, "Rethinking Experience
Replay: a Bag of Tricks"; Millunzi et al., 2024, ABS): when a new sample enters a full buffer (with reservoir
probability), the slot it replaces is drawn by per-slot scores that the model updates (``update(indexes, values)``,
e.g. minus the replay loss)."""
from __future__ import annotations

from typing import Any, Optional

import numpy as np
import torch


def _unit(values: torch.Tensor) -> torch.Tensor:
    """``values`` scaled to [0, 1] (unchanged when constant)."""
    span = values.max() - values.min()
    return (values - values.min()) / (span + 1e-9) if span > 0 else values


def _draw(weights: torch.Tensor, candidates: Optional[np.ndarray] = None) -> int:
    """A slot drawn with probability proportional to ``weights`` (uniform when they sum to 0)."""
    w = weights.double().clamp(min=0).cpu().numpy()
    w = w / w.sum() if w.sum() > 0 else np.full(len(w), 1 / len(w))
    slots = np.arange(len(w)) if candidates is None else candidates
    return int(np.random.choice(slots, p=w))


class ScoredSelection:
    """``lars``: a slot is replaced with probability growing with its min-max-normalised score; ``labrs``: the
    score is mixed half and half with the size of the slot's class in the buffer; ``abs``: past-task slots are
    chosen with probability equal to their share, then the lowest-scored past or highest-scored current one is
    likeliest (``dataset`` gives the current task's first class)."""

    def __init__(self, strategy: str, buffer_size: int, dataset: Any = None):
        if strategy == "abs" and dataset is None:
            raise ValueError("the abs sample selection needs the dataset (Buffer(..., dataset=...))")
        self.strategy, self.buffer_size, self.dataset = strategy, int(buffer_size), dataset
        self.importance_scores = torch.full((self.buffer_size,), float("nan"))

    def update(self, indexes: Any, values: torch.Tensor) -> None:
        self.importance_scores[torch.as_tensor(indexes).long().cpu()] = torch.as_tensor(values).float().cpu()

    def _scores(self) -> torch.Tensor:
        """Scores with never-scored slots at the lowest given score (0 when none is given)."""
        scores = self.importance_scores.clone()
        known = ~torch.isnan(scores)
        return torch.where(known, scores, scores[known].min() if bool(known.any()) else torch.tensor(0.0))

    def slot(self, num_seen_examples: int, labels: torch.Tensor) -> int:
        """The slot for the next sample, or -1 to drop it."""
        if num_seen_examples < self.buffer_size:
            return num_seen_examples
        if np.random.randint(0, num_seen_examples) >= self.buffer_size:
            return -1
        scores = self._scores()
        stored = labels[:self.buffer_size].cpu()
        if self.strategy == "lars":
            return _draw(_unit(scores))
        if self.strategy == "labrs":
            counts = torch.bincount(stored)[stored].float()
            scale = scores.abs().mean() * counts.abs().mean()
            return _draw(_unit(0.5 * scores / (scale + 1e-9) + 0.5 * counts))
        past = (stored < self.dataset.get_offsets()[0]).numpy()
        if past.any() and (not (~past).any() or np.random.rand() < past.mean()):
            return _draw(1 - _unit(scores[past]), np.flatnonzero(past))
        return _draw(_unit(scores[~past]), np.flatnonzero(~past))
