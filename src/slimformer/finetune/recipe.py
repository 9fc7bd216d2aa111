"""The recovery fine-tune recipe: data streams, the LoRA training loop, held-out perplexity, merge and save.

:func:`finetune` loads a compressed model (a slimformer directory, a
:class:`CompressionResult` or a model object), attaches LoRA adapters (:mod:`.lora`),
trains them with AdamW (linear warm-up, cosine decay, gradient clipping, gradient
accumulation) on seeded random windows of a token stream, merges them and records
settings, data identities, before/after perplexity, loss curve and the measured merge
error as a ``"finetune"`` record in the ``"slimformer"`` config section.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import logging
import math
import os
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from ..arch import get_adapter
from ..core.dtypes import to_torch_dtype
from ..data import DataError, TextSource, load_text, tokenize_text
from ..eval.perplexity import PerplexityResult, perplexity
from ..finetune_config import FinetuneConfig
from .lora import WeightSpaceLoRA, attach_lora, merge_lora, resolve_targets

logger = logging.getLogger("slimformer.finetune")

# ----------------------------------------------------------------------------- data


@dataclass
class _Stream:
    """A token stream and where it came from."""

    ids: torch.Tensor  # [n_tokens] int64
    identity: dict[str, Any]


def _stream(source: str | TextSource | torch.Tensor, tokenizer: Any, split: str | None, what: str) -> _Stream:
    """Tokenise a file / hub name / TextSource once, or take a 1-D token tensor as is."""
    if isinstance(source, torch.Tensor):
        ids = source.reshape(-1) if source.dim() == 2 and source.shape[0] == 1 else source
        if ids.dim() != 1 or ids.dtype.is_floating_point:
            raise DataError(f"{what} tensor must be a 1-D integer token stream, got shape {tuple(source.shape)}")
        return _Stream(ids.long().cpu(), {"name": "tensor", "tokens": ids.numel()})
    text = source if isinstance(source, TextSource) else load_text(source, split)
    if tokenizer is None:
        raise ValueError(f"a tokenizer is needed to tokenise the {what} {text.name}; pass tokenizer=...")
    ids = tokenize_text(text.text, tokenizer)
    return _Stream(ids, {"name": text.name, "origin": text.origin, "sha256": text.sha256, "tokens": ids.numel()})


def _split_streams(train: _Stream, eval_: _Stream | None, config: FinetuneConfig) -> tuple[_Stream, _Stream]:
    """Hold out the tail of the training stream when there is no separate evaluation text."""
    if eval_ is not None:
        return train, eval_
    n_eval = int(train.ids.numel() * config.holdout)
    if n_eval < config.seqlen:
        raise DataError(
            f"the held-out tail of the training text ({n_eval} tokens = {config.holdout:.0%}) is shorter than one "
            f"window of seqlen={config.seqlen}; pass eval data, more text or a smaller seqlen"
        )
    cut = train.ids.numel() - n_eval
    ident = {**train.identity, "tokens": cut, "holdout_tail_tokens": n_eval}
    part = f"held-out tail (last {config.holdout:.0%} of the training tokens)"
    held = {**train.identity, "tokens": n_eval, "part": part}
    return _Stream(train.ids[:cut], ident), _Stream(train.ids[cut:], held)


def _check_model_limits(model: nn.Module, config: FinetuneConfig, weight_space: bool = True) -> None:
    """Fail before any data work: window longer than the model's context, or bad LoRA targets."""
    max_pos = getattr(model.config, "max_position_embeddings", None)
    if isinstance(max_pos, int) and config.seqlen > max_pos:
        raise ValueError(f"finetune seqlen={config.seqlen} exceeds the model's max_position_embeddings={max_pos}; "
                         f"use --seqlen {max_pos} or less")
    resolve_targets(model, config.targets, weight_space)


