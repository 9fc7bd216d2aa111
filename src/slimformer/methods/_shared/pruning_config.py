"""Settings shared by every structured pruning method (FASP, the baselines, PruneNet)."""

from __future__ import annotations

from dataclasses import dataclass, field

from ...validate import ATTENTION_MODES, EXPORTABLE, GRAM_DTYPES, SCHEDULE_NAMES, check_budget, check_int, check_schedule


#: the ``Attributes:`` entries every pruning config shares (appended to each docstring,
#: so the generated CLI help documents them for every method)
SHARED_ATTRIBUTES = """
    Attributes:
        sparsity: mean fraction of each block's prunable groups deleted, in [0, 1):
            MLP intermediate channels and, with ``attention="channels"``, value
            channels per head (``"heads"``: kv head groups). Q/K rows are only
            deleted with whole heads.
        target_params: fraction of the model's *parameters* to remove, in (0, 1):
            ``sparsity`` is found by bisection on the exact parameter count.
        attention: ``"channels"`` (value/o channels per head, GQA-aware),
            ``"heads"`` (whole GQA groups) or ``"none"`` (MLP only; with the
            uniform schedule the result exports as a plain HF config).
        schedule: per-layer allocation from :mod:`slimformer.schedule`: ``uniform``
            (FASP: the same fraction in every layer), ``layer-redundancy`` or
            ``global`` (both score blocks by Block Influence on the calibration data).
        damping: relative ridge of the restoration solve, ``damping * mean(diag G[S,S])``
            added to ``G[S,S]`` (FASP gives no value; 0.01 as SparseGPT/SliceGPT).
        round_to: kept MLP widths are multiples of this (1 = any width; 8 or 64 give
            hardware-friendly shapes on large models).
        gram_dtype: dtype of each calibration batch's X^T X product, float64 (default)
            or float32 (faster for wide MLPs, much faster on GPUs); sums stay float64.
        exportable: keep the result deployable: ``gguf`` (llama.cpp) prunes whole GQA
            groups instead of value channels (``attention="channels"`` becomes ``"heads"``);
            ``hf`` (a plain transformers config) also needs ``schedule="uniform"``, so every
            layer keeps the same heads and MLP width. ``none`` (default): no restriction.
"""


@dataclass
class PruningConfig:

    sparsity: float | None = None
    target_params: float | None = None
    attention: str = field(default="channels", metadata={"choices": ATTENTION_MODES})
    schedule: str = field(default="uniform", metadata={"choices": SCHEDULE_NAMES})
    damping: float = 0.01
    round_to: int = 1
    gram_dtype: str = field(default="float64", metadata={"choices": GRAM_DTYPES})
    exportable: str = field(default="none", metadata={"choices": EXPORTABLE})

    method = ""

    def __post_init__(self) -> None:
        self.sparsity, self.target_params = check_budget(
            self.method or "pruning", self.sparsity, self.target_params, "fraction of the prunable channels")
        if self.attention not in ATTENTION_MODES:
            raise ValueError(f"attention must be one of {', '.join(ATTENTION_MODES)}, got {self.attention!r}")
        check_schedule(self.schedule)
        if not float(self.damping) >= 0:
            raise ValueError(f"damping must be >= 0, got {self.damping!r}")
        self.round_to = check_int("round_to", self.round_to, 1)
        if self.gram_dtype not in GRAM_DTYPES:
            raise ValueError(f"gram_dtype must be {' or '.join(GRAM_DTYPES)}, got {self.gram_dtype!r}")
        if self.exportable not in EXPORTABLE:
            raise ValueError(f"exportable must be one of {', '.join(EXPORTABLE)}, got {self.exportable!r}")
        if self.exportable != "none" and self.attention == "channels":
            self.attention = "heads"  # value channels per head are in no GGUF or HF config: whole GQA groups
        if self.exportable == "hf" and self.schedule != "uniform":
            raise ValueError(f"exportable='hf' needs schedule 'uniform' (a config has one MLP width and one head "
                             f"count), got {self.schedule!r}; use exportable='gguf' for per-layer widths")

    @property
    def restores(self) -> bool:
        """Whether the kept weights of the second linears are refitted by least squares."""
        raise NotImplementedError

    def touches(self) -> frozenset[str]:
        """What this method changes (see :meth:`slimformer.arch.ArchAdapter.refusal`): whole heads
        (``heads``) or value channels (``values``) and MLP channels, inside the blocks, never the
        residual stream; a MoE block's experts one by one (``experts``)."""
        attention = {"heads": {"heads"}, "channels": {"values"}}.get(self.attention, set())
        return frozenset({"mlp", "experts", *attention})


PruningConfig.__doc__ = """Settings shared by every structured pruning method (not registered itself).

    Give exactly one of ``sparsity`` or ``target_params``.
""" + SHARED_ATTRIBUTES


__all__ = ["SHARED_ATTRIBUTES", "PruningConfig"]
