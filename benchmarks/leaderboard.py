"""Reproduce docs/leaderboard.md: every method at 20 / 30 / 40 % of parameters removed, side by side.

For each model and target fraction, every registered method (``slimformer.methods.METHODS``:
the single methods, ``auto`` and ``composite`` when present) compresses the dense model with its
documented defaults and ``target_params`` = the target (DISP with a small fixed step budget).
Each compressed model is then measured: perplexity on the evaluation text (read only after the
compression), the average of five offline zero-shot tasks (lm-eval, a fixed ``--zeroshot-limit``),
compression seconds, and prefill / decode speed-up against the dense model measured side by side
in the same process (``slimformer.eval.speed.compare_speed``: warm-up, interleaved repeats). With
``--finetune-steps N`` every compressed model also gets the same short LoRA recovery fine-tune
(``slimformer.finetune``, the recipe of docs/finetune.md, on the calibration text), and the "+ft"
row is measured again (its shapes, so its speed, are those of the row above it).

Torch-Pruning (the ``torch-pruning`` package, its LLM recipe with magnitude importance) is one more
row on the Llama-family models, run in a subprocess with a hard timeout; when it is not installed,
hangs or fails, the row records why.

    python benchmarks/leaderboard.py --jobs 2             # writes docs/leaderboard.{json,md,png} (~32 CPU-min)
    python benchmarks/leaderboard.py --render             # re-render the Markdown/plot from the JSON
    python benchmarks/leaderboard.py --torch-pruning-only # re-run only the Torch-Pruning rows
    python benchmarks/leaderboard.py --models stories260k --ratios 0.3 --methods slicegpt fasp \\
        --finetune-steps 0 --zeroshot-limit 4 --out /tmp/lb   # the smallest run (tests/test_leaderboard.py)
"""

from __future__ import annotations

import argparse
import faulthandler
import json
import logging
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

import slimformer as sf
from common import CALIB_SEED, REPO, SHARED, eval_ids, load_real  # benchmarks/common.py
from common import SETUPS as REAL_SETUPS
from slimformer.eval import perplexity
from slimformer.eval.speed import SpeedSettings, compare_speed

logger = logging.getLogger("leaderboard")

#: calibration / evaluation text per model: benchmarks/common.py's (as benchmarks/auto.py uses them), with
#: eval_tokens cut to fit the CPU budget (stated in docs/leaderboard.md)
SETUPS: dict[str, dict[str, Any]] = {
    "stories260k": {**REAL_SETUPS["stories260k"], "eval_tokens": 20_000, "family": "llama"},
    "opt-fixture": {**REAL_SETUPS["opt-fixture"], "eval_tokens": 8_000, "family": "opt"},
}
TASKS = ["piqa", "hellaswag", "arc_easy", "arc_challenge", "winogrande"]
DEFAULT_RATIOS = [0.2, 0.3, 0.4]
DEFAULT_FINETUNE_STEPS = 20
DEFAULT_ZEROSHOT_LIMIT = 10
#: DISP's hypernetwork training steps: a small fixed budget (the library default is 300, the paper's 10k)
DISP_STEPS = 50
#: the LoRA recipe of docs/finetune.md (lr 2e-3, r 8, all linears) with smaller batches (4 x 128 tokens) to fit\n#: the CPU budget; only ``steps`` varies
FINETUNE_RECIPE = {"lr": 2e-3, "batch": 4, "seqlen": 128, "seed": 0, "eval_tokens": 1024}
SPEED = {"batch": 1, "seqlen": 64, "new_tokens": 16, "warmup": 1, "repeats": 3}
TP_TIMEOUT_S = 120
#: methods shown as their registry name, in this order; any other registered method follows
ORDER = ["slicegpt", "fasp", "magnitude", "wanda-sp", "random", "dotresize", "modegpt", "prunenet", "disp",
         "composite", "auto"]


# --------------------------------------------------------------------------------------- data and models


