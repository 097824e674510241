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
    """One affine batch norm per condition (e.g. per task) over shared normalisation."""

    norm_cls: type = nn.BatchNorm1d

    def __init__(self, num_features: int, num_conditions: int):
        super().__init__()
        self.num_features, self.num_conditions = num_features, num_conditions
        self.bn = self.norm_cls(num_features, affine=False)
        self.weight = nn.Parameter(torch.ones(num_conditions, num_features))
        self.bias = nn.Parameter(torch.zeros(num_conditions, num_features))

    def forward(self, x: torch.Tensor, cond_id: torch.Tensor, flag_stop_grad: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Normalise ``x`` and apply the scale and shift of each sample's condition ``cond_id``; samples where
        ``flag_stop_grad`` is true do not propagate gradients into the affine parameters."""
        out = self.bn(x)
        cond_id = torch.as_tensor(cond_id, device=x.device).long().expand(x.shape[0])
        weight, bias = self.weight[cond_id], self.bias[cond_id]
        if flag_stop_grad is not None:
            stop = torch.as_tensor(flag_stop_grad, device=x.device).bool().view(-1, 1)
            weight = torch.where(stop, weight.detach(), weight)
            bias = torch.where(stop, bias.detach(), bias)
        shape = (x.shape[0], self.num_features) + (1,) * (x.dim() - 2)
        return out * weight.view(shape) + bias.view(shape)


class ConditionalBatchNorm1d(_ConditionalNorm):
    norm_cls = nn.BatchNorm1d


class ConditionalBatchNorm2d(_ConditionalNorm):
    norm_cls = nn.BatchNorm2d
