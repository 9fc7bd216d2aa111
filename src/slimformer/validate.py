"""Option vocabularies and validators shared by the configs and the CLI, torch-free.

The method config dataclasses validate their fields on construction with these
helpers, and the CLI builds its parser (choices, help) from the same constants, so
``slimformer --help`` and argument errors need neither torch nor transformers. This
module imports nothing from slimformer; the modules that own each concept
(:mod:`slimformer.schedule`, :mod:`slimformer.core.structures`,
:mod:`slimformer.methods.dotresize.ot`) re-export the names they used to define.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

#: layer-redundancy slicing base when none is given: ``SB = DEFAULT_BASE_RATIO * SP``.
#: The reference code has no default (it sweeps SB from SP down to 0 in 0.02 steps);
#: halfway keeps every block sliced and scales with SP, so a target-params search
#: over SP is monotone. docs/schedules.md: the held-out choice (mixed across models: 0.5 kept).
DEFAULT_BASE_RATIO = 0.5

#: per-layer allocation schedules (:data:`slimformer.schedule.SCHEDULES` has one class each)
SCHEDULE_NAMES: tuple[str, ...] = ("uniform", "layer-redundancy", "global")

#: what a structured pruning method removes in attention (:mod:`slimformer.core.structures`)
ATTENTION_MODES: tuple[str, ...] = ("channels", "heads", "none")

#: dtypes of the per-batch X^T X products of the pruning methods (sums stay float64)
GRAM_DTYPES: tuple[str, ...] = ("float64", "float32")

#: dtypes a model may be loaded, trained or saved in (``--dtype``)
DTYPE_NAMES: tuple[str, ...] = ("float32", "bfloat16", "float16")

#: ``slimformer export --to``: GGUF (llama.cpp) or a plain transformers directory
EXPORT_TARGETS: tuple[str, ...] = ("gguf", "hf")

#: weight types of a GGUF export (``--dtype``); 1-D tensors always stay f32
GGUF_DTYPES: tuple[str, ...] = ("f32", "f16", "bf16", "q8_0")

#: ``--exportable``: restrict a pruning method to structures the target can hold
EXPORTABLE: tuple[str, ...] = ("none", "gguf", "hf")

#: DOTResize optimal transport (:mod:`slimformer.methods.dotresize.ot`): activation
#: distances between neurons, how the target neurons are chosen, their marginals, and
#: whether every source is transported (``balanced``) or only the dropped ones
#: (``mass-preserving``: each kept neuron keeps its own mass)
COSTS: tuple[str, ...] = ("l2", "sqeuclidean", "correlation")
TARGET_INITS: tuple[str, ...] = ("norm", "spread", "random")
TARGET_MARGINALS: tuple[str, ...] = ("uniform", "nearest")
TRANSPORTS: tuple[str, ...] = ("balanced", "mass-preserving")


def check_fraction(name: str, value: float, *, allow_zero: bool = True) -> float:
    """``value`` as a float in ``[0, 1)`` (``(0, 1)`` without ``allow_zero``); ValueError otherwise."""
    v = float(value)
    lo_ok = v >= 0.0 if allow_zero else v > 0.0
    if not (lo_ok and v < 1.0) or math.isnan(v):
        rng = "[0, 1)" if allow_zero else "(0, 1)"
        raise ValueError(f"{name} must be in {rng}, got {value!r}")
    return v


def check_int(name: str, value: object, minimum: int | None = None) -> int:
    """``value`` as an int; ValueError unless it is an integral number (not a bool) ``>= minimum``."""
    ok = not isinstance(value, bool) and isinstance(value, (int, float)) and float(value) == int(value)
    if not ok or (minimum is not None and int(value) < minimum):  # type: ignore[arg-type]
        bound = "" if minimum is None else f" >= {minimum}"
        raise ValueError(f"{name} must be an integer{bound}, got {value!r}")
    return int(value)  # type: ignore[arg-type]


def check_budget(method: str, sparsity: float | None, target_params: float | None,
                 sparsity_means: str) -> tuple[float | None, float | None]:
    """Every method's budget: exactly one of ``sparsity`` (a fraction in [0, 1) of what
    ``sparsity_means`` says) or ``target_params`` (a fraction in (0, 1) of the parameters)."""
    if (sparsity is None) == (target_params is None):
        raise ValueError(f"{method} needs exactly one of sparsity (--sparsity, {sparsity_means}) "
                         "or target_params (--target-params, fraction of the parameters)")
    return (None if sparsity is None else check_fraction("sparsity", sparsity),
            None if target_params is None else check_fraction("target_params", target_params, allow_zero=False))


def schedule_names() -> list[str]:
    """Names of the per-layer allocation schedules."""
    return list(SCHEDULE_NAMES)


def check_temperature(value: float) -> float:
    """The ``global`` schedule's softmax temperature: a finite number > 0."""
    if not float(value) > 0 or not math.isfinite(float(value)):
        raise ValueError(f"temperature must be > 0, got {value!r}")
    return float(value)


