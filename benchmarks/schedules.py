"""Uniform vs layer-redundancy vs global slicing at equal *parameter count*.

For each real model in ../shared/models and each target fraction of parameters
removed (``target_params``), compress a fresh copy with every schedule and
measure perplexity. Results: docs/schedules.md (table) and docs/schedules.json.

    python benchmarks/schedules.py [--threads 2] [--targets 0.15 0.25] [--models stories260k opt-fixture aidreams260k]

Settings per model:
* stories260k: calibration 128 x 256 tokens of the TinyStories train prefix (seed 42);
  perplexity on the TinyStories valid prefix, seqlen 512.
* opt-fixture: calibration 64 x 256 tokens of WikiText-2 valid (seed 0); perplexity on
  the first 40,000 tokens of WikiText-2 test, seqlen 256.
* aidreams260k: no text of its own domain exists offline, so calibration and
  evaluation text is *sampled from the dense model itself* (temperature 1, disjoint
  seeds): perplexity then measures how well the compressed model keeps the dense
  model's distribution.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch

import slimformer as sf
from slimformer.eval import perplexity

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("SHARED", REPO.parent / "shared"))
logger = logging.getLogger("slimformer.benchmarks.schedules")


@dataclass
class Setting:
    """How to calibrate and evaluate one model. ``calib`` / ``evaluate`` take (model, tok)."""

    path: Path
    calib: Callable[[Any, Any], Any]
    evaluate: Callable[[Any, Any], float]
    note: str


def _stories() -> Setting:
    data = SHARED / "data" / "tinystories"
    return Setting(
        SHARED / "models" / "stories260k",
        lambda m, tok: sf.data.load(str(data / "tinystories_train_prefix.txt"), tok, samples=128, seqlen=256, seed=42),
        lambda m, tok: perplexity(m, tok, str(data / "tinystories_valid_prefix.txt"), seqlen=512, batch_size=16,
                                  progress=False).ppl,
        "TinyStories valid prefix, seqlen 512",
    )


def _opt() -> Setting:
    data = SHARED / "data" / "wikitext2"
    return Setting(
        SHARED / "models" / "opt-fixture",
        lambda m, tok: sf.data.load(str(data / "wiki.valid.raw"), tok, samples=64, seqlen=256, seed=0),
        lambda m, tok: perplexity(m, tok, str(data / "wiki.test.raw"), seqlen=256, batch_size=16, max_tokens=40000,
                                  progress=False).ppl,
        "WikiText-2 test, first 40k tokens, seqlen 256",
    )


@torch.no_grad()
def _sample(model: torch.nn.Module, n: int, seqlen: int, seed: int) -> torch.Tensor:
    """``[n, seqlen]`` ids sampled from ``model`` at temperature 1, starting at BOS (end tokens kept)."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.full((n, 1), int(model.config.bos_token_id), dtype=torch.long)
    for _ in range(seqlen - 1):
        probs = torch.softmax(model(input_ids=ids, use_cache=False).logits[:, -1].double(), dim=-1)
        ids = torch.cat([ids, torch.multinomial(probs, 1, generator=g)], dim=1)
    return ids


_AIDREAMS_TEXT: dict[str, torch.Tensor] = {}


