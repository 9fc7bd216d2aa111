"""Configuration of DISP-LLM (learned dimension-independent masks)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from ...validate import check_bool, check_budget, check_int

#: ``variant``: the library's training recipe, or the official code's (docs/disp.md, "Reference variant")
DISP_VARIANTS: tuple[str, ...] = ("library", "reference")

#: ``lam`` when it is not given: the paper's 6 for the library variant, the official code's 16 for reference
DEFAULT_LAM: dict[str, float] = {"library": 6.0, "reference": 16.0}


@dataclass
class DISPConfig:
    """DISP-LLM (Gao et al., NeurIPS 2024): each block reads/writes its own learned subset of the residual channels.

    A small hypernetwork (bi-GRU over the blocks) is trained on the LM loss of the
    frozen model with a parameter-budget regulariser; its deterministic hard masks
    are then made exact by one global logit offset and exported as gather/scatter
    index sets.

    ``variant="library"`` (default): hard straight-through masks in both the LM loss and
    the budget term, one GRU step per block with one head per mask kind shared by all
    blocks. ``variant="reference"`` follows the official code: soft Gumbel-sigmoid masks in
    the LM loss, hard masks from a separate draw only in the budget term, one GRU step and
    one head per mask (5 per block), trainable GRU inputs, lam 16 unless given. Both export
    the same kind of model (noise-free hard masks, exact budget).

    Attributes:
        target_params: fraction of the model's parameters to remove, in (0, 1).
        steps: DISP: training steps of the hypernetwork (the paper uses 10k on a GPU;
            a few hundred suffice for the tiny CPU models).
        learning_rate: DISP: AdamW learning rate of the hypernetwork (constant; paper 1e-3).
        weight_decay: DISP: AdamW weight decay of the hypernetwork (paper 0.05).
        lam: DISP: weight of the budget regulariser lam * |log(r / p)| (r: kept fraction of
            attention + MLP parameters, p: its target; paper 6, official code 16). Default: 6 for
            the library variant, 16 for reference; resolved when the config is made.
        mask_temperature: DISP: temperature of the Gumbel-sigmoid masks (paper 0.4).
        hypernet_hidden: DISP: GRU hidden size per direction of the hypernetwork (paper 64).
        batch: DISP: training windows per step.
        seqlen: DISP: tokens per training window, cut at random offsets from the calibration
            windows (default: the whole calibration window).
        train_seed: DISP: seed of the hypernetwork's init, its fixed inputs, the Gumbel noise
            and the window sampling (the calibration windows themselves follow --seed).
        checkpoint: DISP: file for the hypernetwork + optimizer + step; written atomically
            every checkpoint_every steps and resumed from when it exists (same settings).
        checkpoint_every: DISP: steps between checkpoint writes.
        grad_checkpointing: DISP: recompute each block's activations in the backward pass
            (less memory, about 30% more time).
        variant: DISP: training recipe, library (hard straight-through masks in the LM loss, one
            GRU step per block, heads shared by all blocks) or reference (the official code: soft
            masks in the LM loss, hard masks of a separate draw in the budget term only, one GRU
            step and one head per mask, lam 16).
        reinmax: DISP: ReinMax gradient estimator (the paper's) for the hard training masks
            instead of plain straight-through.
    """

    target_params: float
    steps: int = 300
    learning_rate: float = 1e-3
    weight_decay: float = 0.05
    lam: float | None = None
    mask_temperature: float = 0.4
    hypernet_hidden: int = 64
    batch: int = field(default=4, metadata={"option": "train_batch_size", "aliases": ("batch",)})
    seqlen: int | None = field(default=None, metadata={"option": "train_seqlen", "aliases": ("seqlen",)})
    train_seed: int = 0
    checkpoint: str | None = None
    checkpoint_every: int = 50
    grad_checkpointing: bool = False
    variant: str = field(default="library", metadata={"choices": DISP_VARIANTS})
    reinmax: bool = False

    method = "disp"

    def __post_init__(self) -> None:
        if self.target_params is None:
            raise ValueError("disp needs target_params (--target-params, fraction of the model's parameters "
                             "to remove, in (0, 1))")
        _, self.target_params = check_budget("disp", None, self.target_params, "")  # type: ignore[assignment]
        if self.variant not in DISP_VARIANTS:
            raise ValueError(f"variant must be one of {', '.join(DISP_VARIANTS)}, got {self.variant!r}")
        if self.lam is None:
            self.lam = DEFAULT_LAM[self.variant]
        self.steps = check_int("steps", self.steps, 0)
        for name in ("learning_rate", "mask_temperature"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not (math.isfinite(v) and v > 0):
                raise ValueError(f"{name} must be a finite number > 0, got {v!r}")
        for name in ("weight_decay", "lam"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not (math.isfinite(v) and v >= 0):
                raise ValueError(f"{name} must be a finite number >= 0, got {v!r}")
        self.hypernet_hidden = check_int("hypernet_hidden", self.hypernet_hidden, 1)
        self.batch = check_int("batch", self.batch, 1)
        if self.seqlen is not None:
            self.seqlen = check_int("seqlen", self.seqlen, 2)
        self.train_seed = check_int("train_seed", self.train_seed)
        self.checkpoint_every = check_int("checkpoint_every", self.checkpoint_every, 1)
        if self.checkpoint is not None and not str(self.checkpoint).strip():
            raise ValueError("checkpoint must be a file path or None, got an empty string")
        for name in ("grad_checkpointing", "reinmax"):
            check_bool(name, getattr(self, name))

    def touches(self) -> frozenset[str]:
        """What this method changes (see :meth:`slimformer.arch.ArchAdapter.refusal`): which residual
        channels each sublayer reads and writes (selected after the norms, no rotation) and the
        MLP channels; not a MoE block's experts one by one."""
        return frozenset({"residual_channels", "mlp"})

    def training_key(self) -> dict[str, Any]:
        """The settings a checkpoint must share to be resumed (``steps`` may grow; I/O options may change).

        ``variant`` and ``reinmax`` appear only when they differ from their defaults, so checkpoints
        written before they existed still resume.
        """
        key = {k: getattr(self, k) for k in ("target_params", "learning_rate", "weight_decay", "lam",
                                             "mask_temperature", "hypernet_hidden", "batch", "seqlen",
                                             "train_seed")}
        if self.variant != "library":
            key["variant"] = self.variant
        if self.reinmax:
            key["reinmax"] = True
        return key
