"""Name -> class lookup by scanning a package's modules (no global mutable registry).

Models and datasets are found by their ``NAME`` class attribute, backbones by the
``BACKBONE_NAME`` attribute that :func:`backbone.register` puts on a factory. Names are
case-insensitive and ``_``/``-`` are interchangeable.
"""
from __future__ import annotations

import importlib
import pkgutil
from functools import lru_cache
from types import ModuleType
from typing import Any, Callable

from utils.errors import UserError, closest


def normalize_name(name: str) -> str:
    """Canonical form of a registry name: lower case, ``-`` for ``_``."""
    return name.strip().lower().replace("_", "-")


class ImportFailure:
    """Stands for a module that failed to import; raised only if one of its names is requested."""

    def __init__(self, module: str, error: BaseException):
        self.module, self.error = module, error


def scan_package(package: str, select: Callable[[Any], list[str]]) -> dict[str, Any]:
    """Import every top-level module of ``package`` and collect ``{name: object}``.

    ``select(obj)`` returns the registry names of ``obj`` (empty if it is not an entry).
    An entry found in several modules (e.g. re-exported base classes) is kept once.
    """
    pkg = importlib.import_module(package)
    table: dict[str, Any] = {}
    failures: dict[str, ImportFailure] = {}
    for info in pkgutil.iter_modules(pkg.__path__):
        if info.ispkg or info.name.startswith("_"):
            continue
        modname = f"{package}.{info.name}"
        try:
            module: ModuleType = importlib.import_module(modname)
        except Exception as exc:  # keep going: one broken file must not hide the others
            failures[normalize_name(info.name)] = ImportFailure(modname, exc)
            continue
        for obj in vars(module).values():
            for name in select(obj):
                table.setdefault(normalize_name(name), obj)
    for name, failure in failures.items():
        table.setdefault(name, failure)
    return table


class Registry:
    """A lazily built, read-only view of the entries of one package."""

    def __init__(self, kind: str, package: str, select: Callable[[Any], list[str]]):
        self.kind, self.package, self._select = kind, package, select

    @property
    def table(self) -> dict[str, Any]:
        return _cached_scan(self.package, self._select)

    def names(self) -> list[str]:
        return sorted(k for k, v in self.table.items() if not isinstance(v, ImportFailure))

    def get(self, name: str) -> Any:
        key = normalize_name(name)
        entry = self.table.get(key)
        if entry is None:
            raise UserError(f"unknown {self.kind} '{name}'{closest(key, self.names())}; "
                            f"available: {', '.join(self.names())}")
        if isinstance(entry, ImportFailure):
            raise UserError(f"{self.kind} '{name}' cannot be used: importing {entry.module} failed: "
                            f"{type(entry.error).__name__}: {entry.error}")
        return entry


@lru_cache(maxsize=None)
def _cached_scan(package: str, select: Callable[[Any], list[str]]) -> dict[str, Any]:
    return scan_package(package, select)
