"""Mammoth's ``ContinualModel`` attributes and ``observe`` keyword filtering (mixed into the base class).

Only attributes are added: the framework's own models do not depend on them.
"""
from __future__ import annotations

import functools
import inspect
from typing import Any, Callable

import torch


class MammothModelAPI:
    """Dataset-derived attributes under Mammoth's names, and the device-side ``transform``.

    Expects ``self.dataset``, ``self.n_seen_classes`` and ``self.original_transform`` (the
    dataset's torchvision train pipeline), set by :class:`models.utils.continual_model.ContinualModel`.
    """

    dataset: Any
    n_seen_classes: int
    original_transform: Callable

    def __setattr__(self, name: str, value: Any) -> None:
        if name == "transform":  # a module assigned here must not become a sub-module (state_dict)
            object.__setattr__(self, "_device_transform", value)
            return
        super().__setattr__(name, value)

    def _dataset_attr(self, name: str) -> Any:
        if self.dataset is None:
            raise AttributeError(f"{name} needs the model's dataset (construct the model with dataset=...)")
        return getattr(self.dataset, name)

    @property
    def N_CLASSES(self) -> int:  # noqa: N802 - Mammoth's name
        return int(self._dataset_attr("n_classes"))

    @property
    def num_classes(self) -> int:
        return self.N_CLASSES

    @property
    def N_TASKS(self) -> int:  # noqa: N802
        return int(self._dataset_attr("n_tasks"))

    @property
    def n_tasks(self) -> int:
        return self.N_TASKS

    @property
    def SETTING(self) -> str:  # noqa: N802
        return str(self._dataset_attr("SETTING"))

    @property
    def cpt(self) -> int | list[int]:
        """Classes per task (the run's ``N_CLASSES_PER_TASK``: an int, or a list when tasks differ)."""
        return self._dataset_attr("n_classes_per_task")

    @property
    def classes_per_task(self) -> int | list[int]:
        return self.cpt

    @property
    def n_remaining_classes(self) -> int:
        return self.N_CLASSES - self.n_seen_classes if self.n_seen_classes >= 0 else -1

    @property
    def transform(self) -> Callable[[torch.Tensor], torch.Tensor]:
        """The dataset's train augmentation for float image batches on the device (kornia).

        Input: non-augmented images in [0, 1] (``not_aug_inputs``, buffer examples); output:
        augmented, normalised images, like the training inputs.
        """
        cached = self.__dict__.get("_device_transform")
        if cached is None:
            from mammoth_compat.transforms import to_device_transform
            cached = to_device_transform(self.original_transform)
            object.__setattr__(self, "_device_transform", cached)
        return cached

    @property
    def normalization_transform(self) -> Callable[[torch.Tensor], torch.Tensor]:
        """The dataset normalisation for float image batches on the device."""
        from mammoth_compat.transforms import to_device_transform
        return to_device_transform(self._dataset_attr("get_normalization_transform")())


@functools.lru_cache(maxsize=None)
def _keywords_of(function: Callable) -> tuple[frozenset[str], bool]:
    params = inspect.signature(function).parameters.values()
    names = frozenset(p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY))
    return names, any(p.kind == p.VAR_KEYWORD for p in params)


def accepted_keywords(method: Callable) -> tuple[frozenset[str], bool]:
    """(keyword names ``method`` declares, whether it takes ``**kwargs``); cached per function."""
    function = getattr(method, "__func__", method)
    try:
        return _keywords_of(function)
    except TypeError:  # unhashable callable
        return _keywords_of.__wrapped__(function)


def filter_keywords(method: Callable, kwargs: dict[str, Any]) -> dict[str, Any]:
    """The entries of ``kwargs`` that ``method`` accepts (all of them if it takes ``**kwargs``)."""
    names, var_kw = accepted_keywords(method)
    return dict(kwargs) if var_kw else {k: v for k, v in kwargs.items() if k in names}


def uses_not_aug(cls: type, base: type) -> bool:
    """Whether ``cls``'s loaders must build the not-augmented view.

    A class (below ``base``) that declares ``USES_NOT_AUG`` decides; otherwise - a model file written for
    Mammoth, where ``not_aug_inputs`` is always given - the view is built when ``observe`` mentions its
    third argument (read, stored, or passed on), or when the model's module reads the dataset's items itself
    (``train_loader``) or calls Mammoth's ``fill_buffer``/``icarl_replay``, which store that view.
    """
    for klass in cls.__mro__:
        if klass is base:
            break
        if "USES_NOT_AUG" in vars(klass):
            return bool(vars(klass)["USES_NOT_AUG"])
    import ast
    import textwrap
    observe = getattr(cls, "observe", None)
    try:
        params = list(inspect.signature(observe).parameters)
        tree = ast.parse(textwrap.dedent(inspect.getsource(observe)))
    except (TypeError, ValueError, OSError, SyntaxError):
        return True
    if _reads_items(cls):
        return True
    if len(params) < 4:  # (self, inputs, labels, not_aug_inputs, ...)
        return False
    name = params[3]
    return any(isinstance(node, ast.Name) and node.id == name for node in ast.walk(tree))


def _reads_items(cls: type) -> bool:
    """Whether ``cls``'s module iterates or indexes the task's items (where the not-augmented view is)."""
    import sys
    module = sys.modules.get(cls.__module__)
    try:
        source = inspect.getsource(module) if module is not None else ""
    except (TypeError, OSError):
        return True
    return any(word in source for word in ("train_loader", "fill_buffer", "icarl_replay"))