def check_schedule(name: str, *, slicing_base: float | None = None, temperature: float | None = None,
                   max_layer_sparsity: float | None = None) -> None:
    """What :func:`slimformer.schedule.make_schedule` checks, without building the schedule.

    ``name`` must be a known schedule; each setting given (not ``None``) must be valid
    for the schedule that takes it (``slicing_base``: ``layer-redundancy``;
    ``temperature`` and ``max_layer_sparsity``: ``global``).
    """
    if name not in SCHEDULE_NAMES:
        raise ValueError(f"unknown schedule {name!r}; available: {', '.join(SCHEDULE_NAMES)}")
    takes = {"layer-redundancy": {"slicing_base"}, "global": {"temperature", "max_layer_sparsity"}}.get(name, set())
    given = {k for k, v in (("slicing_base", slicing_base), ("temperature", temperature),
                            ("max_layer_sparsity", max_layer_sparsity)) if v is not None}
    foreign = sorted(given - takes)
    if foreign:
        raise ValueError(f"schedule {name!r} does not take {', '.join(foreign)}")
    if slicing_base is not None:
        check_fraction("slicing_base", slicing_base)
    if temperature is not None:
        check_temperature(temperature)
    if max_layer_sparsity is not None:
        check_fraction("max_layer_sparsity", max_layer_sparsity, allow_zero=False)


def check_bool(name: str, value: object) -> bool:
    """``value`` if it is a bool (not 0/1, not a string); else a one-line ValueError naming ``name``."""
    if not isinstance(value, bool):
        raise ValueError(f"{name} must be True or False, got {value!r}")
    return value


def check_selection(who: str, holdout: float, max_minutes: float | None) -> None:
    """The settings of a method that picks among candidates on held-out calibration windows
    (``auto``, ``composite``): ``holdout`` a fraction in (0, 1), ``max_minutes`` > 0 or ``None``."""
    if not 0 < float(holdout) < 1:
        raise ValueError(f"{who} holdout must be a fraction in (0, 1), got {holdout!r}")
    if max_minutes is not None and not float(max_minutes) > 0:
        raise ValueError(f"{who} max_minutes must be > 0, got {max_minutes!r}")


def require_dir(path: str | os.PathLike, what: str = "model directory") -> Path:
    """``path`` as a Path if it is a directory; else a one-line error that says which case it is.

    Raises:
        NotADirectoryError: ``path`` exists but is a file (e.g. a weights file instead of its folder).
        FileNotFoundError: nothing at ``path``.
    """
    p = Path(path)
    if p.is_dir():
        return p
    if p.exists():
        raise NotADirectoryError(f"{what} {p} is a file, not a directory; give the directory that holds config.json")
    raise FileNotFoundError(f"{what} not found: {p}")


__all__ = ["ATTENTION_MODES", "COSTS", "DEFAULT_BASE_RATIO", "DTYPE_NAMES", "GRAM_DTYPES", "SCHEDULE_NAMES",
           "TARGET_INITS", "TARGET_MARGINALS", "TRANSPORTS", "check_bool", "check_budget", "check_fraction", "check_int",
           "check_schedule", "check_selection", "check_temperature", "require_dir", "schedule_names"]
