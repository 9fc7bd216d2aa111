"""What every method shares: runtime options and the registry entry shape (torch-free:
the registry and the CLI parser are built without importing torch)."""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable

if TYPE_CHECKING:
    import torch
    from torch import nn

    from ..arch import ArchAdapter


@dataclass
class Runtime:
    """How to run a method (not *what* it computes).

    Attributes:
        device: compute device for the block being processed.
        batch_size: calibration windows per forward.
        offload_activations: keep cached activations on CPU between blocks.
        progress: show per-layer progress bars.
    """

    device: torch.device
    batch_size: int = 8
    offload_activations: bool = False
    progress: bool = True


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
    #: True when the method touches each block in a single layer-by-layer pass through
    #: :func:`slimformer.calib.runner.block_on`, so it runs on an offloaded model
    #: (:mod:`slimformer.calib.offload`); methods that need all blocks at once (training) do not
    offload: bool = False

    @property
    def apply(self) -> ApplyFn:
        """The apply function (imported from ``apply_ref`` when that is a ``"module:function"`` string)."""
        if not isinstance(self.apply_ref, str):
            return self.apply_ref
        module, _, function = self.apply_ref.partition(":")
        return getattr(importlib.import_module(module), function)