def load_setup(name: str) -> tuple[Any, Any, torch.Tensor]:
    """Tokenizer, calibration windows and evaluation token ids of model ``name``."""
    _, tok, calib = load_real(name)
    return tok, calib, eval_ids(name, tok, SETUPS[name]["eval_tokens"])


def dense_model(name: str) -> torch.nn.Module:
    """A fresh fp32 copy of the dense model."""
    return sf.load_model(SHARED / "models" / name, dtype="float32")[0].eval()


def method_names(requested: list[str] | None) -> list[str]:
    """The methods to run: ``requested`` or every registered one, in :data:`ORDER`."""
    from slimformer.methods import METHODS

    names = [m for m in ORDER if m in METHODS] + sorted(m for m in METHODS if m not in ORDER)
    return names if requested is None else list(requested)


def method_config(method: str, ratio: float) -> Any:
    """``method``'s config with its defaults and ``target_params=ratio`` (DISP: :data:`DISP_STEPS` steps)."""
    spec = sf.methods.get_method(method)
    extra: dict[str, Any] = {"steps": DISP_STEPS} if method == "disp" else {}
    return spec.config_cls(target_params=ratio, **extra)


# --------------------------------------------------------------------------------------- measurements


def measure_quality(model: torch.nn.Module, tok: Any, ids: torch.Tensor, seqlen: int, limit: int) -> dict[str, Any]:
    """Perplexity on ``ids`` and the zero-shot average (``limit`` examples per task; 0 = skip)."""
    model.eval()
    out: dict[str, Any] = {"ppl": perplexity(model, tok, ids, seqlen=seqlen, batch_size=16, progress=False).ppl}
    if limit > 0:
        from slimformer.eval.zeroshot import zero_shot

        zs = zero_shot(model, tok, TASKS, limit=limit, batch_size=8, tasks_data=str(SHARED / "data"))
        out["zeroshot_avg"] = zs["average"]
        out["zeroshot"] = {t: r["value"] for t, r in zs["tasks"].items()}
    return out


def measure_speed(dense: torch.nn.Module, model: torch.nn.Module) -> dict[str, float]:
    """Prefill / decode speed-up of ``model`` over ``dense`` (medians, one process, interleaved)."""
    res = compare_speed({"dense": dense, "compressed": model}, SpeedSettings(threads=1, **SPEED))
    return {k: float(v) for k, v in res["speedup"].items()}


def count_params(model: torch.nn.Module) -> int:
    """Distinct parameters (tied weights counted once)."""
    return sum(p.numel() for p in model.parameters())


def finetune_row(result: Any, name: str, tok: Any, ids: torch.Tensor, steps: int, limit: int) -> dict[str, Any]:
    """Save ``result``, LoRA-fine-tune the saved model as ``slimformer finetune DIR`` does (``steps`` steps on the
    calibration text), and measure the merged model."""
    s = SETUPS[name]
    cfg = sf.FinetuneConfig(steps=steps, **FINETUNE_RECIPE)
    with tempfile.TemporaryDirectory() as d:
        t0 = time.perf_counter()
        result.save(Path(d) / "compressed")
        res = sf.finetune(str(Path(d) / "compressed"), str(SHARED / s["calib"]), cfg, progress=False)
        row: dict[str, Any] = {"finetune_s": time.perf_counter() - t0, "finetune_steps": res.record["steps_done"]}
    row.update(measure_quality(res.model, tok, ids, s["eval_seqlen"], limit))
    return row


