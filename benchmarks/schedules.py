"""Uniform vs layer-redundancy vs global slicing at equal *parameter count*.

For each real model in ../shared/models and each target fraction of parameters
removed (``target_params``), compress a fresh copy with every schedule and
measure perplexity. Results: docs/schedules.md (table) and docs/schedules.json.

    python benchmarks/schedules.py [--threads 2] [--targets 0.15 0.25] [--models stories260k opt-fixture aidreams260k]
    python benchmarks/schedules.py --heldout [--targets 0.2 0.3]   # docs/schedules.json "heldout" key

``--heldout`` re-makes the choice of the layer-redundancy slicing base ratio (``SB = r * SP``)
and of the global schedule's temperature (SliceGPT, and FASP with whole heads) on *held-out
calibration windows* only: each setting calibrates on the first 90% of the calibration
windows and is scored by its perplexity on the last 10% (``split_calibration`` /
``heldout_nll``, as ``auto``). The evaluation text is read only to report the perplexity of
the setting chosen that way next to the library default's; it never enters a choice.

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
import copy
import json
import math
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch

import slimformer as sf
import slimformer.methods._shared.pruning as _pruning
import slimformer.schedule as _schedule
from slimformer.eval import perplexity
from slimformer.methods._shared.selection import heldout_nll, split_calibration

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


# ----- --heldout: slicing base and temperature chosen on held-out calibration windows -----

HELDOUT_FRACTION = 0.1  # as AutoConfig.holdout
BASE_RATIOS = (0.25, 0.5, 0.75, 1.0)  # SB = r * SP; r = 1 slices every block by SP (uniform, 1-dim steps)
TEMPERATURES = (0.05, 0.15, 0.5, 1.0)
HELDOUT_MODELS = ("stories260k", "opt-fixture")


class _patched:
    """Temporarily set the layer-redundancy base ratio or FASP's global temperature.

    ``slicing_base`` in the configs is absolute (a fraction of ``d``), but with ``target_params``
    the mean slicing ``SP`` is found by bisection, so a *ratio* ``SB / SP`` can only be swept
    through the library default ``DEFAULT_BASE_RATIO`` (read by ``LayerRedundancy.base`` at
    call time). FASP has no temperature field: its global schedule is built by
    ``make_schedule(config.schedule)`` in ``_shared/pruning.py``, wrapped here.
    """

    def __init__(self, base_ratio: float | None = None, fasp_temperature: float | None = None) -> None:
        self.base_ratio, self.fasp_temperature = base_ratio, fasp_temperature

    def __enter__(self) -> "_patched":
        self._ratio, self._make = _schedule.DEFAULT_BASE_RATIO, _pruning.make_schedule
        if self.base_ratio is not None:
            _schedule.DEFAULT_BASE_RATIO = self.base_ratio
        if self.fasp_temperature is not None:
            orig, t = self._make, self.fasp_temperature
            _pruning.make_schedule = lambda name, **kw: orig(name, **({"temperature": t, **kw} if name == "global"
                                                                      else kw))
        return self

    def __exit__(self, *exc: object) -> None:
        _schedule.DEFAULT_BASE_RATIO, _pruning.make_schedule = self._ratio, self._make


def heldout_families(target: float) -> list[tuple[str, str, float, Any, Callable[[], _patched]]]:
    """(family, knob, value, config, patch) for every swept setting at ``target``."""
    out: list[tuple[str, str, float, Any, Callable[[], _patched]]] = []
    for r in BASE_RATIOS:
        out.append(("slicegpt layer-redundancy", "base ratio SB/SP", r,
                    sf.SliceGPTConfig(target_params=target, schedule="layer-redundancy"),
                    lambda r=r: _patched(base_ratio=r)))
    for t in TEMPERATURES:
        out.append(("slicegpt global", "temperature", t,
                    sf.SliceGPTConfig(target_params=target, schedule="global", temperature=t), lambda: _patched()))
    for t in TEMPERATURES:
        out.append(("fasp heads global", "temperature", t,
                    sf.FASPConfig(target_params=target, attention="heads", schedule="global"),
                    lambda t=t: _patched(fasp_temperature=t)))
    return out


HELDOUT_DEFAULTS = {"slicegpt layer-redundancy": 0.5, "slicegpt global": 0.15, "fasp heads global": 0.15}


def run_heldout(name: str, targets: list[float]) -> dict[str, Any]:
    """Sweep every knob on ``name``; choose on held-out windows; evaluate chosen and default."""
    setting = SETTINGS[name]()
    base, tok = sf.load_model(str(setting.path), dtype="float32")
    ids = setting.calib(base, tok)
    ids = getattr(ids, "input_ids", ids)
    train, held = split_calibration(ids, HELDOUT_FRACTION)
    dense_held = math.exp(heldout_nll(base, held, 16, torch.device("cpu")))
    res: dict[str, Any] = {"note": setting.note, "calibration_windows": int(train.shape[0]),
                           "heldout_windows": int(held.shape[0]), "dense_heldout_ppl": dense_held,
                           "dense_ppl": setting.evaluate(base, tok), "rows": [], "choices": []}
    t_start = time.perf_counter()
    for target in targets:
        models: dict[tuple[str, float], torch.nn.Module] = {}
        for family, knob, value, config, patch in heldout_families(target):
            model = copy.deepcopy(base)
            t0 = time.perf_counter()
            row: dict[str, Any] = {"target": target, "family": family, "knob": knob, "value": value}
            try:
                with patch():
                    result = sf.compress(model, config, train, progress=False)
            except ValueError as exc:  # an unreachable setting is reported, not hidden
                row["error"] = str(exc).splitlines()[0]
            else:
                rep = result.report
                row.update(removed=rep["removed_fraction"], sparsity=rep.get("sparsity"),
                           heldout_ppl=math.exp(heldout_nll(result.model, held, 16, torch.device("cpu"))),
                           seconds=round(time.perf_counter() - t0, 2))
                models[(family, value)] = result.model
            res["rows"].append(row)
            print(name, json.dumps(row), flush=True)
        for family, default in HELDOUT_DEFAULTS.items():
            rows = [r for r in res["rows"] if r["target"] == target and r["family"] == family and "error" not in r]
            best = min(rows, key=lambda r: r["heldout_ppl"])
            dflt = next(r for r in rows if r["value"] == default)
            # the evaluation text is read only now, after the choice, for the chosen and the default model
            for r in {id(best): best, id(dflt): dflt}.values():
                r["eval_ppl"] = setting.evaluate(models[(family, r["value"])], tok)
            res["choices"].append({"target": target, "family": family, "knob": best["knob"], "default": default,
                                   "chosen": best["value"], "default_heldout_ppl": dflt["heldout_ppl"],
                                   "chosen_heldout_ppl": best["heldout_ppl"], "default_eval_ppl": dflt["eval_ppl"],
                                   "chosen_eval_ppl": best["eval_ppl"]})
            print(name, json.dumps(res["choices"][-1]), flush=True)
        del models
    res["seconds"] = round(time.perf_counter() - t_start, 1)
    return res


def heldout_markdown(results: dict[str, Any]) -> str:
    lines = ["\n## Held-out choice of slicing base and temperature\n",
             "Generated by `python benchmarks/schedules.py --heldout` (key `heldout` in docs/schedules.json). "
             "Every setting is calibrated on the first 90% of the calibration windows and scored **only** on "
             "the held-out last 10% (`split_calibration` / `heldout_nll`, as `auto`); \"chosen\" is the setting "
             "with the lowest held-out perplexity. The evaluation text is read only afterwards, for the chosen "
             "setting and the library default. The slicing base is swept as a ratio `SB = r * SP` (the library "
             "default is r = 0.5, `DEFAULT_BASE_RATIO`; r = 1 slices every block by SP); FASP uses "
             "`attention=heads, schedule=global`. Budgets are `target_params` (fraction of all parameters "
             "removed).\n"]
    for name, res in results.items():
        lines.append(f"\n### {name} ({res['note']}); dense eval ppl {res['dense_ppl']:.3f}, dense held-out ppl "
                     f"{res['dense_heldout_ppl']:.3f} ({res['calibration_windows']} calibration + "
                     f"{res['heldout_windows']} held-out windows; {res['seconds']:.0f} s)\n")
        if res.get("provenance"):
            lines.append(f"Note: {res['provenance']}.\n")
        lines.append("| removed | family | knob | value | achieved removed | held-out ppl | eval ppl |")
        lines.append("|---|---|---|---|---|---|---|")
        for r in res["rows"]:
            if "error" in r:
                lines.append(f"| {r['target']:.2f} | {r['family']} | {r['knob']} | {r['value']} | unreachable | "
                             f"{r['error']} | |")
                continue
            ev = f"{r['eval_ppl']:.3f}" if "eval_ppl" in r else "-"
            lines.append(f"| {r['target']:.2f} | {r['family']} | {r['knob']} | {r['value']} | {r['removed']:.4f} | "
                         f"{r['heldout_ppl']:.3f} | {ev} |")
    lines.append("\n### Chosen vs default\n")
    lines.append("Decision rule (fixed before the run): a library default changes only if the held-out windows "
                 "prefer the same other value in every cell (both models, both budgets).\n")
    for family, default in HELDOUT_DEFAULTS.items():
        picks = [(name, c["target"], c["chosen"]) for name, res in results.items() for c in res["choices"]
                 if c["family"] == family]
        values = {v for _, _, v in picks}
        verdict = (f"always {default} (the default): the held-out data agrees with it" if values == {default} else
                   f"always {next(iter(values))}: the held-out data prefers it over {default}" if len(values) == 1
                   else "mixed (" + ", ".join(f"{n} {t:.0%}: {v}" for n, t, v in picks) + f"); default {default} kept")
        lines.append(f"* **{family}**: {verdict}.")
    lines.append("")
    lines.append("| model | target | family | default | chosen on held-out | achieved removed (default → chosen) | "
                 "held-out ppl (default → chosen) | eval ppl (default → chosen) |")
    lines.append("|---|---|---|---|---|---|---|---|")
    for name, res in results.items():
        for c in res["choices"]:
            removed = {r["value"]: r["removed"] for r in res["rows"]
                       if r["target"] == c["target"] and r["family"] == c["family"] and "error" not in r}
            lines.append(f"| {name} | {c['target']:.2f} | {c['family']} | {c['default']} | {c['chosen']} | "
                         f"{removed[c['default']]:.4f} → {removed[c['chosen']]:.4f} | "
                         f"{c['default_heldout_ppl']:.3f} → {c['chosen_heldout_ppl']:.3f} | "
                         f"{c['default_eval_ppl']:.3f} → {c['chosen_eval_ppl']:.3f} |")
    lines.append("\nFASP with whole heads moves in coarse steps (one KV group of a block at a time), so settings at "
                 "one target can remove slightly different fractions; compare the achieved column before reading a "
                 "small perplexity difference.")
    return "\n".join(lines) + "\n"


HEADER = """# Schedules at equal parameter count

