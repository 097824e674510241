"""The base class of the exported methods inside a Mammoth checkout (its text is written there as
``models/second_order_cl/models/utils/continual_model.py``; it is never imported in this project).

It is Mammoth's ``ContinualModel`` plus the interface this project's methods are written against:
- the backbone seen as ``body`` + one linear ``classifier`` with ``feature_dim`` (Mammoth's backbones call their
  head ``head``, ``classifier`` or ``fc``);
- for the methods of :data:`TIMM_VIT`, Mammoth's ViT backbone as timm's own ``VisionTransformer``;
- typed ``settings`` and the model's ``DEFAULTS`` applied to Mammoth's parser;
- no optimiser while Mammoth's constructor runs (a method picks its trainable parameters in ``begin_task``);
- everything the model owns outside ``net`` (heads, statistics) moved to the device with it;
- the dataset's ``train_dataset(task)``, ``plain_train_dataset(task)``, ``n_tasks`` and
  ``make_loader(data, shuffle, batch_size)`` (the method's constructor, ``begin_task`` and ``end_task`` see them);
- a task whose ``begin_task`` leaves no optimiser is not trained (Mammoth's static models: ``n_epochs`` 0 for
  that task), the counterpart of a method's ``train_task`` that skips training;
- ``autocast`` (bf16 from ``--code_optimization 2``), ``train_net``, ``is_logging_step``.
"""
from __future__ import annotations

import copy
from contextlib import nullcontext
from typing import Any, ContextManager, Iterable, Optional

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from models.utils.continual_model import ContinualModel as MammothContinualModel
from models.second_order_cl.utils import seeding
from models.second_order_cl.utils.distributed import ShardedBatchSampler
from models.second_order_cl.utils.settings import add_settings_flags, settings_from_args

CLASSIFIER_NAMES = ("head", "classifier", "fc")
# methods written against timm's VisionTransformer (its Block and Attention modules): Mammoth's ViT (a trimmed
# copy of timm's class) is handed to them as timm's class with the same weights
TIMM_VIT = ("apt", "inflora")


def _in_features(head: nn.Module) -> int:
    if isinstance(head, nn.Linear):
        return head.in_features
    for m in head.modules():
        if isinstance(m, nn.Linear):
            return m.in_features
    raise ValueError(f"cannot read the feature size of the backbone's head {type(head).__name__}")


def timm_vision_transformer(vit: nn.Module) -> nn.Module:
    """Mammoth's headless ``backbone.vit.VisionTransformer`` as timm's ``VisionTransformer`` (no head) with the
    same configuration and every weight copied (strict: a block of another kind, e.g. LoRA, is an error)."""
    from timm.models.vision_transformer import VisionTransformer
    if isinstance(vit, VisionTransformer):
        return vit
    for name in ("patch_embed", "blocks", "embed_dim", "num_heads", "global_pool"):
        if not hasattr(vit, name):
            raise ValueError(f"{type(vit).__name__} is not a ViT (no {name}): this method needs a ViT backbone")
    rate = float(getattr(vit, "drop_rate", 0.0))
    timm_vit = VisionTransformer(
        img_size=vit.patch_embed.img_size, patch_size=vit.patch_embed.patch_size,
        in_chans=vit.patch_embed.proj.in_channels, num_classes=0, global_pool=vit.global_pool,
        embed_dim=vit.embed_dim, depth=len(vit.blocks), num_heads=vit.num_heads, mlp_ratio=vit.mlp_ratio,
        qkv_bias=vit.qkv_bias, init_values=vit.init_values, class_token=vit.cls_token is not None,
        no_embed_class=vit.no_embed_class, pre_norm=not isinstance(vit.norm_pre, nn.Identity),
        fc_norm=not isinstance(vit.fc_norm, nn.Identity), pos_drop_rate=rate, proj_drop_rate=rate,
        attn_drop_rate=float(getattr(vit, "attn_drop_rate", 0.0)),
        drop_path_rate=float(getattr(vit, "drop_path_rate", 0.0)), weight_init="skip")
    state = {k: v for k, v in vit.state_dict().items() if not k.startswith("head.")}
    timm_vit.load_state_dict(state, strict=True)
    first = next(vit.parameters(), None)
    return timm_vit.to(first.device) if first is not None else timm_vit


