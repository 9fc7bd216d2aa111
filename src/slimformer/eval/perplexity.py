"""Perplexity of a causal LM on a text, SliceGPT/GPTQ convention by default.

Default (``stride=None``): the text ``"\\n\\n".join(rows)`` is tokenised once, cut into
consecutive non-overlapping windows of ``seqlen`` tokens (the incomplete tail is
dropped), and in every window tokens ``1..seqlen-1`` are scored given their prefix in
that window. ``ppl = exp(mean NLL)`` over all scored tokens.

Sliding window (``stride=s < seqlen``): full windows of ``seqlen`` tokens start every
``s`` tokens; the first window scores tokens ``1..seqlen-1``, each later window scores
only its last ``s`` tokens (so every scored token sees at least ``seqlen - s`` tokens of
context), as in the Hugging Face strided-perplexity recipe. Windows that would run past
the end are dropped, so ``stride=seqlen`` gives exactly the default result.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from ..data import TextSource, load_text, tokenize_text

logger = logging.getLogger("slimformer.eval.perplexity")


@dataclass
class PerplexityResult:
    """Outcome of :func:`perplexity`.

    Attributes:
        ppl: ``exp(nll)``.
        tokens: number of scored (predicted) tokens.
        seqlen: window length in tokens.
        data: name of the evaluated text (what the user passed).
        nll: mean negative log-likelihood per scored token (nats).
        windows: number of windows run through the model.
        stride: sliding-window stride, ``None`` for non-overlapping windows.
        sha256: sha256 of the joined text when it came from a file or the hub.
    """

    ppl: float
    tokens: int
    seqlen: int
    data: str
    nll: float
    windows: int
    stride: int | None
    sha256: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """Plain dict (JSON-serialisable) of all fields."""
        return asdict(self)


@dataclass(frozen=True)
class _Window:
    """One model input: ``ids[start:start + seqlen]``; shifted positions ``>= first`` are scored."""

    start: int
    first: int


def _validate(model: nn.Module, seqlen: int, batch_size: int, stride: int | None) -> None:
    if seqlen < 2:
        raise ValueError(f"perplexity seqlen must be >= 2, got {seqlen}")
    if batch_size < 1:
        raise ValueError(f"perplexity batch_size must be >= 1, got {batch_size}")
    if stride is not None and not 1 <= stride <= seqlen:
        raise ValueError(f"perplexity stride must be in [1, seqlen={seqlen}], got {stride}")
    max_positions = getattr(getattr(model, "config", None), "max_position_embeddings", None)
    if isinstance(max_positions, int) and max_positions < seqlen:
        raise ValueError(
            f"seqlen={seqlen} exceeds the model's max_position_embeddings={max_positions}; "
            f"use seqlen <= {max_positions}"
        )


def _token_stream(
    source: str | TextSource | torch.Tensor, tokenizer: Any, split: str | None
) -> tuple[torch.Tensor, str, str | None]:
    """Resolve ``source`` to ``([n_tokens] ids, data label, sha256 or None)``."""
    if isinstance(source, torch.Tensor):
        ids = source.squeeze(0) if source.dim() == 2 and source.shape[0] == 1 else source
        if ids.dim() != 1 or ids.dtype.is_floating_point or ids.dtype.is_complex:
            raise ValueError(
                f"a tensor source must be a 1-D integer token stream, got shape "
                f"{tuple(source.shape)} and dtype {source.dtype}"
            )
        return ids.long(), "<tensor>", None
    text_source = source if isinstance(source, TextSource) else load_text(source, split)
    if tokenizer is None:
        raise ValueError("a tokenizer is required unless source is a token tensor")
    return tokenize_text(text_source.text, tokenizer), text_source.name, text_source.sha256


def _plan_windows(n_tokens: int, seqlen: int, stride: int | None) -> list[_Window]:
    """Window starts and first scored (shifted) position; incomplete tails are dropped."""
    if stride is None:
        return [_Window(start, 0) for start in range(0, n_tokens - seqlen + 1, seqlen)]
    # Later windows score their last `stride` tokens; with stride == seqlen the window's
    # first token has no context inside the window and stays unscored, as in the default.
    later_first = max(0, seqlen - 1 - stride)
    return [
        _Window(start, 0 if start == 0 else later_first)
        for start in range(0, n_tokens - seqlen + 1, stride)
    ]


@contextmanager
def _no_kv_cache(model: nn.Module) -> Iterator[None]:
    """Temporarily set ``config.use_cache = False`` so full-window forwards build no cache."""
    config = getattr(model, "config", None)
    if config is None or not hasattr(config, "use_cache"):
        yield
        return
    saved = config.use_cache
    config.use_cache = False
    try:
        yield
    finally:
        config.use_cache = saved


def _window_nll(logits: torch.Tensor, ids: torch.Tensor, first: int) -> torch.Tensor:
    """Summed NLL of one window.

    Args:
        logits: ``[seqlen, vocab]`` model outputs for the window.
        ids: ``[seqlen]`` window tokens.
        first: first shifted position scored (position ``j`` predicts ``ids[j + 1]``).

    Returns:
        0-dim float64 sum of ``-log p(ids[j + 1] | ids[:j + 1])`` for ``j >= first``.
    """
    log_probs = F.log_softmax(logits[first:-1].float(), dim=-1)
    targets = ids[first + 1 :].to(log_probs.device)
    return -log_probs.gather(-1, targets[:, None]).double().sum()


def _batches(windows: list[_Window], batch_size: int) -> Iterator[list[_Window]]:
    for i in range(0, len(windows), batch_size):
        yield windows[i : i + batch_size]


def perplexity(
    model: nn.Module,
    tokenizer: Any,
    source: str | TextSource | torch.Tensor,
    seqlen: int = 2048,
    batch_size: int = 1,
    max_tokens: int | None = None,
    stride: int | None = None,
    device: str | torch.device | None = None,
    split: str | None = None,
    progress: bool = True,
    desc: str = "perplexity",
) -> PerplexityResult:
    """Perplexity of ``model`` on a text (see the module docstring for the convention).

    Args:
        model: causal LM; called as ``model(input_ids=[batch, seqlen]).logits``.
        tokenizer: tokenizer of the model (unused when ``source`` is a tensor).
        source: file path / hub name (:func:`slimformer.data.load_text`), a loaded
            :class:`~slimformer.data.TextSource`, or a ``[n_tokens]`` token tensor.
        seqlen: window length in tokens (>= 2, <= ``config.max_position_embeddings``).
        batch_size: windows per forward pass.
        max_tokens: keep only the first ``max_tokens`` tokens of the stream (quick runs).
        stride: sliding-window stride in ``[1, seqlen]``; ``None`` = non-overlapping.
        device: where inputs go; defaults to the device of the model's first parameter.
        split: hub split when ``source`` is a hub name.
        progress: show a tqdm bar over batches.
        desc: label of the progress bar.

    Returns:
        :class:`PerplexityResult`.

    Raises:
        ValueError: invalid arguments or a text shorter than one window.
    """
    _validate(model, seqlen, batch_size, stride)
    ids, label, sha256 = _token_stream(source, tokenizer, split)
    if max_tokens is not None:
        ids = ids[:max_tokens]
    windows = _plan_windows(ids.numel(), seqlen, stride)
    if not windows:
        raise ValueError(
            f"evaluation text {label} has {ids.numel()} tokens, fewer than one window of "
            f"seqlen={seqlen}; use a longer text, a smaller seqlen or a larger max_tokens"
        )
    if device is None:
        device = next(model.parameters()).device

    nll_sum, scored = _score(model, ids, windows, seqlen, batch_size, torch.device(device), progress, desc)
    nll = nll_sum / scored
    result = PerplexityResult(
        ppl=math.exp(nll), tokens=scored, seqlen=seqlen, data=label, nll=nll,
        windows=len(windows), stride=stride, sha256=sha256,
    )
    logger.info(
        "perplexity %.4f on %s (%d tokens, %d windows of %d)", result.ppl, label, scored, len(windows), seqlen
    )
    return result


def _score(
    model: nn.Module,
    ids: torch.Tensor,
    windows: list[_Window],
    seqlen: int,
    batch_size: int,
    device: torch.device,
    progress: bool,
    desc: str = "perplexity",
) -> tuple[float, int]:
    """Run all windows through the model; return (summed NLL, scored token count)."""
    was_training = model.training
    model.eval()
    nll_sum = torch.zeros((), dtype=torch.float64)
    scored = 0
    n_batches = math.ceil(len(windows) / batch_size)
    try:
        with torch.inference_mode(), _no_kv_cache(model):
            batches = _batches(windows, batch_size)
            for batch in tqdm(batches, total=n_batches, desc=desc, disable=not progress):
                inputs = torch.stack([ids[w.start : w.start + seqlen] for w in batch]).to(device)
                logits = model(input_ids=inputs).logits
                for row, window in enumerate(batch):
                    nll_sum += _window_nll(logits[row], inputs[row], window.first).cpu()
                    scored += seqlen - 1 - window.first
    finally:
        model.train(was_training)
    return float(nll_sum), scored