Generated by `python benchmarks/schedules.py` (SliceGPT rotation and slicing in every
row; only the per-layer widths differ). "target removed" is the requested fraction of
*parameters* removed (`target_params`, counting shortcuts and the untied head);
"achieved" is what the exact count gives after rounding widths to integers. Every
schedule row is solved by bisection for the target; the "uniform, width k" row is the
uniform model one width step on the other side of the target, because uniform
widths move in coarse steps. Lower perplexity is better.

The small "SB = ..." and "global T ..." sweeps in these tables are scored on the
*evaluation* text, so they show sensitivity and must not be used to choose a setting.
The library defaults (`DEFAULT_BASE_RATIO` = 0.5, i.e. SB = SP/2: the halfway base; temperature
0.15: the unofficial MoDeGPT code's value) are checked on held-out calibration windows
only in the last section, "Held-out choice of slicing base and temperature".
"""


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", nargs="+", default=list(SETTINGS), choices=list(SETTINGS))
    p.add_argument("--targets", nargs="+", type=float, default=[0.15, 0.25])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--json", default=str(REPO / "docs" / "schedules.json"))
    p.add_argument("--md", default=str(REPO / "docs" / "schedules.md"))
    p.add_argument("--heldout", action="store_true",
                   help="choose the slicing base ratio and temperatures on held-out calibration windows "
                        "(stories260k, opt-fixture; default targets 0.2 0.3); adds the 'heldout' key and section")
    p.add_argument("--render", action="store_true", help="rewrite the markdown from the json only")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    logging.basicConfig(level=logging.WARNING, format="%(name)s: %(message)s")
    if args.render:
        _write(json.loads(Path(args.json).read_text()), args)
        return
    if args.heldout:
        models = [m for m in args.models if m in HELDOUT_MODELS] if args.models != list(SETTINGS) else list(HELDOUT_MODELS)
        targets = args.targets if args.targets != [0.15, 0.25] else [0.2, 0.3]
        new = {name: run_heldout(name, targets) for name in models}
        data = json.loads(Path(args.json).read_text()) if Path(args.json).exists() else {}
        done = {**data.get("heldout", {}).get("models", {}), **new}  # one model per run is fine: merged by name
        data["heldout"] = {"date": time.strftime("%Y-%m-%d"), "torch": torch.__version__, "threads": args.threads,
                           "holdout": HELDOUT_FRACTION, "targets": targets,
                           "models": {m: done[m] for m in HELDOUT_MODELS if m in done}}
        _write(data, args)
        return
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
    old = json.loads(Path(args.json).read_text()) if Path(args.json).exists() else {}
    if "heldout" in old:
        results["heldout"] = old["heldout"]  # keep the held-out sweep (rerun with --heldout)
    _write(results, args)


def _write(data: dict[str, Any], args: argparse.Namespace) -> None:
    """docs/schedules.json and docs/schedules.md from the schedule table and the held-out sweep."""
    Path(args.json).write_text(json.dumps(data, indent=2) + "\n")
    table = markdown({k: v for k, v in data.items() if k != "heldout"})
    if "heldout" in data:
        table += "\n" + heldout_markdown(data["heldout"]["models"])
    Path(args.md).write_text(HEADER + table + "\n")
    print(table)


if __name__ == "__main__":
    main()
