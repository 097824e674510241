"""A dataset's structure: Mammoth's UPPER_CASE class attributes, per-instance lower-case values.

A benchmark declares ``N_TASKS``, ``SIZE``, ``CLASS_NAMES``, ... on its class (Mammoth's public API, read
by Mammoth's model files). What one run uses (after a dataset config, ``--joint``, a custom class order,
or names read from the data) lives in the instance's lower-case attribute (``n_tasks``, ``size``,
``class_names``, ...): the class attribute is never changed. On an instance, the UPPER_CASE name is a view
of the lower-case one (reading it gives the run's value; assigning it, as a Mammoth dataset file may,
sets the lower-case attribute).
"""
from __future__ import annotations

import inspect
from typing import Any

import numpy as np

from utils.errors import UserError

# dataset-config key (and class attribute) -> per-instance attribute
INSTANCE_NAMES = {"N_TASKS": "n_tasks", "N_CLASSES_PER_TASK": "n_classes_per_task", "N_CLASSES": "n_classes",
                  "SIZE": "size", "MEAN": "mean", "STD": "std", "TRANSFORM": "train_transform_spec",
                  "TEST_TRANSFORM": "test_transform_spec", "CLASS_NAMES": "class_names", "IN_CHANS": "in_chans"}
STRUCTURE_KEYS = ("N_TASKS", "N_CLASSES_PER_TASK", "N_CLASSES", "SIZE", "MEAN", "STD", "TRANSFORM", "TEST_TRANSFORM")


class InstanceView:
    """The declared value on the class; on an instance, the instance's lower-case attribute."""

    def __init__(self, declared: Any, attr: str):
        self.declared, self.attr = declared, attr

    def __get__(self, obj: Any, owner: Any = None) -> Any:
        return self.declared if obj is None else vars(obj).get(self.attr, self.declared)

    def __set__(self, obj: Any, value: Any) -> None:
        setattr(obj, self.attr, value)


def install_views(cls: type) -> None:
    """Make every UPPER_CASE structure attribute of ``cls`` (declared there or inherited, mixins included) a view."""
    for key, attr in INSTANCE_NAMES.items():
        value = inspect.getattr_static(cls, key, None)
        if not isinstance(value, InstanceView):
            setattr(cls, key, InstanceView(value, attr))


def declared_structure(cls: type) -> dict[str, Any]:
    """``{lower-case name: a copy of the class's declared value}`` (lists copied, so instances never share them)."""
    out = {}
    for key, attr in INSTANCE_NAMES.items():
        value = getattr(cls, key)
        out[attr] = list(value) if isinstance(value, list) else value
    return out


def _positive_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


def _numbers(value: Any) -> bool:
    return isinstance(value, list) and bool(value) and all(
        isinstance(v, (int, float)) and not isinstance(v, bool) and np.isfinite(v) for v in value)


def check_structure(structure: dict[str, Any], where: str) -> None:
    """Types and ranges of dataset-config structure keys (channel counts are checked by the dataset)."""
    def bad(key: str, expected: str) -> UserError:
        return UserError(f"{key} in {where} must be {expected}, got {structure[key]!r:.80}")
    for key in ("N_TASKS", "N_CLASSES"):
        if key in structure and not _positive_int(structure[key]):
            raise bad(key, "an integer >= 1")
    per_task = structure.get("N_CLASSES_PER_TASK")
    if "N_CLASSES_PER_TASK" in structure and not (_positive_int(per_task) or (
            isinstance(per_task, list) and per_task and all(_positive_int(v) for v in per_task))):
        raise bad("N_CLASSES_PER_TASK", "an integer >= 1 or a list of them (one per task)")
    size = structure.get("SIZE")
    if "SIZE" in structure and not (_positive_int(size) or (isinstance(size, list) and len(size) == 2 and all(
            _positive_int(v) for v in size))):
        raise bad("SIZE", "an image size: an integer >= 1 or a list [height, width]")
    for key in ("MEAN", "STD"):
        if key in structure and not _numbers(structure[key]):
            raise bad(key, "a list of numbers, one per image channel, e.g. [0.5, 0.5, 0.5]")
    if "STD" in structure and min(structure["STD"]) <= 0:
        raise bad("STD", "a list of numbers > 0 (images are divided by it)")
    if ("MEAN" in structure) != ("STD" in structure) or len(structure.get("MEAN", [])) != len(structure.get("STD", [])):
        raise UserError(f"MEAN and STD in {where} must be given together with one value per channel each, got "
                        f"MEAN {structure.get('MEAN')!r:.40} and STD {structure.get('STD')!r:.40}")
    for key in ("TRANSFORM", "TEST_TRANSFORM"):
        if key in structure and not isinstance(structure[key], list):
            raise bad(key, "a list of torchvision transforms, e.g. [ToTensor, {Normalize: {mean: [...], std: [...]}}]")
