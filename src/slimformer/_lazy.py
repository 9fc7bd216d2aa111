"""Lazy package attributes (PEP 562), so ``import slimformer`` and the CLI parser stay torch-free.

A package lists the names it exports and the submodule each comes from; the submodule
is imported the first time one of its names is read (``slimformer.compress``,
``from slimformer.methods.disp import apply_disp``), and the value is then cached on
the package.
"""

from __future__ import annotations

import importlib
import sys
from typing import Any, Callable


def lazy_exports(package: str, table: dict[str, str], submodules: tuple[str, ...] = ()
                 ) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """``__getattr__`` and ``__dir__`` for ``package``.

    Args:
        package: the package's ``__name__``.
        table: exported name -> submodule it is defined in, relative to ``package`` (``".apply"``).
        submodules: names of submodules that are attributes too (``slimformer.data``), imported
            on first access like ``import package.name`` would.
    """

    def __getattr__(name: str) -> Any:
        if name in submodules:
            return importlib.import_module(f".{name}", package)  # the import sets the attribute
        where = table.get(name)
        if where is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(where, package), name)
        setattr(sys.modules[package], name, value)
        return value

    def __dir__() -> list[str]:
        return sorted(set(vars(sys.modules[package])) | set(table) | set(submodules))

    return __getattr__, __dir__
