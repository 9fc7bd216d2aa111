"""Method registry: one config dataclass + one apply function per method."""

from __future__ import annotations

from typing import Any

from .base import MethodSpec, Runtime
from .slicegpt import SliceGPTConfig
from .fasp import FASPConfig
from .baselines import MagnitudeConfig, RandomConfig, WandaSPConfig
from .dotresize import DOTResizeConfig
from .prunenet import PruneNetConfig
from .modegpt import MoDeGPTConfig
from .disp import DISPConfig

# Only the (torch-free) config modules are imported here; each apply function is imported
# from its "module:function" on first use of ``spec.apply`` (see MethodSpec).
_M = __name__
METHODS: dict[str, MethodSpec] = {
    "slicegpt": MethodSpec("slicegpt", SliceGPTConfig, f"{_M}.slicegpt.apply:apply_slicegpt", offload=True),
    "fasp": MethodSpec("fasp", FASPConfig, f"{_M}.fasp.apply:apply_fasp", offload=True),
    "magnitude": MethodSpec("magnitude", MagnitudeConfig, f"{_M}.baselines.apply:apply_magnitude",
                            needs_calibration=False, offload=True),
    "wanda-sp": MethodSpec("wanda-sp", WandaSPConfig, f"{_M}.baselines.apply:apply_wanda_sp", offload=True),
    "random": MethodSpec("random", RandomConfig, f"{_M}.baselines.apply:apply_random", needs_calibration=False,
                         offload=True),
    "dotresize": MethodSpec("dotresize", DOTResizeConfig, f"{_M}.dotresize.apply:apply_dotresize", offload=True),
    "modegpt": MethodSpec("modegpt", MoDeGPTConfig, f"{_M}.modegpt.apply:apply_modegpt", offload=True),
    "prunenet": MethodSpec("prunenet", PruneNetConfig, f"{_M}.prunenet.apply:apply_prunenet", needs_calibration=False,
                           accepts_calibration=False),
    # trains on all blocks at once: no offloading
    "disp": MethodSpec("disp", DISPConfig, f"{_M}.disp.apply:apply_disp"),
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
