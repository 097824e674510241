"""The base class of the exported methods inside a Mammoth checkout (its text is written there as
``models/second_order_cl/models/utils/continual_model.py``; it is never imported in this project).

It is Mammoth's ``ContinualModel`` plus the interface this project's methods are written against:
- the backbone seen as ``body`` + one linear ``classifier`` with ``feature_dim`` (Mammoth's backbones call their
  head ``head``, ``classifier`` or ``fc``);
- typed ``settings`` and the model's ``DEFAULTS`` applied to Mammoth's parser;
- no optimiser while Mammoth's constructor runs (a method picks its trainable parameters in ``begin_task``);
- everything the model owns outside ``net`` (heads, statistics) moved to the device with it;
- the dataset's ``train_dataset(task)`` and ``make_loader(data, shuffle, batch_size)``;
- ``autocast`` (bf16 from ``--code_optimization 2``), ``train_net``, ``is_logging_step``.
"""
from __future__ import annotations

from contextlib import nullcontext
from typing import Any, ContextManager, Iterable, Optional

import torch
from torch import nn
from torch.utils.data import DataLoader

from models.utils.continual_model import ContinualModel as MammothContinualModel
from models.second_order_cl.utils.settings import add_settings_flags, settings_from_args

CLASSIFIER_NAMES = ("head", "classifier", "fc")


def _in_features(head: nn.Module) -> int:
    if isinstance(head, nn.Linear):
        return head.in_features
    for m in head.modules():
        if isinstance(m, nn.Linear):
            return m.in_features
    raise ValueError(f"cannot read the feature size of the backbone's head {type(head).__name__}")


class BackboneView(nn.Module):
    """A Mammoth backbone as a feature extractor ``body`` (its head replaced by the identity) and a linear
    ``classifier`` over ``feature_dim`` features."""

    def __init__(self, backbone: nn.Module, num_classes: int):
        super().__init__()
        name = next((n for n in CLASSIFIER_NAMES if isinstance(getattr(backbone, n, None), nn.Module)), None)
        if name is None:
            raise ValueError(f"{type(backbone).__name__} has no head named one of {CLASSIFIER_NAMES}")
        self.feature_dim = _in_features(getattr(backbone, name))
        setattr(backbone, name, nn.Identity())
        self.body = backbone
        self.classifier = nn.Linear(self.feature_dim, num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Pre-logit features (B, feature_dim)."""
        return self.body(x)

    def forward(self, x: torch.Tensor, returnt: str = "out") -> Any:
        feats = self.features(x)
        if returnt == "features":
            return feats
        out = self.classifier(feats)
        return (out, feats) if returnt == "both" else out


class DatasetView:
    """Mammoth's dataset plus ``train_dataset(task)`` (the current task's training split, as Mammoth's train
    loader holds it) and ``make_loader``; every other attribute is the dataset's."""

    def __init__(self, dataset: Any, args: Any):
        self._dataset = dataset
        self._args = args

    def __getattr__(self, name: str) -> Any:
        return getattr(self._dataset, name)

    def train_dataset(self, task: int) -> Any:
        return self._dataset.train_loader.dataset

    def make_loader(self, data: Any, shuffle: bool, batch_size: Optional[int] = None) -> DataLoader:
        return DataLoader(data, batch_size=batch_size or self._args.batch_size, shuffle=shuffle,
                          num_workers=self._args.num_workers or 0)


class ContinualModel(MammothContinualModel):
    """Mammoth's base class with the interface of the exported methods (see the module docstring)."""

    NAME = ""
    COMPATIBILITY: list[str] = []
    DEFAULTS: dict[str, Any] = {}
    SETTINGS: Optional[type] = None
    LOG_EVERY = 25
    USES_NOT_AUG = False
    _building = True  # Mammoth's constructor asks for an optimiser before the method has chosen its parameters

    def __init_subclass__(cls, **kwargs: Any) -> None:
        """Each model's ``get_parser`` also sets its ``DEFAULTS`` (as Mammoth's own models do)."""
        super().__init_subclass__(**kwargs)
        own = cls.get_parser

        def get_parser(parser, _own=own, _cls=cls):
            parser = _own(parser) or parser
            parser.set_defaults(**_cls.DEFAULTS)
            return parser
        cls.get_parser = staticmethod(get_parser)

    @classmethod
    def get_parser(cls, parser):
        return add_settings_flags(parser, cls.SETTINGS) if cls.SETTINGS is not None else parser

    def __init__(self, backbone: nn.Module, loss: Any, args: Any, transform: Any, dataset: Any = None):
        net = BackboneView(backbone, dataset.N_CLASSES) if backbone is not None else None
        super().__init__(net, loss, args, transform, dataset=dataset)
        self.settings: Any = settings_from_args(self.SETTINGS, args) if self.SETTINGS is not None else None
        self._building = False

    def get_optimizer(self, params: Optional[Iterable] = None, lr: Optional[float] = None):
        """Mammoth's optimiser over the parameters that require gradients (None without any)."""
        if self._building:
            return None
        params = [p for p in (self.get_parameters() if params is None else params) if p.requires_grad]
        return super().get_optimizer(params, lr) if params else None

    @property
    def code_optimization(self) -> int:
        return int(getattr(self.args, "code_optimization", 0) or 0)

    def autocast(self) -> ContextManager:
        """bf16 autocast from ``--code_optimization 2``, else a no-op."""
        if self.code_optimization < 2:
            return nullcontext()
        return torch.autocast(device_type=torch.device(self.device).type, dtype=torch.bfloat16)

    @property
    def train_net(self) -> nn.Module:
        return self.net

    def is_logging_step(self) -> bool:
        return self.epoch_iteration % self.LOG_EVERY == 0

    def meta_begin_task(self, dataset: Any) -> None:
        self.to(self.device)  # the parts outside ``net`` (Mammoth moves only ``net``)
        super().meta_begin_task(DatasetView(dataset, self.args))

    def meta_observe(self, *args: Any, **kwargs: Any) -> Any:
        with self.autocast():
            return super().meta_observe(*args, **kwargs)

    def meta_end_task(self, dataset: Any) -> None:
        super().meta_end_task(DatasetView(dataset, self.args))