def run_method(name: str, method: str, ratio: float, tok: Any, calib: Any, ids: torch.Tensor, dense: torch.nn.Module,
               ft_steps: int, limit: int) -> list[dict[str, Any]]:
    """The row of ``method`` at ``ratio`` (and its "+ft" row): an ``error`` entry if the method fails."""
    s = SETUPS[name]
    base = {"method": method, "target": ratio}
    try:
        model = dense_model(name)
        t0 = time.perf_counter()
        data = calib if sf.methods.get_method(method).accepts_calibration else None  # PruneNet: calibration-free
        result = sf.compress(model, method_config(method, ratio), data, progress=False, tokenizer=tok)
        seconds = time.perf_counter() - t0
    except Exception as e:  # noqa: BLE001 -- one failing method must not end the leaderboard
        logger.exception("%s %s %.2f failed", name, method, ratio)
        return [{**base, "error": f"{type(e).__name__}: {e}"[:300]}]
    row = {**base, "removed": result.report["removed_fraction"], "params": count_params(result.model),
           "compress_s": seconds}
    if method in ("auto", "composite"):
        rec = result.report.get(method, {})  # auto: the candidate's label; composite: the slicing share
        row["chosen"] = str(rec.get("chosen", rec.get("chosen_split")))
    row.update(measure_quality(result.model, tok, ids, s["eval_seqlen"], limit))
    row.update(measure_speed(dense, result.model))
    logger.info("%s %s %.2f: %s", name, method, ratio, {k: row[k] for k in ("removed", "ppl", "compress_s")})
    rows = [row]
    if ft_steps > 0:
        ft = {**base, "variant": "ft", "removed": row["removed"], "params": row["params"],
              "compress_s": seconds, **{k: row[k] for k in ("prefill", "decode", "matmul_flops")}}
        try:
            ft.update(finetune_row(result, name, tok, ids, ft_steps, limit))
        except Exception as e:  # noqa: BLE001
            logger.exception("%s %s %.2f finetune failed", name, method, ratio)
            ft["error"] = f"finetune: {type(e).__name__}: {e}"[:300]
        rows.append(ft)
    return rows


# --------------------------------------------------------------------------------------- Torch-Pruning


def torch_pruning_version() -> str | None:
    """The installed torch-pruning version, or None."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("torch-pruning")
    except PackageNotFoundError:
        return None


def tp_prune(model: torch.nn.Module, width_ratio: float) -> None:
    """Torch-Pruning's LLM recipe (examples/LLMs/prune_llm.py): magnitude importance (L2 group norm,
    ``GroupMagnitudeImportance``; the recipe's ``GroupNormImportance`` is its older name),
    MetaPruner, heads and hidden width pruned by ``width_ratio``, lm_head ignored; then the recipe's
    config update."""
    import torch_pruning as tp

    cfg = model.config
    num_heads: dict[torch.nn.Module, int] = {}
    for n, m in model.named_modules():
        if n.endswith("self_attn"):
            num_heads[m.q_proj] = cfg.num_attention_heads
            num_heads[m.k_proj] = cfg.num_key_value_heads
            num_heads[m.v_proj] = cfg.num_key_value_heads
    gqa = cfg.num_attention_heads != cfg.num_key_value_heads
    example = torch.randint(0, cfg.vocab_size, (1, 16))
    pruner = tp.pruner.MetaPruner(
        model, example_inputs=example, importance=tp.importance.GroupMagnitudeImportance(p=2, group_reduction="mean"),
        global_pruning=False, pruning_ratio=width_ratio, ignored_layers=[model.lm_head], num_heads=num_heads,
        prune_num_heads=True, prune_head_dims=False, head_pruning_ratio=width_ratio, round_to=4,
        # transformers 5 returns a DynamicCache the tracer cannot walk: trace the logits only
        forward_fn=lambda m, x: m(x, use_cache=False).logits)
    for group in pruner.step(interactive=True):
        group.prune()
    cfg.hidden_size = model.lm_head.in_features
    for n, m in model.named_modules():
        if n.endswith("self_attn"):
            heads = m.q_proj.out_features // m.head_dim
            cfg.num_attention_heads = heads
            if not gqa:
                cfg.num_key_value_heads = heads
            m.num_key_value_groups = heads // (m.k_proj.out_features // m.head_dim)
        elif n.endswith("mlp"):
            cfg.intermediate_size = m.gate_proj.out_features


def tp_worker(name: str, ratio: float, limit: int, out: str) -> None:
    """Subprocess body: bisect Torch-Pruning's width ratio to ``ratio`` of parameters removed, measure, write JSON."""
    torch.set_num_threads(1)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s tp %(message)s", stream=sys.stderr)
    faulthandler.dump_traceback_later(int(os.environ.get("TP_DUMP_AFTER_S", TP_TIMEOUT_S - 30)), exit=False)
    tok, _, ids = load_setup(name)
    dense = dense_model(name)
    p0 = count_params(dense)
    lo, hi, best, t0 = 0.0, 0.6, None, time.perf_counter()
    for _ in range(6):  # width ratio -> removed fraction is monotone; a few probes reach the target within ~1%
        w = (lo + hi) / 2
        logger.info("pruning width ratio %.3f", w)
        model = dense_model(name)
        tp_prune(model, w)
        removed = 1 - count_params(model) / p0
        logger.info("width ratio %.3f removed %.4f", w, removed)
        if best is None or abs(removed - ratio) < abs(best[1] - ratio):
            best = (w, removed, model)
        if abs(removed - ratio) < 0.01:
            break
        lo, hi = (w, hi) if removed < ratio else (lo, w)
    seconds = time.perf_counter() - t0
    w, removed, model = best
    row = {"method": "torch-pruning", "target": ratio, "removed": removed, "params": count_params(model),
           "compress_s": seconds, "width_ratio": w, "heads": model.config.num_attention_heads,
           "hidden": model.config.hidden_size, "intermediate": model.config.intermediate_size}
    row.update(measure_quality(model, tok, ids, SETUPS[name]["eval_seqlen"], limit))
    row.update(measure_speed(dense, model))
    try:
        with tempfile.TemporaryDirectory() as d:
            model.save_pretrained(d)
            row["save"] = "ok"
    except Exception as e:  # noqa: BLE001 -- recorded, the row stands without a saved checkpoint
        row["save"] = f"{type(e).__name__}: {e}"[:200]
    Path(out).write_text(json.dumps(row) + "\n")