def _aidreams_text(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Self-generated calibration (64 x 128) and evaluation (160 x 128) ids, cached across runs."""
    if not _AIDREAMS_TEXT:
        _AIDREAMS_TEXT["calib"] = _sample(model, 64, 128, seed=1)
        _AIDREAMS_TEXT["eval"] = _sample(model, 160, 128, seed=2).reshape(-1)
    return _AIDREAMS_TEXT


def _aidreams() -> Setting:
    return Setting(
        SHARED / "models" / "aidreams260k",
        lambda m, tok: _aidreams_text(m)["calib"],
        lambda m, tok: perplexity(m, tok, _AIDREAMS_TEXT["eval"], seqlen=128, batch_size=16, progress=False).ppl,
        "text sampled from the dense model (160 x 128 tokens), seqlen 128",
    )


SETTINGS: dict[str, Callable[[], Setting]] = {"stories260k": _stories, "opt-fixture": _opt, "aidreams260k": _aidreams}


def run_one(setting: Setting, config: sf.SliceGPTConfig) -> dict[str, Any]:
    """Compress a fresh copy of the model with ``config``; perplexity and report fields."""
    model, tok = sf.load_model(str(setting.path), dtype="float32")
    calib = setting.calib(model, tok)
    t0 = time.perf_counter()
    try:
        result = sf.compress(model, config, calib, progress=False)
    except ValueError as exc:  # e.g. an unreachable target: report it, do not hide it
        return {"error": str(exc).splitlines()[0]}
    seconds = time.perf_counter() - t0
    r = result.report
    return {
        "ppl": setting.evaluate(model, tok),
        "removed": r["removed_fraction"],
        "params_after": r["params_after"],
        "params_before": r["params_before"],
        "sparsity": r["sparsity"],
        "layer_widths": [r["widths"]["embed"]] + r["widths"]["out"][:-1],
        "seconds": round(seconds, 2),
        "bi": (r.get("scores") or {}).get("bi"),
    }


def configs(targets: list[float]) -> list[tuple[str, float, sf.SliceGPTConfig]]:
    """(label, target, config): the three schedules at every target, plus small sweeps at the largest."""
    out = []
    for t in targets:
        out.append(("uniform", t, sf.SliceGPTConfig(target_params=t)))
        out.append(("layer-redundancy (SB = SP/2)", t, sf.SliceGPTConfig(target_params=t, schedule="layer-redundancy")))
        out.append(("global (T 0.15, cap 0.8)", t, sf.SliceGPTConfig(target_params=t, schedule="global")))
    t = max(targets)
    for sb in (0.0, 0.1, 0.2, 0.3):
        out.append((f"layer-redundancy SB = {sb}", t,
                    sf.SliceGPTConfig(target_params=t, schedule="layer-redundancy", slicing_base=sb)))
    for temp in (0.05, 0.5):
        out.append((f"global T {temp}", t, sf.SliceGPTConfig(target_params=t, schedule="global", temperature=temp)))
    return out


def _uniform_neighbour(row: dict[str, Any], target: float, d: int) -> tuple[int, sf.SliceGPTConfig]:
    """The uniform width one step past the solved one, on the other side of ``target``."""
    k = row["layer_widths"][0]
    k2 = k + 1 if row["removed"] > target else k - 1  # wider removes less
    return k2, sf.SliceGPTConfig(sparsity=1.0 - (k2 + 0.5) / d, round_to=1)  # floor((k2 + 0.5)) = k2


def markdown(results: dict[str, Any]) -> str:
    lines = []
    for name, res in results.items():
        lines.append(f"\n### {name} ({res['note']}); dense ppl {res['dense_ppl']:.3f}, "
                     f"{res['params']:,} parameters\n")
        lines.append("| target removed | schedule | achieved removed | mean slicing | layer widths (d_0..d_L-1) | ppl |")
        lines.append("|---|---|---|---|---|---|")
        for row in res["rows"]:
            if "error" in row:
                lines.append(f"| {row['target']:.2f} | {row['label']} | unreachable | | | {row['error']} |")
                continue
            lines.append(
                f"| {row['target']:.2f} | {row['label']} | {row['removed']:.4f} | {row['sparsity']:.4f} | "
                f"{' '.join(map(str, row['layer_widths']))} | {row['ppl']:.3f} |"
            )
    return "\n".join(lines)


HEADER = """# Schedules at equal parameter count

Generated by `python benchmarks/schedules.py` (SliceGPT rotation and slicing in every
row; only the per-layer widths differ). "target removed" is the requested fraction of
*parameters* removed (`target_params`, counting shortcuts and the untied head);
"achieved" is what the exact count gives after rounding widths to integers. Every
schedule row is solved by bisection for the target; the "uniform, width k" row is the
uniform model one width step on the other side of the target, because uniform
widths move in coarse steps. Lower perplexity is better.
"""


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", nargs="+", default=list(SETTINGS), choices=list(SETTINGS))
    p.add_argument("--targets", nargs="+", type=float, default=[0.15, 0.25])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--json", default=str(REPO / "docs" / "schedules.json"))
    p.add_argument("--md", default=str(REPO / "docs" / "schedules.md"))
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    logging.basicConfig(level=logging.WARNING, format="%(name)s: %(message)s")
    results: dict[str, Any] = {}
    for name in args.models:
        setting = SETTINGS[name]()
        model, tok = sf.load_model(str(setting.path), dtype="float32")
        setting.calib(model, tok)  # aidreams: sample its text from the dense model once
        hidden = model.config.hidden_size
        res = {"note": setting.note, "dense_ppl": setting.evaluate(model, tok),
               "params": sum(q.numel() for q in model.parameters()), "rows": []}
        del model
        for label, target, config in configs(args.targets):
            row = {"label": label, "target": target, **run_one(setting, config)}
            res["rows"].append(row)
            print(name, json.dumps(row), flush=True)
            if label == "uniform" and "error" not in row:
                # uniform widths move in coarse steps: also show the neighbour on the other side of the target
                near = _uniform_neighbour(row, target, hidden)
                nrow = {"label": f"uniform, width {near[0]}", "target": target, **run_one(setting, near[1])}
                res["rows"].append(nrow)
                print(name, json.dumps(nrow), flush=True)
        results[name] = res
    Path(args.json).write_text(json.dumps(results, indent=2) + "\n")
    table = markdown(results)
    Path(args.md).write_text(HEADER + table + "\n")
    print(table)


if __name__ == "__main__":
    main()
