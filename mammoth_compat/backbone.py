"""``MammothBackbone``'s flat-vector helpers (used by EWC/SI/GEM-style Mammoth models)."""
from __future__ import annotations

import argparse

import torch


class MammothBackboneAPI:
    """``get_params``/``set_params``/``get_grads``/``set_grads`` over all parameters, and ``head``."""

    def get_params(self) -> torch.Tensor:
        """All parameters concatenated into one detached vector."""
        return torch.cat([p.detach().reshape(-1) for p in self.parameters()])  # type: ignore[attr-defined]

    def set_params(self, new_params: torch.Tensor) -> None:
        """Overwrite all parameters from one vector (the layout of :meth:`get_params`)."""
        offset = 0
        with torch.no_grad():
            for p in self.parameters():  # type: ignore[attr-defined]
                p.copy_(new_params[offset:offset + p.numel()].view_as(p))
                offset += p.numel()
        if offset != new_params.numel():
            raise ValueError(f"set_params got {new_params.numel()} values for {offset} parameters")

    def get_grads(self) -> torch.Tensor:
        """All gradients concatenated (zeros where a parameter has none)."""
        return torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1)
                          for p in self.parameters()])  # type: ignore[attr-defined]

    def set_grads(self, new_grads: torch.Tensor) -> None:
        offset = 0
        for p in self.parameters():  # type: ignore[attr-defined]
            p.grad = new_grads[offset:offset + p.numel()].view_as(p).clone()
            offset += p.numel()

    @property
    def head(self) -> torch.nn.Module:
        """Mammoth's ViT name of the classifier (ResNets call it ``classifier``, as here)."""
        return self.classifier  # type: ignore[attr-defined]



def dataset_context(args: argparse.Namespace) -> tuple[int, int, int]:
    """(classes, image size, channels) of the dataset ``args`` names (for ``get_backbone(args)``, Mammoth's call)."""
    from datasets import get_dataset
    built = get_dataset(args)
    return int(built.n_classes), int(built.img_size), int(built.in_chans)