def hang_location(stderr: str) -> str:
    """The innermost Torch-Pruning frames of the faulthandler dump in ``stderr`` ("" if none)."""
    frames = [ln.strip() for ln in stderr.splitlines() if ln.strip().startswith("File ") and "torch_pruning" in ln]
    short = [f.split("site-packages/")[-1].replace('", line ', ":").replace('File "', "") for f in frames[:4]]
    return " <- ".join(short)


def run_torch_pruning(name: str, ratio: float, limit: int, timeout: int) -> dict[str, Any]:
    """Torch-Pruning's row at ``ratio``, run in a subprocess with a hard ``timeout`` (seconds)."""
    base = {"method": "torch-pruning", "target": ratio}
    version = torch_pruning_version()
    if version is None:
        return {**base, "error": "not installed (pip install torch-pruning)"}
    if SETUPS[name]["family"] != "llama":
        return {**base, "error": "not run: the recipe is for Llama-family models"}
    with tempfile.TemporaryDirectory() as d:
        out = Path(d) / "row.json"
        cmd = [sys.executable, __file__, "--tp-worker", name, str(ratio), str(limit), str(out)]
        # the stack dump is timed from the worker's start (after its imports): leave it a margin before the kill
        env = {**os.environ, "OMP_NUM_THREADS": "1", "TP_DUMP_AFTER_S": str(max(1, timeout - 30))}
        t0 = time.perf_counter()
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
        except subprocess.TimeoutExpired as e:
            err = e.stderr.decode(errors="replace") if isinstance(e.stderr, bytes) else (e.stderr or "")
            return {**base, "version": version, "timed_out": True,
                    "error": f"torch-pruning {version} hung: killed after {timeout} s, stack {timeout - 30} s into the run: "
                             + (hang_location(err) or "(no stack dump)")}
        if proc.returncode != 0 or not out.exists():
            lines = [ln for ln in proc.stderr.strip().splitlines() if ln.strip()]
            return {**base, "version": version,
                    "error": f"torch-pruning {version} failed (exit {proc.returncode}): " + " | ".join(lines[-2:])[:400]}
        row = json.loads(out.read_text())
        row["wall_s"] = time.perf_counter() - t0
        return {**row, "version": version}