class BackboneView(nn.Module):
    """A Mammoth backbone as a feature extractor ``body`` (its head replaced by the identity) and a linear
    ``classifier`` over ``feature_dim`` features."""

    def __init__(self, backbone: nn.Module, num_classes: int):
        super().__init__()
        name = next((n for n in CLASSIFIER_NAMES if isinstance(getattr(backbone, n, None), nn.Module)), None)
        if name is None:
            raise ValueError(f"{type(backbone).__name__} has no head named one of {CLASSIFIER_NAMES}")
        head = getattr(backbone, name)
        self.feature_dim = _in_features(head)
        identity = nn.Identity()  # every reference to the head (some backbones also keep it in a Sequential)
        for parent, child in [(p, c) for p in backbone.modules() for c, m in p.named_children() if m is head]:
            setattr(parent, child, identity)
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


class PlainTrainView(Dataset):
    """The current task's training images (Mammoth's train set, in its order) with ``transform``: (x, label)."""

    def __init__(self, train: Any, transform: Any):
        self.train = copy.copy(getattr(train, "dataset", train))  # the images inside Mammoth's wrapper
        self.train.transform = transform

    def __len__(self) -> int:
        return len(self.train)

    def __getitem__(self, index: int) -> tuple[Any, Any]:
        item = self.train[index]
        return item[0], item[1]


class DatasetView:
    """Mammoth's dataset plus ``train_dataset(task)`` (the current task's training split, as Mammoth's train
    loader holds it) and ``make_loader`` (seeded as in second-order-cl: the n-th shuffled loader of a task draws
    its order from (seed, task, ``loader<n>``); Mammoth's own train loader counts as the first),
    ``plain_train_dataset(task)`` and ``n_tasks``; every other attribute is the dataset's."""

    def __init__(self, dataset: Any, args: Any, shuffled: dict[int, int]):
        self._dataset = dataset
        self._args = args
        self._shuffled = shuffled  # task -> shuffled loaders made (kept by the model across hooks)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._dataset, name)

    def train_dataset(self, task: int) -> Any:
        return self._dataset.train_loader.dataset

    @property
    def n_tasks(self) -> int:
        return self._dataset.N_TASKS

    def plain_train_dataset(self, task: int) -> Dataset:
        """The current task's training images with the transform Mammoth tests with."""
        loaders = getattr(self._dataset, "test_loaders", None)
        transform = loaders[-1].dataset.transform if loaders else self._dataset.TEST_TRANSFORM
        return PlainTrainView(self._dataset.train_loader.dataset, transform)

    def make_loader(self, data: Any, shuffle: bool, batch_size: Optional[int] = None,
                    counted: bool = True) -> DataLoader:
        if batch_size is None and not shuffle:  # evaluation-style passes: larger batches, as in second-order-cl
            batch_size = max(self._args.batch_size, 128)
        batch_size = batch_size or self._args.batch_size
        workers = self._args.num_workers or 0
        task = max(int(getattr(self._dataset, "c_task", 0)), 0)
        n = self._shuffled.get(task, 1) if shuffle else 0
        seed = seeding.derive_seed(seeding.run_seed(self._args), task, f"loader{n}" if shuffle else "test_loader")
        generator = torch.Generator().manual_seed(seed)  # a loader draws its base seed here, not from the global RNG
        if not shuffle:
            return DataLoader(data, batch_size=batch_size, shuffle=False, num_workers=workers, generator=generator)
        self._shuffled[task] = n + int(counted)  # counted=False: the next loader's stream, not counted as one
        sampler = ShardedBatchSampler(len(data), batch_size, shuffle=True, seed=seed,
                                      drop_last=bool(getattr(self._args, "drop_last", False)))
        return DataLoader(data, batch_sampler=sampler, num_workers=workers, generator=generator)


