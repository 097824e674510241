"""Layer helpers Mammoth's model files use: freezing batch-norm statistics, conditional batch norm."""
from __future__ import annotations

from typing import Any, Optional

import torch
from torch import nn

_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)


class bn_track_stats:  # noqa: N801 - Mammoth's name
    """``with bn_track_stats(net, condition):`` - when ``condition`` is false, the batch-norm layers of ``net``
    normalise with the batch's statistics and leave their running statistics untouched inside the block."""

    def __init__(self, module: nn.Module, condition: bool = True):
        self.module, self.enable = module, bool(condition)
        self._saved: list[tuple[nn.Module, bool]] = []

    def __enter__(self) -> "bn_track_stats":
        if not self.enable:
            self._saved = [(m, m.track_running_stats) for m in self.module.modules() if isinstance(m, _NORMS)]
            for m, _ in self._saved:
                m.track_running_stats = False
        return self

    def __exit__(self, *exc: Any) -> None:
        for m, tracked in self._saved:
            m.track_running_stats = tracked
        self._saved = []


class _ConditionalNorm(nn.Module):
    """Batch norm without affine parameters, then each sample's condition's scale and shift: rows of ``embed``
    (scales start near 1, shifts at 0), Mammoth's parameter layout."""

    norm_cls: type = nn.BatchNorm1d

    def __init__(self, num_features: int, num_conditions: int):
        super().__init__()
        self.num_features = num_features
        self.bn = self.norm_cls(num_features, affine=False)
        self.embed = nn.Embedding(num_conditions, num_features * 2)
        with torch.no_grad():
            self.embed.weight[:, :num_features].normal_(1, 0.02)
            self.embed.weight[:, num_features:].zero_()

    def forward(self, x: torch.Tensor, cond_id: torch.Tensor,
                flag_stop_grad: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Normalise ``x`` and apply the scale and shift of each sample's condition ``cond_id``; the samples selected
        by ``flag_stop_grad`` (a mask or indices) send no gradient to the scales and shifts."""
        gamma, beta = self.embed(cond_id).chunk(2, 1)
        if flag_stop_grad is not None:
            stop = torch.zeros(gamma.shape[0], dtype=torch.bool, device=gamma.device)
            stop[flag_stop_grad] = True
            gamma = torch.where(stop.view(-1, 1), gamma.detach(), gamma)
            beta = torch.where(stop.view(-1, 1), beta.detach(), beta)
        shape = (-1, self.num_features) + (1,) * (x.dim() - 2)
        return gamma.reshape(shape) * self.bn(x) + beta.reshape(shape)


class ConditionalBatchNorm1d(_ConditionalNorm):
    norm_cls = nn.BatchNorm1d


class ConditionalBatchNorm2d(_ConditionalNorm):
    norm_cls = nn.BatchNorm2d