# --------------------------------------------------------------------------------------- one model


def run_model(name: str, ratios: list[float], methods: list[str], ft_steps: int, limit: int,
              part: Path | None = None) -> dict[str, Any]:
    """Every method at every ratio on model ``name``: ``{"dense": ..., "rows": [...]}``.

    ``part``: rewrite this JSON file with the rows so far after every method (a record of a long run)."""
    tok, calib, ids = load_setup(name)
    dense = dense_model(name)
    s = SETUPS[name]
    t0 = time.perf_counter()
    res: dict[str, Any] = {"params": count_params(dense), "setup": s,
                           "dense": measure_quality(dense, tok, ids, s["eval_seqlen"], limit), "rows": []}
    res["eval_tokens"] = int(ids.numel())
    from slimformer.methods import METHODS

    for ratio in ratios:
        for method in methods:
            if method not in METHODS:
                res["rows"].append({"method": method, "target": ratio, "error": "not available"})
                continue
            res["rows"].extend(run_method(name, method, ratio, tok, calib, ids, dense, ft_steps, limit))
            if part is not None:
                part.write_text(json.dumps({**res, "seconds": time.perf_counter() - t0}, indent=1) + "\n")
    res["seconds"] = time.perf_counter() - t0
    if part is not None:
        part.write_text(json.dumps(res, indent=1) + "\n")
    return res


def run_units_parallel(args: argparse.Namespace, out: Path) -> dict[str, dict[str, Any]]:
    """Each (model, ratio) in its own subprocess, ``--jobs`` at a time (the largest model first), merged per model.

    The workers leave Torch-Pruning out; :func:`main` adds its rows afterwards."""
    flags = ["--finetune-steps", str(args.finetune_steps), "--zeroshot-limit", str(args.zeroshot_limit),
             "--no-torch-pruning"] + (["--methods", *args.methods] if args.methods else [])
    units = [(m, r) for m in sorted(args.models, key=lambda m: m != "opt-fixture") for r in args.ratios]
    parts = {u: out / f"leaderboard.{u[0]}.{u[1]}.part.json" for u in units}
    pending, running = list(units), []
    while pending or running:
        while pending and len(running) < args.jobs:
            unit = pending.pop(0)
            cmd = [sys.executable, __file__, "--models", unit[0], "--ratios", str(unit[1]), "--part",
                   str(parts[unit]), *flags]
            running.append((unit, subprocess.Popen(cmd, env={**os.environ, "OMP_NUM_THREADS": "1"})))
        time.sleep(2)
        for unit, proc in list(running):
            if proc.poll() is not None:
                running.remove((unit, proc))
                if proc.returncode != 0:
                    raise RuntimeError(f"the run of {unit} failed (exit {proc.returncode})")
    models = merge_parts([(name, path) for (name, _), path in parts.items()])
    for path in parts.values():
        path.unlink()
    return models


def merge_parts(parts: list[tuple[str, Path]]) -> dict[str, dict[str, Any]]:
    """The per-model results of the (model, ratio) part files ``parts``, rows in the order given."""
    models: dict[str, dict[str, Any]] = {}
    for name, path in parts:
        part = json.loads(path.read_text())
        if name not in models:
            models[name] = {**part, "rows": [], "seconds": 0.0}
        models[name]["rows"].extend(part["rows"])
        models[name]["seconds"] += part["seconds"]
    return models


