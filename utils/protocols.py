"""What the training loop and the evaluation need from a model, a dataset and the parsed flags.

``models.utils.continual_model.ContinualModel`` and ``datasets.utils.continual_dataset.ContinualDataset``
satisfy these (tests/test_settings.py checks it); ``utils`` names only the protocols, never the classes,
so it imports nothing from the layers above it.
"""
from __future__ import annotations

from typing import Any, Optional, Protocol, runtime_checkable

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset


@runtime_checkable
class LoopDataset(Protocol):
    """A continual benchmark as the loop sees it: tasks, their class ranges and loaders."""
    n_tasks: int  # this run's number of tasks
    test_loaders: list[DataLoader]

    def get_data_loaders(self) -> tuple[DataLoader, DataLoader]: ...
    def get_offsets(self, task: int) -> tuple[int, int]: ...
    def make_loader(self, data: Dataset, shuffle: bool) -> DataLoader: ...
    def test_dataset(self, task: int) -> Dataset: ...


@runtime_checkable
class LoopModel(Protocol):
    """A continual learner as the loop sees it: its hooks, its network, device and optimizer."""
    net: nn.Module
    device: torch.device
    opt: Optional[torch.optim.Optimizer]
    training: bool

    def __call__(self, x: torch.Tensor) -> torch.Tensor: ...
    def train(self, mode: bool = True) -> Any: ...
    def get_debug_iters(self) -> int: ...
    def meta_begin_task(self, dataset: Any) -> None: ...
    def train_task(self, dataset: Any, train_loader: DataLoader, task: int) -> None: ...
    def meta_begin_epoch(self, epoch: int, dataset: Any) -> None: ...
    def meta_observe(self, inputs: torch.Tensor, labels: torch.Tensor, not_aug_inputs: torch.Tensor,
                     epoch: Optional[int] = None) -> float: ...
    def meta_end_epoch(self, epoch: int, dataset: Any) -> None: ...
    def meta_end_task(self, dataset: Any) -> None: ...
    def meta_end_eval(self, dataset: Any, accs: tuple[list[float], list[float]]) -> None: ...


class LoopSettings(Protocol):
    """The flags the loop reads (an ``argparse.Namespace`` of the parsed flags has them)."""
    n_epochs: int
    debug_mode: bool
    non_verbose: bool
    stop_after: Optional[int]
    enable_other_metrics: bool