def _check_lengths(model: nn.Module, train: _Stream, config: FinetuneConfig) -> None:
    """The training stream holds at least one batch and only ids of the model's vocabulary."""
    need = config.batch * config.seqlen
    if train.ids.numel() < need:
        raise DataError(
            f"training text {train.identity['name']} has {train.ids.numel()} tokens, fewer than one batch of "
            f"batch x seqlen = {config.batch} x {config.seqlen} = {need}; use more text or a smaller --batch/--seqlen"
        )
    vocab = model.config.vocab_size
    if int(train.ids.max()) >= vocab:
        raise DataError(f"training token id {int(train.ids.max())} >= vocab size {vocab}: wrong tokenizer?")


def _windows(ids: torch.Tensor, batch: int, seqlen: int, generator: torch.Generator) -> torch.Tensor:
    """``[batch, seqlen]`` windows at uniform random offsets (seeded by ``generator``)."""
    from ..data import random_windows

    seed = int(torch.randint(0, 2**62, (1,), generator=generator))
    return random_windows(ids, batch, seqlen, seed)


# ----------------------------------------------------------------------------- training


def lr_factor(step: int, steps: int, warmup: float) -> float:
    """Learning-rate multiplier after ``step`` optimiser steps: linear warm-up, then cosine to 0."""
    n_warm = int(round(warmup * steps))
    if step < n_warm:
        return (step + 1) / (n_warm + 1)
    progress = (step - n_warm) / max(1, steps - n_warm)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


@dataclass
class _TrainLog:
    """What happened during training."""

    steps_done: int = 0
    tokens_seen: int = 0
    stopped_early: str | None = None
    seconds: float = 0.0
    loss: list[tuple[int, float]] = field(default_factory=list)
    eval: list[tuple[int, float]] = field(default_factory=list)


def _micro_step(model: nn.Module, ids: torch.Tensor, scale: float) -> float:
    """Forward + backward of one micro-batch ``ids [batch, seqlen]``; returns its mean token loss."""
    loss = model(input_ids=ids, labels=ids, use_cache=False).loss
    (loss * scale).backward()
    return float(loss.detach())