def add_torch_pruning(res: dict[str, Any], ratios: list[float], limit: int) -> None:
    """Torch-Pruning's rows for every model in ``res`` (after a hang the remaining ratios are not run)."""
    for name, r in res["models"].items():
        hung: float | None = None
        for ratio in ratios:
            if hung is not None:  # it hangs building its dependency graph, before the ratio matters
                r["rows"].append({"method": "torch-pruning", "target": ratio, "error": f"not run: hung at {hung:.0%}"})
                continue
            r["rows"].append(run_torch_pruning(name, ratio, limit, TP_TIMEOUT_S))
            logger.info("%s torch-pruning %.2f: %s", name, ratio, r["rows"][-1].get("error", "ok"))
            hung = ratio if r["rows"][-1].get("timed_out") else None


# --------------------------------------------------------------------------------------- rendering


def _fmt(v: Any, spec: str) -> str:
    return "–" if v is None or (isinstance(v, float) and not math.isfinite(v)) else format(v, spec)


def label(row: dict[str, Any]) -> str:
    """A row's name: the method, "+ ft" for the fine-tuned variant, auto/composite's choice."""
    text = row["method"] + (" + ft" if row.get("variant") == "ft" else "")
    if row.get("chosen") not in (None, "None") and row.get("variant") != "ft":
        text += f" ({row['chosen']})" if row["method"] == "auto" else f" (slicing share {row['chosen']})"
    return text


def short_error(text: str, limit: int = 100) -> str:
    """An error message cut to one table cell (the JSON keeps it whole)."""
    text = text.replace("|", "/").replace("\n", " ")
    return text if len(text) <= limit else text[: limit - 1] + "…"


def render_table(rows: list[dict[str, Any]], dense: dict[str, Any]) -> list[str]:
    """One Markdown table (one ratio) of ``rows``."""
    lines = ["| method | removed | ppl | zero-shot avg | compress s | ft s | prefill × | decode × |",
             "|---|---:|---:|---:|---:|---:|---:|---:|",
             f"| dense | 0 | {_fmt(dense['ppl'], '.3f')} | {_fmt(dense.get('zeroshot_avg'), '.3f')} | – | – | 1 | 1 |"]
    ok = [r for r in rows if "error" not in r]
    best = min((r["ppl"] for r in ok), default=None)
    for r in rows:
        if "error" in r:
            lines.append(f"| {label(r)} | – | {short_error(r['error'])} | | | | | |")
            continue
        ppl = _fmt(r["ppl"], ".3f")
        ppl = f"**{ppl}**" if r["ppl"] == best else ppl
        lines.append(f"| {label(r)} | {r['removed']:.1%} | {ppl} | {_fmt(r.get('zeroshot_avg'), '.3f')} | "
                     f"{_fmt(r.get('compress_s'), '.1f')} | {_fmt(r.get('finetune_s'), '.1f')} | "
                     f"{_fmt(r.get('prefill'), '.2f')} | {_fmt(r.get('decode'), '.2f')} |")
    return lines


def best_rows(res: dict[str, Any]) -> dict[str, dict[float, dict[str, Any]]]:
    """Per model and target: the row with the lowest perplexity (with and without fine-tuning)."""
    out: dict[str, dict[float, dict[str, Any]]] = {}
    for name, r in res["models"].items():
        for ratio in res["settings"]["ratios"]:
            ok = [x for x in r["rows"] if x["target"] == ratio and "error" not in x]
            plain = [x for x in ok if x.get("variant") != "ft"]
            ft = [x for x in ok if x.get("variant") == "ft"]
            out.setdefault(name, {})[ratio] = {
                "best": min(plain, key=lambda x: x["ppl"]) if plain else None,
                "best_ft": min(ft, key=lambda x: x["ppl"]) if ft else None}
    return out