class ContinualModel(MammothContinualModel):
    """Mammoth's base class with the interface of the exported methods (see the module docstring)."""

    NAME = ""
    COMPATIBILITY: list[str] = []
    DEFAULTS: dict[str, Any] = {}
    SETTINGS: Optional[type] = None
    LOG_EVERY = 25
    USES_NOT_AUG = False
    _building = True  # Mammoth's constructor asks for an optimiser before the method has chosen its parameters
    _skipped_epochs: Optional[tuple] = None  # (--n_epochs,) during a task with no optimiser (restored at its end)

    def __init_subclass__(cls, **kwargs: Any) -> None:
        """Each model's constructor gets a :class:`BackboneView`; its ``get_parser`` also sets its ``DEFAULTS``."""
        super().__init_subclass__(**kwargs)
        if "__init__" in cls.__dict__:  # the method's constructor sees the backbone as a BackboneView
            init = cls.__dict__["__init__"]

            def __init__(self, backbone, loss, args, transform, dataset=None, _init=init):
                if backbone is not None and not isinstance(backbone, BackboneView):
                    backbone = BackboneView(backbone, dataset.N_CLASSES)
                if dataset is not None and not isinstance(dataset, DatasetView):
                    dataset = DatasetView(dataset, args, {})
                _init(self, backbone, loss, args, transform, dataset)
            cls.__init__ = __init__
        if "get_parser" in cls.__dict__:  # the class's own parser; its subclasses inherit it, as in the project
            cls._own_get_parser = cls.__dict__["get_parser"]

        def get_parser(parser, _cls=cls):
            own = getattr(_cls, "_own_get_parser", None)  # else the flags of the class's own SETTINGS
            parser = (own(parser) if own is not None else
                      add_settings_flags(parser, _cls.SETTINGS) if _cls.SETTINGS is not None else parser) or parser
            parser.set_defaults(**_cls.DEFAULTS)
            return parser
        cls.get_parser = staticmethod(get_parser)

    @classmethod
    def get_parser(cls, parser):
        return add_settings_flags(parser, cls.SETTINGS) if cls.SETTINGS is not None else parser

    def __init__(self, backbone: nn.Module, loss: Any, args: Any, transform: Any, dataset: Any = None):
        if isinstance(dataset, DatasetView):  # Mammoth keeps its own dataset
            dataset = dataset._dataset
        if backbone is not None and not isinstance(backbone, BackboneView):
            backbone = BackboneView(backbone, dataset.N_CLASSES)
        super().__init__(backbone, loss, args, transform, dataset=dataset)
        if type(self).NAME in TIMM_VIT:  # before the method's own constructor reads the backbone
            self.net.body = timm_vision_transformer(self.net.body)
        self.settings: Any = settings_from_args(self.SETTINGS, args) if self.SETTINGS is not None else None
        self._building = False
        self._shuffled_loaders: dict[int, int] = {}

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

    # (project methods: inlined here by the export from this project's ContinualModel)

    def meta_begin_task(self, dataset: Any) -> None:
        self.to(self.device)  # the parts outside ``net`` (Mammoth moves only ``net``)
        super().meta_begin_task(DatasetView(dataset, self.args, self._shuffled_loaders))
        if self.opt is None:  # nothing to train: Mammoth's loop skips the task (it trains while n_epochs > 0)
            self._skipped_epochs = (self.args.n_epochs,)
            self.args.n_epochs = 0

    def meta_observe(self, *args: Any, **kwargs: Any) -> Any:
        with self.autocast():
            return super().meta_observe(*args, **kwargs)

    def meta_end_task(self, dataset: Any) -> None:
        if self._skipped_epochs is not None:
            (self.args.n_epochs,), self._skipped_epochs = self._skipped_epochs, None
        super().meta_end_task(DatasetView(dataset, self.args, self._shuffled_loaders))
