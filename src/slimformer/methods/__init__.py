"""Method registry: one config dataclass + one apply function per method."""

from __future__ import annotations

from typing import Any

from .base import MethodSpec, Runtime
from .slicegpt import SliceGPTConfig, apply_slicegpt
from .fasp import FASPConfig, apply_fasp
from .baselines import MagnitudeConfig, RandomConfig, WandaSPConfig, apply_magnitude, apply_random, apply_wanda_sp
from .dotresize import DOTResizeConfig, apply_dotresize
from .prunenet import PruneNetConfig, apply_prunenet
from .modegpt import MoDeGPTConfig, apply_modegpt
from .disp import DISPConfig, apply_disp

METHODS: dict[str, MethodSpec] = {
    "slicegpt": MethodSpec("slicegpt", SliceGPTConfig, apply_slicegpt, offload=True),
    "fasp": MethodSpec("fasp", FASPConfig, apply_fasp, offload=True),
    "magnitude": MethodSpec("magnitude", MagnitudeConfig, apply_magnitude, needs_calibration=False, offload=True),
    "wanda-sp": MethodSpec("wanda-sp", WandaSPConfig, apply_wanda_sp, offload=True),
    "random": MethodSpec("random", RandomConfig, apply_random, needs_calibration=False, offload=True),
    "dotresize": MethodSpec("dotresize", DOTResizeConfig, apply_dotresize, offload=True),
    "modegpt": MethodSpec("modegpt", MoDeGPTConfig, apply_modegpt, offload=True),
    "prunenet": MethodSpec("prunenet", PruneNetConfig, apply_prunenet, needs_calibration=False,
                           accepts_calibration=False),
    # trains on all blocks at once: no offloading
    "disp": MethodSpec("disp", DISPConfig, apply_disp),
}


def method_names() -> list[str]:
    return sorted(METHODS)


def get_method(name: str) -> MethodSpec:
    """Registry lookup with a clear error listing the known methods."""
    if name not in METHODS:
        raise ValueError(f"unknown method {name!r}; available: {', '.join(method_names())}")
    return METHODS[name]


def spec_for_config(config: Any) -> MethodSpec:
    """The registry entry whose config class ``config`` is an instance of."""
    for spec in METHODS.values():
        if isinstance(config, spec.config_cls):
            return spec
    raise TypeError(f"{type(config).__name__} is not a registered method config")


__all__ = ["FASPConfig", "MagnitudeConfig", "RandomConfig", "WandaSPConfig"]
__all__ += ["DISPConfig"]
__all__ += ["DOTResizeConfig", "MoDeGPTConfig", "PruneNetConfig", "METHODS", "MethodSpec", "Runtime", "SliceGPTConfig", "get_method", "method_names", "spec_for_config"]
