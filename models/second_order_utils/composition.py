"""Which weights the adapted layers of ITA/IEL compute with, switched only by explicit calls in the model's hooks.

* ``use_base``: theta0 (the statistics passes of ``begin_task``);
* ``use_training``: ITA theta0 + tau_t, IEL theta0 + w (sum_{s<t} tau_s + tau_t) with w = 1/(t+1), tau_t trainable
  (``begin_task``, and ``observe`` after an evaluation inside the task);
* ``use_eval``: theta0 + sum_s w_s tau_s merged into the weights, uniform w_s = 1/T unless edited (the evaluation
  forward, ``end_task``, checkpoint loading, the editing command).

Switching is exact: the pre-trained weights are never modified (:mod:`modules`).
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch

from models.second_order_utils.modules import ModulePool, uniform_weights

BASE, TRAIN, EVAL = "base", "train", "eval"


class Composition:
    """The composition now applied to a :class:`ModulePool` (``state``: base, train, eval or None)."""

    def __init__(self, pool: ModulePool):
        self.pool = pool
        self.state: Optional[str] = None
        self.eval_weights: Optional[list[float]] = None  # the weights merged by the last use_eval (None: uniform)

    def use_base(self) -> None:
        """Plain theta0."""
        self.pool.use_base()
        self.state = BASE

    def use_training(self, task: int, use_iel: bool, past_sums: dict[str, Optional[torch.Tensor]]) -> None:
        """The training composition of ``task`` (IEL: with ``past_sums`` = sum_{s<t} dW_s per layer)."""
        if use_iel:
            self.pool.train_ensemble(task, past_sums)
        else:
            self.pool.train_individual(task)
        self.state = TRAIN

    def use_eval(self, weights: Optional[Sequence[float]] = None) -> None:
        """Merge theta0 + sum_s w_s tau_s into the weights (``weights`` None: uniform 1/T)."""
        self.pool.compose(list(weights) if weights else uniform_weights(self.pool.n_tasks))
        self.state, self.eval_weights = EVAL, (list(weights) if weights else None)

    def is_eval(self, weights: Optional[Sequence[float]] = None) -> bool:
        """Whether the evaluation composition with ``weights`` (None: uniform) is the one applied now."""
        return self.state == EVAL and self.eval_weights == (list(weights) if weights else None)
