"""Continual-learning methods: one file per method, found by the ``NAME`` of its ``ContinualModel``."""
from __future__ import annotations

from models.utils.continual_model import ContinualModel
from utils.registry import Registry


def _model_names(obj: object) -> list[str]:
    if isinstance(obj, type) and issubclass(obj, ContinualModel) and obj is not ContinualModel \
            and getattr(obj, "NAME", "") and obj.__dict__.get("NAME"):
        return [obj.NAME, *getattr(obj, "ALIASES", ())]
    return []


MODELS = Registry("model", "models", _model_names)


def get_model_class(name: str) -> type[ContinualModel]:
    return MODELS.get(name)