def summary_table(res: dict[str, Any]) -> str:
    """The README summary: best method (perplexity) per model and ratio, without and with fine-tuning."""
    lines = ["| model | removed (target) | dense ppl | best method | ppl | best with fine-tune | ppl |",
             "|---|---:|---:|---|---:|---|---:|"]
    for name, per in best_rows(res).items():
        dense = res["models"][name]["dense"]["ppl"]
        for ratio, b in per.items():
            p, f = b["best"], b["best_ft"]
            lines.append(f"| {name} | {ratio:.0%} | {dense:.3f} | {label(p) if p else '–'} | "
                         f"{_fmt(p and p['ppl'], '.3f')} | {label(f) if f else '–'} | {_fmt(f and f['ppl'], '.3f')} |")
    return "\n".join(lines)


def render(res: dict[str, Any]) -> str:
    """The Markdown tables of docs/leaderboard.md (one section per model, one table per ratio)."""
    st = res["settings"]
    lines = [f"Measured {res['date']}, torch {res['torch']}, transformers {res['transformers']}, "
             f"one CPU thread; wall time {res['seconds'] / 60:.1f} min. Settings: ratios {st['ratios']}, "
             f"fine-tune {st['finetune_steps']} steps, zero-shot limit {st['zeroshot_limit']} per task, "
             f"DISP {st['disp_steps']} steps, speed {st['speed']}.\n",
             "### Summary (best perplexity per model and ratio)\n", summary_table(res), ""]
    for name, r in res["models"].items():
        s = r["setup"]
        lines.append(f"### {name}\n")
        lines.append(f"{r['params']:,} parameters; calibration {s['samples']} × {s['seqlen']} tokens of "
                     f"`{s['calib']}` (seed {CALIB_SEED}); perplexity on the first {r['eval_tokens']:,} tokens of "
                     f"`{s['eval']}` (windows of {s['eval_seqlen']}).\n")
        for ratio in st["ratios"]:
            lines.append(f"#### {name}: {ratio:.0%} of parameters removed\n")
            lines.extend(render_table([x for x in r["rows"] if x["target"] == ratio], r["dense"]))
            lines.append("")
    return "\n".join(lines)


def plot(res: dict[str, Any], path: Path) -> bool:
    """Perplexity vs removed fraction per method, one panel per model; False if matplotlib is missing."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        logger.warning("matplotlib is not installed: no plot")
        return False
    models = list(res["models"])
    fig, axes = plt.subplots(1, len(models), figsize=(6.5 * len(models), 4.8), squeeze=False)
    for ax, name in zip(axes[0], models):
        r = res["models"][name]
        series: dict[str, list[tuple[float, float]]] = {}
        for x in r["rows"]:
            if "error" not in x:
                series.setdefault(label({**x, "chosen": None}), []).append((x["removed"], x["ppl"]))
        bases = sorted({lab.removesuffix(" + ft") for lab in series})
        colors = {b: plt.get_cmap("tab20")(i % 20) for i, b in enumerate(bases)}
        for lab, pts in sorted(series.items()):  # a method and its "+ ft" share a colour; "+ ft" dashed
            pts.sort()
            ft = lab.endswith(" + ft")
            ax.plot(*zip(*pts), marker="s" if ft else "o", linestyle="--" if ft else "-",
                    color=colors[lab.removesuffix(" + ft")], label=lab)
        ax.axhline(r["dense"]["ppl"], color="k", linewidth=0.8, label="dense")
        ax.set_yscale("log")
        ax.set_xlabel("fraction of parameters removed")
        ax.set_ylabel("perplexity (log scale)")
        ax.set_title(name)
        ax.legend(fontsize=6, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def write_outputs(res: dict[str, Any], out: Path) -> None:
    """docs/leaderboard.json, the generated part of leaderboard.md, leaderboard.png."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "leaderboard.json").write_text(json.dumps(res, indent=2) + "\n")
    res["plot"] = plot(res, out / "leaderboard.png")
    md = out / "leaderboard.md"
    head, marker = HEADER, "<!-- generated by benchmarks/leaderboard.py below; edit the script, not this part -->"
    if md.exists() and marker in md.read_text():
        head = md.read_text().split(marker)[0].rstrip() + "\n\n"
    md.write_text(head + marker + "\n\n" + render(res) + "\n")


