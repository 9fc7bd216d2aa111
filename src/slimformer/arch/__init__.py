"""Architecture adapters, chosen by ``config.model_type`` (never by model name)."""

from __future__ import annotations

from typing import Any

from .base import ArchAdapter, UnsupportedModelError, get_module, set_module
from .families import discover

#: every family module's adapter (``arch/families/<family>.py``)
ALL_ADAPTERS: tuple[ArchAdapter, ...] = discover()
_REGISTRY: dict[str, ArchAdapter] = {t: a for a in ALL_ADAPTERS for t in a.model_types}


def supported_model_types() -> list[str]:
    """The ``config.model_type`` values slimformer can compress."""
    return sorted(_REGISTRY)


def get_adapter(model_or_config: Any) -> ArchAdapter:
    """Adapter for a model or config; raises UnsupportedModelError with the supported list."""
    config = getattr(model_or_config, "config", model_or_config)
    model_type = getattr(config, "model_type", None)
    adapter = _REGISTRY.get(model_type)
    if adapter is None:
        raise UnsupportedModelError(
            f"unsupported architecture model_type={model_type!r}; "
            f"supported: {', '.join(supported_model_types())}"
        )
    return adapter.for_config(config)


def register_adapter(adapter: ArchAdapter) -> None:
    """Add a family at run time (tests, plugins). Later registrations win.

    Saved models load for any family whose ``*ForCausalLM`` class transformers maps to
    its ``model_type``; a family shipped with slimformer is one file in ``arch/families/``."""
    for t in adapter.model_types:
        _REGISTRY[t] = adapter


__all__ = [
    "ALL_ADAPTERS",
    "ArchAdapter",
    "UnsupportedModelError",
    "get_adapter",
    "get_module",
    "register_adapter",
    "set_module",
    "supported_model_types",
]
