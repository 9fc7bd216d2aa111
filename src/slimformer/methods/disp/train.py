"""Training DISP-LLM's hypernetwork on a frozen model, and turning it into exact hard masks.

Loss per step (METHODS.md, "DISP-LLM"):  ``LM(model masked by m) + lam * |log(r / p)|``,
``r`` the kept fraction of the attention + MLP parameters of hard masks ``h``
(:func:`kept_params`, differentiable) and ``p`` the kept fraction that removes
``target_params`` of all parameters. Which masks go where (:func:`training_masks`):

* ``variant="library"``: ``m = h``, the straight-through (or ReinMax) hard masks of one
  Gumbel draw, in both terms;
* ``variant="reference"`` (official code): ``m`` the *soft* Gumbel-sigmoid masks of one
  draw, values in (0, 1); ``h`` hard masks of a second, independent draw, used only in the
  budget term.

Only the hypernetwork is trained (AdamW, constant learning rate); the model is frozen, in eval
mode (no dropout), and gets its ``requires_grad`` flags back afterwards.

Reproducibility and resuming: step ``t`` draws its windows and its Gumbel noise from a
generator seeded with ``(train_seed, t)``, so a run resumed from a checkpoint (hypernet
+ AdamW state + step) ends with the same hypernetwork as an uninterrupted one.

After training, :func:`exact_masks` takes the noise-free hard masks and bisects one
global logit offset so that the exported model removes ``target_params`` of the
parameters up to a single channel's worth (the paper's regulariser only drives ``r``
*towards* ``p``); the offset and the fraction before the adjustment are reported.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import logging
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Sequence

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint as _checkpoint
from tqdm.auto import tqdm

from ...arch import ArchAdapter
from .config import DISPConfig
from .hypernet import HyperNetBase, build_hypernet, uniform_sizes
from .masks import (
    BlockMasks,
    BlockShapes,
    MaskHooks,
    block_shapes,
    kept_fraction_target,
    kept_params,
    mask_sizes,
    params_after,
    prunable_params,
    total_params,
)

logger = logging.getLogger("slimformer.methods.disp")

CHECKPOINT_VERSION = 1


@dataclass
class TrainResult:
    """What :func:`train_hypernet` produced.

    Attributes:
        hypernet: the trained hypernetwork (on the model's device).
        steps: total steps trained (including resumed ones).
        resumed_from: step the run resumed from (0 for a fresh run).
        seconds: wall time of this call's training loop.
        history: per step ``(lm_loss, regulariser, r)`` (resumed runs include the checkpoint's history).
        p: target kept fraction of attention + MLP parameters.
    """

    hypernet: HyperNetBase
    steps: int
    resumed_from: int
    seconds: float
    history: list[tuple[float, float, float]] = field(default_factory=list)
    p: float = 1.0


# ----- data -----------------------------------------------------------------------------
def step_generator(seed: int, step: int) -> torch.Generator:
    """The generator of step ``step``: windows and Gumbel noise depend only on (seed, step)."""
    return torch.Generator().manual_seed(int(seed) * 1_000_003 + int(step) + 1)


def sample_windows(ids: torch.Tensor, batch: int, seqlen: int, gen: torch.Generator) -> torch.Tensor:
    """``[batch, seqlen]`` windows cut at random rows and offsets from calibration ids ``[N, T]``."""
    n, t = ids.shape
    rows = torch.randint(0, n, (batch,), generator=gen)
    starts = torch.randint(0, t - seqlen + 1, (batch,), generator=gen)
    return torch.stack([ids[r, s:s + seqlen] for r, s in zip(rows.tolist(), starts.tolist())])


def check_calibration(ids: torch.Tensor, config: DISPConfig) -> int:
    """The training window length; ValueError for unusable calibration ids."""
    if ids is None or ids.dim() != 2 or ids.numel() == 0:
        raise ValueError("DISP needs calibration ids [samples, seqlen] (pass --calib)")
    seqlen = ids.shape[1] if config.seqlen is None else config.seqlen
    if seqlen > ids.shape[1]:
        raise ValueError(f"DISP seqlen={seqlen} exceeds the calibration window length {ids.shape[1]}; "
                         "lower --seqlen or raise --calib-seqlen")
    if seqlen < 2:
        raise ValueError("DISP needs windows of at least 2 tokens for the LM loss")
    return int(seqlen)


# ----- frozen model + memory helpers ----------------------------------------------------
@contextlib.contextmanager
def frozen(model: nn.Module) -> Iterator[None]:
    """Model in eval mode with ``requires_grad=False`` everywhere; both restored afterwards."""
    flags = [(p, p.requires_grad) for p in model.parameters()]
    was_training = model.training
    for p, _ in flags:
        p.requires_grad_(False)
    model.eval()
    try:
        yield
    finally:
        for p, f in flags:
            p.requires_grad_(f)
        model.train(was_training)


@contextlib.contextmanager
def block_checkpointing(model: nn.Module, adapter: ArchAdapter, enabled: bool) -> Iterator[None]:
    """Recompute every decoder block in the backward pass (``torch.utils.checkpoint``, non-reentrant).

    Works in eval mode (HF's own switch only acts in training mode, which would turn dropout on).
    The mask hooks run again in the recomputation with the same mask tensors.
    """
    if not enabled:
        yield
        return
    layers = list(adapter.get_layers(model))
    for layer in layers:
        layer.forward = functools.partial(_checkpoint, type(layer).forward.__get__(layer), use_reentrant=False)
    try:
        yield
    finally:
        for layer in layers:
            del layer.forward  # back to the class's forward


# ----- checkpoints -----------------------------------------------------------------------
def _fingerprint(model: nn.Module, shapes: Sequence[BlockShapes], ids: torch.Tensor) -> str:
    h = hashlib.sha256()
    h.update(repr([tuple(vars(s).values()) for s in shapes]).encode())
    h.update(str(total_params(model)).encode())
    h.update(ids.detach().cpu().to(torch.int64).numpy().tobytes())
    return h.hexdigest()[:16]


def save_checkpoint(path: str | os.PathLike, state: dict[str, Any]) -> None:
    """``torch.save`` to a temporary file next to ``path``, then an atomic rename."""
    from ...io.outputs import clean_stale, staged_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    clean_stale(path)  # temporaries of killed runs
    with staged_file(path) as tmp:
        torch.save(state, tmp)


def load_checkpoint(path: str | os.PathLike, key: dict[str, Any], fingerprint: str) -> dict[str, Any] | None:
    """The checkpoint at ``path`` if it exists; ValueError if it belongs to other settings, model or data."""
    path = Path(path)
    if not path.exists():
        return None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)  # no arbitrary pickles
    except Exception as exc:  # noqa: BLE001 - any unreadable file gets the same advice
        raise ValueError(f"DISP checkpoint {path} is unreadable ({exc}); delete it or pass another --checkpoint") from exc
    if not isinstance(state, dict) or state.get("version") != CHECKPOINT_VERSION:
        raise ValueError(f"{path} is not a DISP checkpoint of version {CHECKPOINT_VERSION}; delete it or pass "
                         "another --checkpoint")
    if state["key"] != key:
        diff = {k: (state["key"].get(k), key.get(k)) for k in {**state["key"], **key}
                if state["key"].get(k) != key.get(k)}
        raise ValueError(f"DISP checkpoint {path} was written with other settings (checkpoint, now): {diff}; "
                         "use the same settings to resume, or delete it / pass another --checkpoint to start afresh")
    if state["fingerprint"] != fingerprint:
        raise ValueError(f"DISP checkpoint {path} was written for another model or other calibration data; "
                         "delete it or pass another --checkpoint")
    return state


# ----- training --------------------------------------------------------------------------
def training_masks(net: HyperNetBase, config: DISPConfig,
                   gen: torch.Generator) -> tuple[list[BlockMasks], list[BlockMasks]]:
    """``(masks of the LM forward, hard masks of the budget term)`` of one training step.

    Library: the same hard (straight-through / ReinMax) masks twice, one noise draw. Reference:
    soft Gumbel-sigmoid masks (values in (0, 1)) for the LM loss, then hard masks of a second
    draw for the budget term; one evaluation of the hypernetwork feeds both.
    """
    logits = net.logits()
    if config.variant == "reference":
        soft = net.soft_masks(logits, config.mask_temperature, gen)
        return soft, net.hard_masks(logits, config.mask_temperature, gen, config.reinmax)
    hard = net.hard_masks(logits, config.mask_temperature, gen, config.reinmax)
    return hard, hard


def regulariser(r: torch.Tensor, p: float) -> torch.Tensor:
    """``|log(r / p)|``: zero at the budget, symmetric in ratio."""
    return torch.abs(torch.log(r.clamp_min(1e-8) / p))


def train_hypernet(
    model: nn.Module,
    adapter: ArchAdapter,
    config: DISPConfig,
    calib_ids: torch.Tensor,
    device: torch.device | str | None = None,
    progress: bool = True,
    stop_after: int | None = None,
) -> TrainResult:
    """Train DISP's hypernetwork on the frozen ``model`` (see the module docstring).

    Args:
        calib_ids: ``[N, T]`` calibration token ids; each step uses ``config.batch`` windows of
            ``config.seqlen`` tokens at random rows/offsets.
        device: where the model runs (default: its parameters' device).
        stop_after: stop (after writing the checkpoint) once this many steps are done in total -
            simulates an interrupted run in tests.
    """
    shapes = block_shapes(model, adapter)
    dev = torch.device(device) if device is not None else next(model.parameters()).device
    seqlen = check_calibration(calib_ids, config)
    p = kept_fraction_target(model, shapes, config.target_params)
    full = float(prunable_params(shapes))
    net = build_hypernet(config.variant, len(shapes), uniform_sizes(mask_sizes(shapes)), config.hypernet_hidden,
                         config.train_seed).to(dev)
    opt = torch.optim.AdamW(net.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay)
    key, fp = config.training_key(), _fingerprint(model, shapes, calib_ids)
    start, history = 0, []
    if config.checkpoint is not None:
        state = load_checkpoint(config.checkpoint, key, fp)
        if state is not None:
            net.load_state_dict(state["hypernet"])
            opt.load_state_dict(state["optimizer"])
            start, history = int(state["step"]), list(state["history"])
            logger.warning("DISP: resumed from checkpoint %s at step %d of %d", config.checkpoint, start, config.steps)
            if start > config.steps:
                raise ValueError(f"DISP checkpoint {config.checkpoint} is at step {start} > steps={config.steps}; "
                                 "raise --steps or delete the checkpoint")

    def write(step: int) -> None:
        if config.checkpoint is not None:
            save_checkpoint(config.checkpoint, {
                "version": CHECKPOINT_VERSION, "key": key, "fingerprint": fp, "step": step,
                "hypernet": net.state_dict(), "optimizer": opt.state_dict(), "history": history})

    end = config.steps if stop_after is None else min(config.steps, int(stop_after))
    t0 = time.perf_counter()
    net.train()
    bar = tqdm(range(start, end), desc="disp: training hypernetwork", disable=not progress, leave=False,
               initial=0, total=end - start)
    with frozen(model), block_checkpointing(model, adapter, config.grad_checkpointing), \
            MaskHooks(model, adapter) as hooks:
        for step in bar:
            gen = step_generator(config.train_seed, step)
            ids = sample_windows(calib_ids, config.batch, seqlen, gen).to(dev)
            lm_masks, budget_masks = training_masks(net, config, gen)
            hooks.masks = lm_masks
            lm = model(input_ids=ids, labels=ids, use_cache=False).loss
            r = kept_params(shapes, [m.to(torch.float32) for m in budget_masks]) / full
            reg = regulariser(r, p)
            loss = lm + config.lam * reg
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            history.append((float(lm.detach()), float(reg.detach()), float(r.detach())))
            bar.set_postfix(loss=f"{history[-1][0]:.3f}", r=f"{history[-1][2]:.3f}", p=f"{p:.3f}")
            if (step + 1) % config.checkpoint_every == 0 or step + 1 == end:
                write(step + 1)
        hooks.masks = None
    if end == start and start > 0:
        write(start)
    net.eval()
    return TrainResult(net, end, start, time.perf_counter() - t0, history, p)


# ----- exact budget -------------------------------------------------------------------
@dataclass
class ExactMasks:
    """Deterministic hard masks meeting the budget, and how they were found.

    Attributes:
        masks: one :class:`BlockMasks` per block (0/1).
        offset: the global logit offset added before thresholding.
        removed_before: fraction of all parameters the un-adjusted (offset 0) masks remove.
        removed: fraction the returned masks remove (exact count).
        params_after: exact parameter count of the exported model.
    """

    masks: list[BlockMasks]
    offset: float
    removed_before: float
    removed: float
    params_after: int


@torch.no_grad()
def exact_masks(model: nn.Module, adapter: ArchAdapter, net: HyperNetBase, target_params: float,
                iters: int = 60) -> ExactMasks:
    """Noise-free hard masks with one global logit offset bisected to remove ``target_params``.

    Kept parameters are non-decreasing in the offset; the result is the largest offset whose
    model removes at least ``target_params`` of the parameters (within a channel's worth).
    """
    shapes = block_shapes(model, adapter)
    total, full = total_params(model), prunable_params(shapes)
    logits = {k: a.float() for k, a in net.logits().items()}

    def removed_at(c: float) -> tuple[float, list[BlockMasks]]:
        masks = net.deterministic(c, logits)
        kept = float(kept_params(shapes, [m.to('cpu') for m in masks]))
        return (full - kept) / total, masks

    before, _ = removed_at(0.0)
    span = max(float(a.abs().max()) for a in logits.values()) + 3.0 + 1.0
    lo, hi = -span, span  # lo: (nearly) everything pruned, hi: everything kept
    if removed_at(lo)[0] < target_params:
        raise ValueError(f"DISP cannot remove {target_params:.3f} of the parameters even with one channel per "
                         f"mask (at most {removed_at(lo)[0]:.3f}); lower target_params")
    for _ in range(iters):
        mid = 0.5 * (lo + hi)
        if removed_at(mid)[0] >= target_params:
            lo = mid
        else:
            hi = mid
    removed, masks = removed_at(lo)
    after = params_after(model, shapes, [m.to('cpu') for m in masks])
    logger.info("DISP: offset %.4f moves the removed fraction %.4f -> %.4f (target %.4f)",
                lo, before, removed, target_params)
    if not math.isclose(removed, target_params, abs_tol=0.01):
        logger.warning("DISP: achieved removed fraction %.4f is more than 0.01 from the target %.4f "
                       "(channel granularity too coarse for this model)", removed, target_params)
    return ExactMasks(masks, lo, before, removed, after)