HEADER = """# Leaderboard: every method at 20 / 30 / 40 % of parameters removed

Reproduce: `python benchmarks/leaderboard.py` (writes docs/leaderboard.json, .md, .png).

"""


# --------------------------------------------------------------------------------------- main


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=list(SETUPS), choices=list(SETUPS))
    ap.add_argument("--ratios", nargs="+", type=float, default=DEFAULT_RATIOS)
    ap.add_argument("--methods", nargs="+", default=None, help="default: every registered method")
    ap.add_argument("--finetune-steps", type=int, default=DEFAULT_FINETUNE_STEPS, help="0: no '+ ft' rows")
    ap.add_argument("--zeroshot-limit", type=int, default=DEFAULT_ZEROSHOT_LIMIT, help="0: no zero-shot")
    ap.add_argument("--no-torch-pruning", action="store_true")
    ap.add_argument("--out", default=str(REPO / "docs"))
    ap.add_argument("--jobs", type=int, default=1, help="(model, ratio) runs in parallel, one process each")
    ap.add_argument("--part", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--torch-pruning-only", action="store_true",
                    help="re-run only the Torch-Pruning rows into OUT/leaderboard.json, then render")
    ap.add_argument("--render", action="store_true", help="only re-render OUT/leaderboard.md and .png from the JSON")
    ap.add_argument("--tp-worker", nargs=4, metavar=("MODEL", "RATIO", "LIMIT", "OUT"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.tp_worker:
        name, ratio, limit, out = args.tp_worker
        tp_worker(name, float(ratio), int(limit), out)
        return
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    for noisy in ("lm_eval", "lm-eval", "httpx", "datasets"):
        logging.getLogger(noisy).setLevel(logging.ERROR)
    out = Path(args.out)
    if args.torch_pruning_only:
        torch.set_num_threads(1)
        res = json.loads((out / "leaderboard.json").read_text())
        for r in res["models"].values():
            r["rows"] = [x for x in r["rows"] if x["method"] != "torch-pruning"]
        add_torch_pruning(res, res["settings"]["ratios"], res["settings"]["zeroshot_limit"])
        res["settings"]["torch_pruning"] = torch_pruning_version()
    if args.render or args.torch_pruning_only:
        res = res if args.torch_pruning_only else json.loads((out / "leaderboard.json").read_text())
        write_outputs(res, out)
        print(summary_table(res))
        return
    torch.set_num_threads(1)
    import transformers

    t0 = time.perf_counter()
    methods = method_names(args.methods)
    res: dict[str, Any] = {
        "date": time.strftime("%Y-%m-%d"), "command": " ".join(["python", "benchmarks/leaderboard.py", *sys.argv[1:]]),
        "torch": torch.__version__, "transformers": transformers.__version__,
        "settings": {"ratios": args.ratios, "methods": methods, "finetune_steps": args.finetune_steps,
                     "finetune_recipe": FINETUNE_RECIPE, "zeroshot_limit": args.zeroshot_limit, "tasks": TASKS,
                     "disp_steps": DISP_STEPS, "speed": SPEED, "calib_seed": CALIB_SEED,
                     "torch_pruning": None if args.no_torch_pruning else torch_pruning_version()},
        "models": {}}
    if args.part:  # a worker of --jobs: one model, its JSON only
        run_model(args.models[0], args.ratios, methods, args.finetune_steps, args.zeroshot_limit, part=Path(args.part))
        return
    if args.jobs > 1:
        out.mkdir(parents=True, exist_ok=True)
        res["models"] = run_units_parallel(args, out)
    else:
        for name in args.models:
            res["models"][name] = run_model(name, args.ratios, methods, args.finetune_steps, args.zeroshot_limit)
    if not args.no_torch_pruning:
        add_torch_pruning(res, args.ratios, args.zeroshot_limit)
    res["seconds"] = time.perf_counter() - t0
    write_outputs(res, out)
    print(summary_table(res))


if __name__ == "__main__":
    main()
