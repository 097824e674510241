"""The incremental classifier: one linear head per task, outputs concatenated."""
from __future__ import annotations

import torch
from torch import nn


class IncrementalHead(nn.Module):
    """Linear heads (feature_dim -> C_t), one per task; ``forward`` returns ``total_classes`` columns
    (the columns of tasks not added yet are zero; evaluation only reads the seen classes)."""

    def __init__(self, feature_dim: int, total_classes: int):
        super().__init__()
        self.feature_dim, self.total_classes = feature_dim, total_classes
        self.heads = nn.ModuleList()
        # follows ``.to(device)`` even while there is no head yet: new heads are created on its device
        self.register_buffer("_device_anchor", torch.empty(0), persistent=False)

    @property
    def n_classes(self) -> int:
        return sum(h.out_features for h in self.heads)

    @property
    def sizes(self) -> list[int]:
        return [h.out_features for h in self.heads]

    def add_task(self, n_classes: int) -> nn.Linear:
        """Append a head (truncated-normal std 0.02, bias 0) and freeze the older ones."""
        for h in self.heads:
            h.requires_grad_(False)
        head = nn.Linear(self.feature_dim, n_classes, device=self._device_anchor.device)
        nn.init.trunc_normal_(head.weight, std=0.02)
        nn.init.zeros_(head.bias)
        self.heads.append(head)
        return head

    def seen_logits(self, features: torch.Tensor) -> torch.Tensor:
        """Logits over the classes of the heads added so far."""
        if not len(self.heads):
            return features.new_zeros(features.shape[0], 0)
        return torch.cat([h(features) for h in self.heads], dim=1)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        logits = self.seen_logits(features)
        pad = self.total_classes - logits.shape[1]
        return logits if pad <= 0 else torch.cat([logits, logits.new_zeros(logits.shape[0], pad)], dim=1)
