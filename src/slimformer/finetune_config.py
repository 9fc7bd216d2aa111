"""Settings of a recovery fine-tune (:class:`FinetuneConfig`), torch-free.

Kept apart from :mod:`slimformer.finetune` (which imports torch and peft) so the CLI
builds ``slimformer finetune``'s options and validates them without torch. The CLI
generates one option per field, like the method configs' ``compress`` options: the help
is the field's entry under ``Attributes:``; field metadata may rename the option
(``"option"``), keep old spellings as hidden aliases (``"aliases"``), give choices
(``"choices"``) or mark a comma-separated list (``"list"``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from .validate import DTYPE_NAMES

#: LoRA target roles: adapter attributes (block-level linears) plus the shortcut maps.
LINEAR_ROLES: tuple[str, ...] = ("q", "k", "v", "o", "gate", "up", "down")
SHORTCUT_ROLES: tuple[str, ...] = ("attn_shortcut", "mlp_shortcut")
TARGET_ROLES: tuple[str, ...] = LINEAR_ROLES + SHORTCUT_ROLES


@dataclass
class FinetuneConfig:
    """Settings of one recovery fine-tune (validated on construction).

    Attributes:
        steps: optimiser steps (each sees ``batch * grad_accum`` windows).
        lr: peak AdamW learning rate of the LoRA weights.
        lora_r: LoRA rank ``r``.
        lora_alpha: LoRA scale numerator; the update is ``(lora_alpha / lora_r) B A``.
        lora_dropout: dropout on the LoRA input (training only).
        targets: roles to adapt (see :data:`TARGET_ROLES`; Hugging Face leaf names such
            as ``q_proj`` or ``fc1`` are accepted too). ``None``: every linear role the
            family has (``q k v o gate up down``), no shortcuts.
        batch: windows per micro-batch.
        seqlen: tokens per window (also the perplexity window).
        seed: seed of the LoRA initialisation and of the window offsets.
        grad_accum: micro-batches accumulated per optimiser step.
        warmup: fraction of ``steps`` with a linear learning-rate warm-up.
        weight_decay: AdamW weight decay of the LoRA weights.
        max_grad_norm: gradient clipping threshold (``None``: no clipping).
        eval_every: evaluate held-out perplexity every this many steps (0: only
            before and after training).
        eval_tokens: evaluate on at most this many held-out tokens (``None``: all).
        holdout: fraction of the training token stream held out (its tail) for
            perplexity when no separate evaluation text is given.
        max_minutes: stop training after this wall-clock time (``None``: no limit).
        dtype: dtype the model is trained and saved in (``None``: keep the model's).
    """

    steps: int = 200
    lr: float = field(default=2e-4, metadata={"option": "learning_rate", "aliases": ("lr",)})
    lora_r: int = 8
    lora_alpha: float = 16.0
    lora_dropout: float = 0.05
    targets: tuple[str, ...] | None = field(default=None, metadata={"list": True, "choices_doc": TARGET_ROLES})
    batch: int = field(default=8, metadata={"option": "batch_size", "aliases": ("batch",)})
    seqlen: int = 512
    seed: int = 0
    grad_accum: int = 1
    warmup: float = 0.05
    weight_decay: float = 0.0
    max_grad_norm: float | None = 1.0
    eval_every: int = 0
    eval_tokens: int | None = None
    holdout: float = 0.1
    max_minutes: float | None = None
    dtype: str | None = field(default=None, metadata={"choices": DTYPE_NAMES})

    def __post_init__(self) -> None:
        positive = {"steps": self.steps, "lora_r": self.lora_r, "batch": self.batch, "grad_accum": self.grad_accum}
        for name, value in positive.items():
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"finetune {name} must be an integer >= 1, got {value!r}")
        if not self.lr > 0 or not math.isfinite(self.lr):
            raise ValueError(f"finetune lr must be a positive number, got {self.lr}")
        if not self.lora_alpha > 0:
            raise ValueError(f"finetune lora_alpha must be > 0, got {self.lora_alpha}")
        if not 0 <= self.lora_dropout < 1:
            raise ValueError(f"finetune lora_dropout must be in [0, 1), got {self.lora_dropout}")
        if self.seqlen < 2:
            raise ValueError(f"finetune seqlen must be >= 2, got {self.seqlen}")
        if not 0 <= self.warmup < 1:
            raise ValueError(f"finetune warmup must be a fraction in [0, 1), got {self.warmup}")
        if self.eval_every < 0:
            raise ValueError(f"finetune eval_every must be >= 0 (0 = only before/after), got {self.eval_every}")
        if self.eval_tokens is not None and self.eval_tokens < self.seqlen:
            raise ValueError(
                f"finetune eval_tokens={self.eval_tokens} is shorter than one window (seqlen={self.seqlen})"
            )
        if not 0 < self.holdout < 1:
            raise ValueError(f"finetune holdout must be a fraction in (0, 1), got {self.holdout}")
        if self.max_minutes is not None and not self.max_minutes > 0:
            raise ValueError(f"finetune max_minutes must be > 0, got {self.max_minutes}")
        if self.max_grad_norm is not None and not self.max_grad_norm > 0:
            raise ValueError(f"finetune max_grad_norm must be > 0 or None, got {self.max_grad_norm}")
        if self.dtype is not None and self.dtype not in DTYPE_NAMES:
            raise ValueError(f"finetune dtype must be one of {', '.join(DTYPE_NAMES)}, got {self.dtype!r}")
        if self.targets is not None:
            if isinstance(self.targets, str):
                self.targets = tuple(t.strip() for t in self.targets.split(",") if t.strip())
            self.targets = tuple(self.targets)
            if not self.targets:
                raise ValueError(f"finetune targets is empty; choose from {', '.join(TARGET_ROLES)}")


__all__ = ["FinetuneConfig", "LINEAR_ROLES", "SHORTCUT_ROLES", "TARGET_ROLES"]
