"""slimformer: structured width compression of Hugging Face causal LLMs.

The public names are loaded on first use (PEP 562): ``import slimformer`` imports
neither torch nor transformers, so the ``slimformer`` command answers ``--help`` and
argument errors at once. ``sf.compress``, ``sf.SliceGPTConfig`` etc. work as before.
"""

from __future__ import annotations

import sys
import types
from typing import TYPE_CHECKING, Any

from ._lazy import lazy_exports
from ._version import __version__

_EXPORTS = {
    **{n: ".api" for n in ("CompressionResult", "compress", "compress_offloaded", "count_params", "export",
                               "load_model")},
    **{n: ".arch" for n in ("UnsupportedModelError", "supported_model_types")},
    **{n: ".methods" for n in ("SliceGPTConfig", "FASPConfig", "MagnitudeConfig", "RandomConfig", "WandaSPConfig",
                               "DOTResizeConfig", "MoDeGPTConfig", "PruneNetConfig", "DISPConfig", "AutoConfig",
                               "CompositeConfig")},
    # ``sf.finetune`` is the function (the submodule is ``slimformer.finetune`` in sys.modules)
    "FinetuneConfig": ".finetune_config",  # torch-free
    **{n: ".finetune" for n in ("FinetuneResult", "finetune")},
}
#: submodules reachable as attributes without an import (``sf.data.load(...)``, ``sf.methods.get_method``)
_SUBMODULES = ("api", "arch", "calib", "core", "data", "eval", "io", "memory", "methods", "schedule", "validate")

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS, _SUBMODULES)


class _Package(types.ModuleType):
    """Keeps ``slimformer.finetune`` the function when the submodule of that name is imported
    (the import system sets the package attribute to the submodule; eager imports used to
    overwrite it with the function right away)."""

    def __setattr__(self, name: str, value: Any) -> None:
        if name == "finetune" and isinstance(value, types.ModuleType):
            value = value.finetune
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package

if TYPE_CHECKING:  # what static checkers and IDEs see
    from . import data
    from .api import CompressionResult, compress, compress_offloaded, count_params, export, load_model
    from .arch import UnsupportedModelError, supported_model_types
    from .finetune import FinetuneConfig, FinetuneResult, finetune
    from .methods import (AutoConfig, CompositeConfig, DISPConfig, DOTResizeConfig, FASPConfig, MagnitudeConfig,
                          MoDeGPTConfig, PruneNetConfig, RandomConfig, SliceGPTConfig, WandaSPConfig)

__all__ = [
    "AutoConfig",
    "CompositeConfig",
    "CompressionResult",
    "FASPConfig",
    "MagnitudeConfig",
    "RandomConfig",
    "WandaSPConfig",
    "DOTResizeConfig",
    "MoDeGPTConfig",
    "PruneNetConfig",
    "DISPConfig",
    "FinetuneConfig",
    "FinetuneResult",
    "SliceGPTConfig",
    "UnsupportedModelError",
    "__version__",
    "compress",
    "compress_offloaded",
    "count_params",
    "data",
    "export",
    "finetune",
    "load_model",
    "supported_model_types",
]
