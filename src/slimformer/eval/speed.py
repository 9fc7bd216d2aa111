"""Speed and memory of dense vs. compressed models, measured side by side.

Prefill: one forward over ``[batch, seqlen]`` random tokens (building the KV
cache). Decode: greedy ``generate`` of ``new_tokens`` tokens with the KV cache;
decode time = generate time - prefill time. Models are measured interleaved
(dense, compressed, dense, ...) after warm-up, so machine noise hits all alike;
medians and min/max are reported. Memory: parameter bytes, and peak
``torch.cuda.max_memory_allocated`` on GPU or the process RSS on CPU.

With two models (baseline first), ``speedup`` holds the measured prefill and decode
speed-ups and ``matmul_flops``, the speed-up the matmul FLOPs predict
(baseline matmul FLOPs / compressed matmul FLOPs): all three > 1 mean faster.
Result files written before it had ``matmul_flop_ratio``, its inverse.
"""

from __future__ import annotations

import logging
import statistics
import time
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from tqdm.auto import tqdm

from ..core.params import count_params
from ..memory import peak_rss_mb

logger = logging.getLogger("slimformer.eval.speed")


#: fewest decoded tokens for a decode rate (decode time is a difference of two timings)
MIN_NEW_TOKENS = 8


@dataclass
class SpeedSettings:
    """What to measure. ``threads`` fixes torch's intra-op threads (None = leave as is)."""

    batch: int = 1
    seqlen: int = 128
    new_tokens: int = 32
    warmup: int = 1
    repeats: int = 5
    threads: int | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("batch", "seqlen", "new_tokens", "repeats"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.warmup < 0:
            raise ValueError(f"warmup must be >= 0, got {self.warmup}")
        if self.new_tokens < MIN_NEW_TOKENS:  # decode time is generate - prefill: too few steps measure noise
            raise ValueError(f"new_tokens must be >= {MIN_NEW_TOKENS} to time decoding, got {self.new_tokens}")


def matmul_params(model: nn.Module) -> int:
    """Parameters used in matrix multiplies per token (all Linear weights; embeddings are lookups).

    ``2 * matmul_params`` approximates decode FLOPs per token, ignoring attention scores.
    """
    return sum(m.weight.numel() for m in model.modules() if isinstance(m, nn.Linear))


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@torch.inference_mode()
def _one_run(model: nn.Module, ids: torch.Tensor, new_tokens: int) -> tuple[float, float]:
    device = ids.device
    _sync(device)
    t0 = time.perf_counter()
    model(input_ids=ids, use_cache=True)
    _sync(device)
    prefill = time.perf_counter() - t0
    t0 = time.perf_counter()
    model.generate(ids, max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False,
                   pad_token_id=0, attention_mask=torch.ones_like(ids))
    _sync(device)
    total = time.perf_counter() - t0
    if total <= prefill:
        raise RuntimeError(f"generating {new_tokens} tokens took {total:.4f}s, no longer than the prefill alone "
                           f"({prefill:.4f}s): the decode time cannot be measured; raise --new-tokens")
    return prefill, total - prefill


def _summary(values: list[float]) -> dict[str, float]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def compare_speed(models: dict[str, nn.Module], settings: SpeedSettings, device: str | torch.device | None = None,
                  progress: bool = False) -> dict[str, Any]:
    """Measure every model in ``models`` (name -> model) interleaved; returns a JSON-able dict.

    ``progress`` shows a bar over the runs (warm-up and measured, every model).
    """
    if settings.threads is not None:
        torch.set_num_threads(settings.threads)
    first = next(iter(models.values()))
    dev = torch.device(device) if device is not None else next(first.parameters()).device
    vocab = min(int(m.config.vocab_size) for m in models.values())
    g = torch.Generator().manual_seed(settings.seed)
    ids = torch.randint(0, vocab, (settings.batch, settings.seqlen), generator=g).to(dev)
    for name, m in models.items():
        max_pos = getattr(m.config, "max_position_embeddings", None)
        if max_pos is not None and settings.seqlen + settings.new_tokens > max_pos:
            raise ValueError(f"seqlen + new_tokens = {settings.seqlen + settings.new_tokens} exceeds the "
                             f"max_position_embeddings={max_pos} of {name}")
        m.to(dev).eval()
    bar = tqdm(total=(settings.warmup + settings.repeats) * len(models), desc="bench", unit="run",
               disable=not progress, leave=False)
    for _ in range(settings.warmup):
        for name, m in models.items():
            bar.set_postfix_str(f"warm-up {name}")
            _one_run(m, ids, settings.new_tokens)
            bar.update()
    runs: dict[str, list[tuple[float, float]]] = {n: [] for n in models}
    peaks: dict[str, float] = {}
    for _ in range(settings.repeats):
        for name, m in models.items():
            bar.set_postfix_str(name)
            if dev.type == "cuda":
                torch.cuda.reset_peak_memory_stats(dev)
            runs[name].append(_one_run(m, ids, settings.new_tokens))
            if dev.type == "cuda":
                peaks[name] = max(peaks.get(name, 0.0), torch.cuda.max_memory_allocated(dev) / 2**20)
            bar.update()
    bar.close()
    out: dict[str, Any] = {"settings": settings.__dict__, "device": str(dev), "models": {}}
    for name, m in models.items():
        prefill = [settings.batch * settings.seqlen / p for p, _ in runs[name]]
        decode = [settings.batch * settings.new_tokens / d for _, d in runs[name]]
        latency = [1000.0 * d / settings.new_tokens for _, d in runs[name]]
        out["models"][name] = {
            "prefill_tokens_per_s": _summary(prefill),
            "decode_tokens_per_s": _summary(decode),
            "decode_ms_per_token": _summary(latency),
            "params": count_params(m),
            "param_mb": sum(p.numel() * p.element_size() for p in m.parameters()) / 2**20,
            "matmul_params": matmul_params(m),
            "dtype": str(next(m.parameters()).dtype).replace("torch.", ""),
        }
        if dev.type == "cuda":
            out["models"][name]["peak_gpu_mb"] = peaks[name]
    out["process_peak_rss_mb"] = peak_rss_mb()
    names = list(models)
    if len(names) == 2:
        base, comp = (out["models"][n] for n in names)
        out["speedup"] = {
            "prefill": comp["prefill_tokens_per_s"]["median"] / base["prefill_tokens_per_s"]["median"],
            "decode": comp["decode_tokens_per_s"]["median"] / base["decode_tokens_per_s"]["median"],
            # the speed-up the matmul FLOPs predict (same direction as the measured ones)
            "matmul_flops": base["matmul_params"] / comp["matmul_params"],
        }
    return out
