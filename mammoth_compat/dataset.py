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
