"""What every method shares: runtime options, the registry entry shape and the registry itself
(torch-free: the registry and the CLI parser are built without importing torch).

A method registers itself from its own package ``__init__.py`` with :func:`register_method`
(see docs/extending.md); :mod:`slimformer.methods` only imports the method packages.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable

if TYPE_CHECKING:
    import torch
    from torch import nn

    from ..arch import ArchAdapter
    from ..calib.source import BlockSource


@dataclass
class Runtime:
    """How to run a method (not *what* it computes).

    Attributes:
        device: compute device for the block being processed.
        batch_size: calibration windows per forward.
        offload_activations: keep cached activations on CPU between blocks.
        progress: show per-layer progress bars.
        blocks: where the layer loops get the decoder blocks from
            (:class:`~slimformer.calib.source.BlockSource`); ``None``: the model is in
            memory (:meth:`block_source` makes an in-memory source). The API passes the
            :class:`~slimformer.calib.offload.LayerStore` of an offloaded model.
    """

    device: torch.device
    batch_size: int = 8
    offload_activations: bool = False
    progress: bool = True
    blocks: BlockSource | None = None

    def block_source(self, model: nn.Module, adapter: ArchAdapter) -> BlockSource:
        """:attr:`blocks`, or an in-memory source of ``model`` when it is ``None``."""
        from ..calib.source import blocks_or_memory

        return blocks_or_memory(self.blocks, model, adapter)


# apply(model, adapter, config, calib_ids [N, T], runtime) -> method-specific report fields
ApplyFn = Callable[["nn.Module", "ArchAdapter", Any, "torch.Tensor", Runtime], "dict[str, Any]"]


@dataclass(frozen=True)
class MethodSpec:
    """One registry entry: a method's name, config class and apply function.

    ``apply_ref`` is the apply function itself or ``"package.module:function"``, imported
    on first use of :attr:`apply`: the registry then imports only the (torch-free) config
    modules, so building the CLI parser does not import torch.
    """

    name: str
    config_cls: type
    apply_ref: ApplyFn | str
    needs_calibration: bool = True
    #: False for calibration-free methods (PruneNet): passing data is an error, not silently ignored
    accepts_calibration: bool = True
    #: True when the method touches each block in a single layer-by-layer pass, taking the
    #: blocks from ``runtime.blocks`` (:class:`slimformer.calib.source.BlockSource`), so it runs
    #: on an offloaded model (:mod:`slimformer.calib.offload`); methods that need all blocks at
    #: once (training) do not
    offload: bool = False

    @property
    def apply(self) -> ApplyFn:
        """The apply function (imported from ``apply_ref`` when that is a ``"module:function"`` string)."""
        if not isinstance(self.apply_ref, str):
            return self.apply_ref
        module, _, function = self.apply_ref.partition(":")
        return getattr(importlib.import_module(module), function)


#: every registered method by name, in registration order (see :func:`register_method`)
METHODS: dict[str, MethodSpec] = {}


def register_method(name: str, config_cls: type, apply: ApplyFn | str, **flags: Any) -> MethodSpec:
    """Add a method to the registry (call it from the method package's ``__init__.py``).

    Args:
        name: the method's name (``--method NAME``, ``get_method(NAME)``).
        config_cls: its config dataclass; :func:`spec_for_config` finds the method by this
            exact type (a subclass is a different method and needs its own registration).
        apply: ``"package.module:function"`` (imported on first use, so registering stays
            torch-free) or the apply function itself.
        flags: the :class:`MethodSpec` flags (``needs_calibration``, ``accepts_calibration``,
            ``offload``).

    Registering the same entry again is a no-op; another entry under a taken name, or a
    config class that already belongs to another method, is a ValueError.
    """
    spec = MethodSpec(name, config_cls, apply, **flags)
    if name in METHODS:
        if METHODS[name] == spec:
            return METHODS[name]
        raise ValueError(f"method {name!r} is already registered (with {METHODS[name].config_cls.__name__})")
    owner = next((s.name for s in METHODS.values() if s.config_cls is config_cls), None)
    if owner is not None:
        raise ValueError(f"{config_cls.__name__} is already the config of method {owner!r}")
    METHODS[name] = spec
    return spec


def method_names() -> list[str]:
    return sorted(METHODS)


def get_method(name: str) -> MethodSpec:
    """Registry lookup with a clear error listing the known methods."""
    if name not in METHODS:
        raise ValueError(f"unknown method {name!r}; available: {', '.join(method_names())}")
    return METHODS[name]


def structures_of(config: Any) -> frozenset[str] | None:
    """What a method config says it changes (its ``touches()``: ``residual``, ``heads``, ``mlp``,
    ``qk``), or ``None`` when the config does not say (then no family check runs before it)."""
    touches = getattr(config, "touches", None)
    return frozenset(touches()) if callable(touches) else None


def spec_for_config(config: Any) -> MethodSpec:
    """The registry entry whose config class is exactly ``type(config)``."""
    for spec in METHODS.values():
        if type(config) is spec.config_cls:
            return spec
    raise TypeError(f"{type(config).__name__} is not a registered method config")


__all__ = ["METHODS", "MethodSpec", "Runtime", "get_method", "method_names", "register_method", "spec_for_config", "structures_of"]
