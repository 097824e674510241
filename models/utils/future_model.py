"""Mammoth's ``FutureModel``: a model that can also predict the classes of future tasks (zero-shot)."""
from __future__ import annotations

from typing import Any, Optional

import torch

from models.utils.continual_model import ContinualModel


class FutureModel(ContinualModel):
    """``future_forward(x)`` gives logits over every class of the dataset (``--eval_future 1`` evaluates it)."""

    def future_forward(self, x: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        raise NotImplementedError(f"{type(self).__name__} must implement future_forward")

    def change_transform(self, dataset: Any) -> None:
        """Adopt ``dataset``'s input transform before evaluating on it (nothing by default)."""

    def observe(self, inputs: torch.Tensor, labels: torch.Tensor, not_aug_inputs: torch.Tensor,
                epoch: Optional[int] = None) -> float:
        raise NotImplementedError(f"{type(self).__name__} must implement observe")
