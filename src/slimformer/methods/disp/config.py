"""Configuration of DISP-LLM (learned dimension-independent masks)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from ...validate import check_budget, check_int


@dataclass
class DISPConfig:
    """DISP-LLM (Gao et al., NeurIPS 2024): each block reads/writes its own learned subset of the residual channels.

    A small hypernetwork (bi-GRU over the blocks) is trained on the LM loss of the
    frozen model with a parameter-budget regulariser; its deterministic hard masks
    are then made exact by one global logit offset and exported as gather/scatter
    index sets.

    Attributes:
        target_params: fraction of the model's parameters to remove, in (0, 1).
        steps: DISP: training steps of the hypernetwork (the paper uses 10k on a GPU;
            a few hundred suffice for the tiny CPU models).
        learning_rate: DISP: AdamW learning rate of the hypernetwork (constant; paper 1e-3).
        weight_decay: DISP: AdamW weight decay of the hypernetwork (paper 0.05).
        lam: DISP: weight of the budget regulariser lam * |log(r / p)| (r: kept fraction of
            attention + MLP parameters, p: its target; paper 6, official code 16).
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
    """

    target_params: float
    steps: int = 300
    learning_rate: float = 1e-3
    weight_decay: float = 0.05
    lam: float = 6.0
    mask_temperature: float = 0.4
    hypernet_hidden: int = 64
    batch: int = field(default=4, metadata={"option": "train_batch_size", "aliases": ("batch",)})
    seqlen: int | None = field(default=None, metadata={"option": "train_seqlen", "aliases": ("seqlen",)})
    train_seed: int = 0
    checkpoint: str | None = None
    checkpoint_every: int = 50
    grad_checkpointing: bool = False

    method = "disp"

    def __post_init__(self) -> None:
        if self.target_params is None:
            raise ValueError("disp needs target_params (--target-params, fraction of the model's parameters "
                             "to remove, in (0, 1))")
        _, self.target_params = check_budget("disp", None, self.target_params, "")  # type: ignore[assignment]
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
        if not isinstance(self.grad_checkpointing, bool):
            raise ValueError(f"grad_checkpointing must be True or False, got {self.grad_checkpointing!r}")

    def training_key(self) -> dict[str, Any]:
        """The settings a checkpoint must share to be resumed (``steps`` may grow; I/O options may change)."""
        return {k: getattr(self, k) for k in ("target_params", "learning_rate", "weight_decay", "lam",
                                              "mask_temperature", "hypernet_hidden", "batch", "seqlen",
                                              "train_seed")}
