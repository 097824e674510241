"""Dataset methods Mammoth's model files call (mixed into ``ContinualDataset``)."""
from __future__ import annotations

from typing import Any, Callable, Optional


class MammothDatasetAPI:
    """``get_denormalization_transform``, ``get_epochs``, ``get_batch_size``, ``get_minibatch_size``,
    ``get_backbone``, ``get_iters`` (values of this run's configuration)."""

    args: Any
    mean: Optional[tuple[float, ...]]  # the run's MEAN/STD
    std: Optional[tuple[float, ...]]
    DEFAULTS: dict[str, Any]

    def get_denormalization_transform(self) -> Callable:
        """Inverse of :meth:`get_normalization_transform` on tensors (identity without MEAN/STD)."""
        from mammoth_compat.transforms import DeNormalize
        if self.mean is None:
            return lambda x: x
        return DeNormalize(self.mean, self.std)

    def get_epochs(self) -> int:
        return int(self.args.n_epochs)

    def get_batch_size(self) -> int:
        return int(self.args.batch_size)

    def get_minibatch_size(self) -> int:
        return int(getattr(self.args, "minibatch_size", None) or self.args.batch_size)

    def get_backbone(self) -> str:
        return str(getattr(self.args, "backbone", None) or self.DEFAULTS.get("backbone"))

    def get_iters(self) -> Optional[int]:
        return getattr(self.args, "n_iters", None)

    @staticmethod
    def evaluate(model: Any, dataset: Any, last: bool = False, return_loss: bool = False) -> tuple[list, list]:
        """(class-IL, task-IL) accuracies (%) on the tasks seen so far, or on the last one with ``last``."""
        if return_loss:
            raise ValueError("evaluate(..., return_loss=True) is not available; it returns the accuracies only")
        from utils.evaluate import evaluate
        cil, til = evaluate(model, dataset)
        return (cil[-1:], til[-1:]) if last else (cil, til)
