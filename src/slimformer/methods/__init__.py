"""Method registry: one config dataclass + one apply function per method.

Each method package registers itself in its own ``__init__.py``
(:func:`slimformer.methods.base.register_method`); importing the packages here fills
:data:`METHODS`: the built-in ones by name (their configs are re-exported), then any other
method package in this folder (so adding a method touches only its own folder, see
docs/extending.md). Only the (torch-free) config modules are imported; each apply function
is imported from its ``"module:function"`` on first use of ``spec.apply`` (see MethodSpec).
"""

from __future__ import annotations

import importlib
import pkgutil

from .base import (METHODS, MethodSpec, Runtime, get_method, method_names, register_method, spec_for_config,
                   structures_of)
from .slicegpt import SliceGPTConfig
from .fasp import FASPConfig
from .baselines import MagnitudeConfig, RandomConfig, WandaSPConfig
from .dotresize import DOTResizeConfig
from .modegpt import MoDeGPTConfig
from .prunenet import PruneNetConfig
from .disp import DISPConfig
from .auto import AutoConfig
from .composite import CompositeConfig

for _pkg in pkgutil.iter_modules(__path__):  # method packages not named above (``_shared`` is no method)
    if _pkg.ispkg and not _pkg.name.startswith("_"):
        importlib.import_module(f"{__name__}.{_pkg.name}")

__all__ = ["AutoConfig", "CompositeConfig", "DISPConfig", "DOTResizeConfig", "FASPConfig", "METHODS", "MagnitudeConfig", "MethodSpec",
           "MoDeGPTConfig", "PruneNetConfig", "RandomConfig", "Runtime", "SliceGPTConfig", "WandaSPConfig",
           "get_method", "method_names", "register_method", "spec_for_config", "structures_of"]
