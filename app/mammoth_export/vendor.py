"""The project-only modules a method imports, and their mechanical rewrite into one package of a Mammoth checkout.

Every ``import``/``from`` of a project package (``models``, ``utils``, ``datasets``, ``backbone``,
``mammoth_compat``) is found with :mod:`ast` (module level and inside functions), followed transitively, and
rewritten to the same module under :data:`PACKAGE` (``utils.args`` -> ``models.second_order_cl.utils.args``), so
the copies import only each other, Mammoth and third-party packages.
"""
from __future__ import annotations

import ast
import os
import re
from typing import Callable, Optional

PROJECT_PACKAGES = ("models", "utils", "datasets", "backbone", "mammoth_compat")
PACKAGE = "models.second_order_cl"  # where the copies live inside Mammoth's tree
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def module_file(module: str, root: str = ROOT) -> Optional[str]:
    """The project file of ``module`` (a module or a package's ``__init__.py``), or None."""
    base = os.path.join(root, *module.split("."))
    for path in (base + ".py", os.path.join(base, "__init__.py")):
        if os.path.isfile(path):
            return path
    return None


def is_project(module: str) -> bool:
    return module.split(".")[0] in PROJECT_PACKAGES


def imported_modules(source: str, module: str) -> set[str]:
    """Project modules that ``source`` (the code of ``module``) imports, anywhere in the file."""
    found: set[str] = set()
    package = module.rpartition(".")[0]
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if is_project(a.name))
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[:len(package.split(".")) - node.level + 1]
                base = ".".join(parts + ([base] if base else []))
            if not is_project(base):
                continue
            subs = {f"{base}.{a.name}" for a in node.names if module_file(f"{base}.{a.name}") is not None}
            found.update(subs)  # ``from utils import distributed``: a submodule
            if len(subs) < len(node.names):  # names defined in ``base`` itself
                found.add(base)
    return found


def closure(start: str, replaced: frozenset[str] = frozenset()) -> list[str]:
    """``start`` and every project module it needs, sorted; modules in ``replaced`` are not followed."""
    seen: set[str] = set()
    todo = [start]
    while todo:
        mod = todo.pop()
        if mod in seen:
            continue
        seen.add(mod)
        if mod in replaced:
            continue
        path = module_file(mod)
        if path is None:
            raise FileNotFoundError(f"no project module {mod}")
        with open(path) as fh:
            todo.extend(imported_modules(fh.read(), mod) - seen)
    return sorted(seen)


_IMPORT = re.compile(r"^(\s*)(from|import)(\s+)(" + "|".join(PROJECT_PACKAGES) + r")(?=[.\s])", re.M)


def rewrite_imports(source: str, package: str = PACKAGE) -> str:
    """Prefix every import of a project package with ``package``."""
    return _IMPORT.sub(lambda m: f"{m.group(1)}{m.group(2)}{m.group(3)}{package}.{m.group(4)}", source)


def exported_path(module: str, package: str = PACKAGE) -> str:
    """Relative file path of ``module``'s copy under ``package`` (packages get ``__init__.py``)."""
    path = module_file(module)
    tail = "__init__.py" if path is not None and path.endswith("__init__.py") else None
    parts = package.split(".") + module.split(".")
    return os.path.join(*parts, tail) if tail else os.path.join(*parts) + ".py"


def vendor(modules: list[str], overrides: dict[str, str], write: Callable[[str, str], None],
           package: str = PACKAGE) -> None:
    """Write the rewritten copy of each module (``overrides``: module -> replacement source) and the
    ``__init__.py`` of every package on the way (empty unless the package's own ``__init__`` is needed).
    An override is written as it is (it imports Mammoth's modules under their own names)."""
    inits: set[str] = set()
    for mod in modules:
        parts = mod.split(".")
        for i in range(len(parts) - (0 if exported_path(mod).endswith("__init__.py") else 1)):
            inits.add(".".join(parts[:i + 1]))
    for mod in modules:
        if mod in overrides:  # written for Mammoth's tree already
            write(exported_path(mod, package), overrides[mod])
            continue
        with open(module_file(mod)) as fh:
            write(exported_path(mod, package), rewrite_imports(fh.read(), package))
    for pkg in sorted(inits - set(modules)):
        write(os.path.join(*package.split("."), *pkg.split("."), "__init__.py"), "")
    write(os.path.join(*package.split("."), "__init__.py"),
          '"""Support modules of the methods exported from second-order-cl (generated; do not edit)."""\n')
