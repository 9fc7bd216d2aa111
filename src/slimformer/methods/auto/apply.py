"""``auto``: run every candidate on a copy of the model, score it on held-out calibration windows,
and turn the model into the best one (in place)."""

from __future__ import annotations

import copy
import dataclasses
import logging
import math
import time
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from ...arch import ArchAdapter
from ...core.params import count_params
from .._shared.selection import Selection, become, heldout_nll, split_calibration
from ..base import Runtime, get_method
from .config import AutoConfig, parse_candidates

logger = logging.getLogger("slimformer.methods.auto")


def _candidate_config(method: str, settings: dict[str, Any], target: float) -> Any:
    spec = get_method(method)
    names = {f.name for f in dataclasses.fields(spec.config_cls)}
    unknown = sorted(set(settings) - names)
    if unknown:
        raise ValueError(f"auto candidate {method}: {spec.config_cls.__name__} has no field {unknown[0]!r}")
    if "target_params" not in names:
        raise ValueError(f"auto candidate {method}: it has no target_params budget")
    return spec.config_cls(**settings, target_params=target)


def apply_auto(model: nn.Module, adapter: ArchAdapter, config: AutoConfig, calib_ids: torch.Tensor,
               runtime: Runtime) -> dict[str, Any]:
    """Compress a copy with each candidate, keep the one with the lowest held-out perplexity.

    Returns the chosen candidate's own report fields plus ``auto``: ``chosen`` (label),
    ``holdout_windows``, ``dense_heldout_ppl`` and ``candidates`` (per candidate: label,
    method, config, params after, removed fraction, held-out perplexity, seconds; or the
    error / ``skipped`` for the ones that did not run).
    """
    candidates = parse_candidates(config.candidates)
    configs = [(label, method, _candidate_config(method, settings, float(config.target_params)))
               for label, method, settings in candidates]  # every name and field checked before any work
    train, held = split_calibration(calib_ids, float(config.holdout))
    dense_nll = heldout_nll(model, held, runtime.batch_size, runtime.device)
    params_before = count_params(model)
    rows: list[dict[str, Any]] = []
    best = Selection(config.max_minutes)
    # each candidate works on its own copy: its blocks come from that copy, in memory (never from the
    # source the API built for ``model``)
    inner = dataclasses.replace(runtime, progress=False, blocks=None)
    bar = tqdm(configs, desc="auto", unit="candidate", disable=not runtime.progress, leave=False)
    for label, method, cfg in bar:
        bar.set_postfix_str(label)
        row: dict[str, Any] = {"label": label, "method": method, "config": dataclasses.asdict(cfg)}
        rows.append(row)
        if best.out_of_time():
            row["skipped"] = f"time box of {config.max_minutes} minutes reached"
            continue
        work = copy.deepcopy(model)
        t0 = time.perf_counter()
        try:
            extra = get_method(method).apply(work, adapter, cfg, train, inner)
        except ValueError as exc:  # e.g. a budget or structure this candidate cannot reach on this model
            row["error"] = str(exc).splitlines()[0]
            logger.warning("auto: candidate %s failed: %s", label, row["error"])
            continue
        row["seconds"] = round(time.perf_counter() - t0, 3)
        nll = heldout_nll(work, held, runtime.batch_size, runtime.device)
        after = count_params(work)
        row.update(params_after=after, removed_fraction=1 - after / params_before, heldout_ppl=math.exp(nll))
        logger.info("auto: %s -> held-out ppl %.4f, %d params", label, row["heldout_ppl"], after)
        best.offer(nll, work, extra, len(rows) - 1)
        del work
    bar.close()
    chosen, extra, index = best.take("auto: no candidate could compress this model", rows, lambda r: r["label"])
    become(model, chosen)
    extra = dict(extra)
    extra["auto"] = {
        "chosen": rows[index]["label"],
        "holdout_windows": int(held.shape[0]),
        "calibration_windows": int(train.shape[0]),
        "dense_heldout_ppl": math.exp(dense_nll),
        "candidates": rows,
    }
    return extra


__all__ = ["apply_auto", "heldout_nll", "split_calibration"]