def train_lora(
    peft_model: nn.Module,
    train_ids: torch.Tensor,
    config: FinetuneConfig,
    evaluate: Callable[[], float] | None = None,
    progress: bool = True,
) -> _TrainLog:
    """Train the trainable (LoRA) parameters of ``peft_model`` in place.

    Args:
        peft_model: model whose trainable parameters are the adapters.
        train_ids: ``[n_tokens]`` token stream; windows ``[batch, seqlen]`` are drawn from it.
        config: the fine-tune settings (steps, lr, accumulation, time limit, ...).
        evaluate: optional ``() -> float`` perplexity callback run every ``config.eval_every`` steps.
        progress: show a tqdm bar with the running loss.
    """
    params = [p for p in peft_model.parameters() if p.requires_grad]
    if not params:
        raise RuntimeError("the model has no trainable parameters; did attaching LoRA fail?")
    device = params[0].device
    opt = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_factor(s, config.steps, config.warmup))
    generator = torch.Generator().manual_seed(config.seed)
    log = _TrainLog()
    record_every = max(1, config.steps // 200)
    t0 = time.perf_counter()
    peft_model.train()
    bar = tqdm(range(1, config.steps + 1), desc="finetune", disable=not progress)
    for step in bar:
        loss = 0.0
        for _ in range(config.grad_accum):
            ids = _windows(train_ids, config.batch, config.seqlen, generator).to(device)
            loss += _micro_step(peft_model, ids, 1.0 / config.grad_accum) / config.grad_accum
        if not math.isfinite(loss):
            raise RuntimeError(f"training loss became {loss} at step {step}; lower --lr or use --dtype float32")
        if config.max_grad_norm is not None:
            torch.nn.utils.clip_grad_norm_(params, config.max_grad_norm)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        log.steps_done, log.tokens_seen = step, log.tokens_seen + config.grad_accum * config.batch * config.seqlen
        if step % record_every == 0 or step == config.steps:
            log.loss.append((step, round(loss, 5)))
        bar.set_postfix(loss=f"{loss:.4f}", lr=f"{sched.get_last_lr()[0]:.2e}")
        if evaluate is not None and config.eval_every and step % config.eval_every == 0 and step < config.steps:
            log.eval.append((step, evaluate()))
            logger.info("step %d: loss %.4f, held-out perplexity %.4f", step, loss, log.eval[-1][1])
            peft_model.train()
        elapsed = time.perf_counter() - t0
        if config.max_minutes is not None and elapsed > 60 * config.max_minutes and step < config.steps:
            log.stopped_early = f"max_minutes={config.max_minutes} reached after {step} of {config.steps} steps"
            logger.warning("finetune: %s", log.stopped_early)
            break
    bar.close()
    peft_model.eval()
    log.seconds = round(time.perf_counter() - t0, 3)
    return log


# ----------------------------------------------------------------------------- public API


@dataclass
class FinetuneResult:
    """What :func:`finetune` returns.

    Attributes:
        model: the fine-tuned model with the adapters merged (same shapes as the input).
        section: the ``"slimformer"`` config section: the input's, plus ``"finetune"``.
        report: the compression report (when known) plus ``"finetune"``.
        record: the fine-tune record (settings, data, perplexity before/after, loss curve).
        tokenizer: the tokenizer, saved alongside by :meth:`save`.
    """

    model: nn.Module
    section: dict[str, Any]
    report: dict[str, Any]
    record: dict[str, Any]
    tokenizer: Any = None

    def save(self, out: str | os.PathLike, overwrite: bool = False) -> str:
        """Save in the normal compressed format (atomic; see :mod:`slimformer.io.format`)."""
        from ..io.format import save_compressed

        source = getattr(self.model, "name_or_path", None) or None  # the input model: never replaced by ``out``
        return str(save_compressed(self.model, out, self.section, self.report, self.tokenizer, overwrite=overwrite,
                                   inputs=(source,)))


def _source_model(
    model: Any, tokenizer: Any, dtype: str | None
) -> tuple[nn.Module, Any, dict[str, Any], dict[str, Any], str | None]:
    """Resolve a directory / CompressionResult / module to (model, tokenizer, section, report, path)."""
    from ..api import CompressionResult
    from ..core.plan import plan_from_model
    from ..io.format import load_model, read_section

    if isinstance(model, (str, os.PathLike)):
        path = str(model)
        section = read_section(path) if os.path.isdir(path) else None
        if not section:
            raise ValueError(f"{path} is not a slimformer output directory (no 'slimformer' section in config.json); "
                             "finetune recovers compressed models: run slimformer compress first")
        loaded, tok = load_model(path, dtype=dtype)
        report_file = Path(path) / "slimformer_report.json"
        report = json.loads(report_file.read_text()) if report_file.is_file() else {}
        return loaded, tokenizer if tokenizer is not None else tok, copy.deepcopy(section), report, path
    if isinstance(model, CompressionResult):
        module = model.model.to(to_torch_dtype(dtype)) if dtype else model.model
        tok = tokenizer if tokenizer is not None else model.tokenizer
        return module, tok, copy.deepcopy(model.section), copy.deepcopy(model.report), None
    if isinstance(model, nn.Module):
        module = model.to(to_torch_dtype(dtype)) if dtype else model
        section = {"method": None, "plan": plan_from_model(module, get_adapter(module)).to_dict()}
        return module, tokenizer, section, {}, None
    raise TypeError("model must be a slimformer output directory, a CompressionResult or a torch module")


def _ppl(model: nn.Module, ids: torch.Tensor, config: FinetuneConfig, progress: bool = False,
         desc: str = "perplexity") -> PerplexityResult:
    """Held-out perplexity; ``progress`` shows a bar (the before/after evaluations, not the periodic ones)."""
    return perplexity(model, None, ids, seqlen=config.seqlen, batch_size=config.batch,
                      max_tokens=config.eval_tokens, progress=progress, desc=desc)


def _probe_logits(model: nn.Module, ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=ids, use_cache=False).logits.float()


def _save_adapter(peft_model: nn.Module, out: str | os.PathLike, overwrite: bool) -> str:
    """Write the peft adapter (``adapter_config.json`` + safetensors) atomically to ``out``."""
    from ..io.outputs import ADAPTER_MARKER, check_output_dir, staged_dir

    out = check_output_dir(out, overwrite, what="adapter directory").absolute()
    with staged_dir(out) as tmp:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            peft_model.save_pretrained(str(tmp), safe_serialization=True)
        # marks the directory as slimformer's, so a later --overwrite may replace it
        (tmp / ADAPTER_MARKER).write_text(json.dumps({"kind": "lora-adapter"}) + "\n")
    return str(out)


def finetune(
    model: Any,
    data: str | TextSource | torch.Tensor,
    config: FinetuneConfig | None = None,
    *,
    tokenizer: Any = None,
    eval_data: str | TextSource | torch.Tensor | None = None,
    data_split: str | None = None,
    eval_split: str | None = "validation",
    keep_adapter: str | os.PathLike | None = None,
    overwrite: bool = False,
    device: str | torch.device | None = None,
    progress: bool = True,
    **overrides: Any,
) -> FinetuneResult:
    """Recovery fine-tune a compressed model with LoRA and merge the adapters.

    Args:
        model: a slimformer output directory, a :class:`~slimformer.CompressionResult`,
            or a (compressed) model of a supported family.
        data: training text: local ``.txt``/``.raw``/``.jsonl`` file, hub name, a loaded
            :class:`~slimformer.data.TextSource`, or a ``[n_tokens]`` token tensor.
        config: :class:`FinetuneConfig`; keyword ``overrides`` (e.g. ``steps=100``)
            build or modify it.
        tokenizer: tokenizer for text data (default: the one saved with the model).
        eval_data: held-out text for perplexity; ``None``: the tail
            (``config.holdout``) of the training stream is held out.
        data_split / eval_split: hub splits for hub names (ignored for local files).
        keep_adapter: also write the (unmerged) peft adapter to this directory. peft cannot load
            LoRA on linears that reshape around their weight, so with this option those
            (head-pruned v/o/q/k) stay frozen with a warning and DISP models are refused;
            without it they are trained too (weight-space LoRA, see :mod:`.lora`).
        overwrite: replace a non-empty ``keep_adapter`` directory.
        device: training device (default: where the model is).
        progress: progress bars: held-out perplexity before and after, and training with the running loss.

    Returns:
        :class:`FinetuneResult` with the merged model; ``result.save(dir)`` writes it.
        A model object (or ``CompressionResult.model``) passed in is trained and merged in place.

    Raises:
        ValueError: unknown LoRA targets (the message lists the valid ones), a window
            longer than the model's context, or a directory that is not a compressed model.
        DataError: training text shorter than one batch (``batch * seqlen`` tokens), or
            evaluation text shorter than one window.
    """
    config = dataclasses.replace(config, **overrides) if config is not None else FinetuneConfig(**overrides)
    if keep_adapter is not None:
        from ..io.outputs import check_output_dir

        check_output_dir(keep_adapter, overwrite, inputs=(model if isinstance(model, (str, os.PathLike)) else None,),
                         what="adapter directory")
    base, tok, section, report, path = _source_model(model, tokenizer, config.dtype)
    if device is not None:
        base.to(device)
    weight_space = keep_adapter is None  # a kept peft adapter holds only what peft can load
    _check_model_limits(base, config, weight_space)
    full = _stream(data, tok, data_split, "training data")
    _check_lengths(base, full, config)
    held_out = None if eval_data is None else _stream(eval_data, tok, eval_split, "eval data")
    train, held = _split_streams(full, held_out, config)
    _check_lengths(base, train, config)
    if held.ids.numel() < config.seqlen:
        raise DataError(f"eval data {held.identity['name']} has {held.ids.numel()} tokens, fewer than one window "
                        f"of seqlen={config.seqlen}")
    params_before = sum(p.numel() for p in base.parameters())
    before = _ppl(base, held.ids, config, progress=progress, desc="perplexity before")
    peft_model, targets = attach_lora(base, config, weight_space)
    trainable = sum(p.numel() for p in peft_model.parameters() if p.requires_grad)
    in_weight_space = sum(isinstance(m, WeightSpaceLoRA) for m in peft_model.modules())
    logger.info("LoRA on %d modules (%s), %d trainable parameters; perplexity before %.4f",
                sum(map(len, targets.values())), ", ".join(targets), trainable, before.ppl)
    log = train_lora(peft_model, train.ids, config, evaluate=lambda: _ppl(peft_model, held.ids, config).ppl,
                     progress=progress)
    if keep_adapter is not None:
        keep_adapter = _save_adapter(peft_model, keep_adapter, overwrite)
    probe = held.ids[: min(config.seqlen, held.ids.numel())][None].to(next(base.parameters()).device)
    lora_logits = _probe_logits(peft_model, probe)
    merged = merge_lora(peft_model)
    merge_err = float((_probe_logits(merged, probe) - lora_logits).abs().max())
    if sum(p.numel() for p in merged.parameters()) != params_before:
        raise RuntimeError("merging the adapters changed the parameter count; refusing to save a wrong model")
    after = _ppl(merged, held.ids, config, progress=progress, desc="perplexity after")
    logger.info("perplexity %.4f -> %.4f after %d steps (%.1fs)", before.ppl, after.ppl, log.steps_done, log.seconds)
    record = _record(config, targets, trainable, log, train, held, before, after, merge_err, path, keep_adapter, merged,
                     in_weight_space)
    if "finetune" in section:  # fine-tuning a fine-tuned model: keep the earlier record
        record["previous"] = section["finetune"]
    section["finetune"] = record
    report = {**report, "finetune": record}
    return FinetuneResult(merged, section, report, record, tok)


def _record(
    config: FinetuneConfig, targets: dict[str, list[str]], trainable: int, log: _TrainLog, train: _Stream,
    held: _Stream, before: PerplexityResult, after: PerplexityResult, merge_err: float, path: str | None,
    keep_adapter: str | None, model: nn.Module, in_weight_space: int = 0,
) -> dict[str, Any]:
    """The JSON record of one fine-tune (stored in the config section and the report)."""
    import peft

    from ..api import library_versions

    return {
        "method": "lora",
        "config": dataclasses.asdict(config),
        "targets": {role: len(names) for role, names in targets.items()},
        "weight_space_targets": in_weight_space,  # of those, linears trained with a weight-space LoRA
        "trainable_params": trainable,
        "steps_done": log.steps_done,
        "tokens_seen": log.tokens_seen,
        "stopped_early": log.stopped_early,
        "seconds": log.seconds,
        "train_data": train.identity,
        "eval_data": held.identity,
        "ppl_before": before.to_dict(),
        "ppl_after": after.to_dict(),
        "eval_history": log.eval,
        "loss_curve": log.loss,
        "merge_max_abs_logit_diff": merge_err,
        "dtype": str(next(model.parameters()).dtype).replace("torch.", ""),
        "device": str(next(model.parameters()).device),
        "source": path,
        "adapter_dir": keep_adapter,
        "versions": {**library_versions(), "peft": peft.__version__},
    }


__all__ = ["FinetuneResult", "finetune", "lr_factor", "train_lora"]
