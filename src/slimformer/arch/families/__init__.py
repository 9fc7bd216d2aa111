"""The supported model families: one module per family, each defining ``ADAPTER``.

Adding a family is adding one file here (see docs/extending.md): the registry
(:mod:`slimformer.arch`) imports every module of this package, the saved-model loader
accepts any family whose ``*ForCausalLM`` class transformers maps to its ``model_type``,
and the test grid (``tests/test_family_grid.py``) runs every method on the family's
``tiny`` configuration.
"""

from __future__ import annotations

import importlib
import pkgutil

from ..base import ArchAdapter


def discover() -> tuple[ArchAdapter, ...]:
    """The ``ADAPTER`` of every module in this package (modules starting with ``_`` are helpers)."""
    found = []
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda i: i.name):
        if info.name.startswith("_"):
            continue
        module = importlib.import_module(f"{__name__}.{info.name}")
        adapter = getattr(module, "ADAPTER", None)
        if not isinstance(adapter, ArchAdapter):
            raise TypeError(f"{module.__name__} defines no ADAPTER (an ArchAdapter)")
        found.append(adapter)
    return tuple(found)


__all__ = ["discover"]
