"""Layers only point down: app -> models -> (datasets, backbone) -> utils. Checked on the import statements."""
import ast
import os

import pytest

from tests.conftest import ROOT

# package -> top-level packages of this project it must never import (even lazily, inside a function)
FORBIDDEN = {"utils": {"app", "models", "datasets", "backbone", "benchmarks"},
             "backbone": {"app", "models", "datasets", "benchmarks"},
             "datasets": {"app", "models", "backbone", "benchmarks"},
             "models": {"app", "benchmarks"}}


def imported_packages(path: str) -> set[str]:
    with open(path) as fh:
        tree = ast.parse(fh.read(), path)
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module.split(".")[0])
    return found


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_lower_layers_never_import_upper_ones(package):
    bad = []
    for folder, _, files in os.walk(os.path.join(ROOT, package)):
        for name in files:
            if name.endswith(".py"):
                path = os.path.join(folder, name)
                wrong = imported_packages(path) & FORBIDDEN[package]
                bad += [f"{os.path.relpath(path, ROOT)} imports {w}" for w in sorted(wrong)]
    assert not bad, bad


def test_the_checker_sees_lazy_imports(tmp_path):
    path = tmp_path / "m.py"
    path.write_text("import os\n\ndef f():\n    from app.runner import run\n    import models.sgd\n")
    assert imported_packages(str(path)) == {"os", "app", "models"}
