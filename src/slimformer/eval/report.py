"""Render result JSON files (compress / eval / bench) into Markdown tables and PNG plots.

Inputs are the JSON files slimformer writes: ``slimformer_report.json`` of a
compression, ``slimformer eval --json``, ``slimformer bench --json``. Eval and
bench results carry a ``"compression"`` block (method, removed fraction) when the
evaluated model is a slimformer output, which is what places them on the x axis.

Plots (matplotlib, Agg backend):
* ``ppl_vs_removed.png``: perplexity vs. removed-parameter fraction, one line per result series (name without its trailing number, else the method);
* ``widths_<n>.png``: per-layer residual widths of a compression plan;
* ``speedup_vs_removed.png``: measured prefill/decode speed-up vs. removed fraction,
  with the speed-up the matmul FLOPs predict (dense FLOPs / compressed FLOPs).
"""

from __future__ import annotations

import json
import logging
import re
from collections import defaultdict
from pathlib import Path
from typing import Any

logger = logging.getLogger("slimformer.eval.report")


def classify(result: dict[str, Any]) -> str:
    """``"compress"``, ``"eval"`` or ``"bench"``; ValueError for anything else."""
    if "params_before" in result and "layers" in result:
        return "compress"
    if "ppl" in result or "zero_shot" in result:
        return "eval"
    if "models" in result and "settings" in result:
        return "bench"
    raise ValueError("not a slimformer compress/eval/bench result (unrecognised JSON keys)")


def load_results(paths: list[str | Path]) -> dict[str, list[tuple[str, dict[str, Any]]]]:
    """Read and classify result files; errors name the offending file."""
    if not paths:
        raise ValueError("no result files given")
    groups: dict[str, list[tuple[str, dict[str, Any]]]] = defaultdict(list)
    for p in map(Path, paths):
        if not p.is_file():
            raise FileNotFoundError(f"result file not found: {p}")
        try:
            data = json.loads(p.read_text())
        except json.JSONDecodeError as exc:
            raise ValueError(f"{p} is not valid JSON: {exc}") from exc
        try:
            groups[classify(data)].append((p.stem if p.name != "slimformer_report.json" else p.parent.name, data))
        except ValueError as exc:
            raise ValueError(f"{p}: {exc}") from exc
    return groups


def _label(data: dict[str, Any]) -> tuple[str, float]:
    comp = data.get("compression")
    if not comp:
        return "dense", 0.0
    return str(comp.get("method")), float(comp.get("removed_fraction", 0.0))


def _series(name: str, data: dict[str, Any]) -> str:
    """Line a result belongs to: its name without a trailing number (``stories-fasp-mlp-0.2`` ->
    ``stories-fasp-mlp``), so models and method variants get their own lines; else the method."""
    method, _ = _label(data)
    if method == "dense":
        return "dense"
    stem = re.sub(r"[-_]?\d+(?:\.\d+)?$", "", name)
    return stem if stem and stem != name else method


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)] + ["| " + " | ".join(r) + " |" for r in rows]


def _plot_ppl(evals: list[tuple[str, dict[str, Any]]], out: Path) -> Path | None:
    import matplotlib.pyplot as plt

    series: dict[str, list[tuple[float, float]]] = defaultdict(list)
    for name, d in evals:
        if "ppl" in d:
            _, removed = _label(d)
            series[_series(name, d)].append((removed, d["ppl"]))
    if not series:
        return None
    fig, ax = plt.subplots(figsize=(7.5 if len(series) > 5 else 6, 4))
    if len(series) > 10:  # the default cycle repeats after 10 colours
        ax.set_prop_cycle(color=plt.get_cmap("tab20").colors)
    for method, pts in sorted(series.items()):
        pts.sort()
        style = "k*" if method == "dense" else "o-"
        ax.plot([100 * x for x, _ in pts], [y for _, y in pts], style, label=method, markersize=9 if method == "dense" else 5)
    ax.set_xlabel("parameters removed (%)")
    ax.set_ylabel("perplexity")
    ax.set_yscale("log")
    ax.grid(True, which="both", alpha=0.3)
    if len(series) > 5:
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    else:
        ax.legend()
    ax.set_title("Perplexity vs. removed parameters")
    fig.tight_layout()
    path = out / "ppl_vs_removed.png"
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def _plot_widths(name: str, rep: dict[str, Any], out: Path, index: int) -> Path:
    import matplotlib.pyplot as plt

    layers = rep["layers"]
    xs = list(range(len(layers)))
    fig, ax = plt.subplots(figsize=(7.5, 3.5))
    w = 0.27
    ax.bar([x - w for x in xs], [l["d_in"] for l in layers], w, label="d_in (attention)")
    ax.bar(xs, [l["d_mid"] if l["d_mid"] is not None else l["d_in"] for l in layers], w, label="d_mid (MLP in)")
    ax.bar([x + w for x in xs], [l["d_out"] for l in layers], w, label="d_out")
    full = rep.get("full_width") or max(max(l["d_in"], l["d_out"]) for l in layers)
    ax.axhline(full, color="k", lw=0.8, ls="--", label="original width")
    ax.set_xlabel("layer")
    ax.set_ylabel("residual width")
    ax.set_xticks(xs)
    ax.set_title(f"{rep.get('method')} widths: {name}")
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.tight_layout()
    path = out / f"widths_{index}.png"
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def flop_speedup(speedup: dict[str, Any]) -> float | None:
    """The speed-up the matmul FLOPs predict (dense / compressed) from a bench ``speedup`` block;
    reads ``matmul_flops`` and, in files written before it, the inverse ``matmul_flop_ratio``."""
    if "matmul_flops" in speedup:
        return float(speedup["matmul_flops"])
    if speedup.get("matmul_flop_ratio"):
        return 1.0 / float(speedup["matmul_flop_ratio"])
    return None


def _plot_speedup(benches: list[tuple[str, dict[str, Any]]], out: Path) -> Path | None:
    import matplotlib.pyplot as plt

    pts = []
    for _, d in benches:
        if "speedup" in d:
            _, removed = _label(d)
            sp = d["speedup"]
            flops = flop_speedup(sp)
            pts.append((removed, sp["prefill"], sp["decode"], float("nan") if flops is None else flops))
    if not pts:
        return None
    pts.sort()
    fig, ax = plt.subplots(figsize=(6, 4))
    xs = [100 * p[0] for p in pts]
    ax.plot(xs, [p[1] for p in pts], "o-", label="prefill speed-up")
    ax.plot(xs, [p[2] for p in pts], "s-", label="decode speed-up")
    ax.plot(xs, [p[3] for p in pts], "k--", label="expected from matmul FLOPs")
    ax.axhline(1.0, color="gray", lw=0.8)
    ax.set_xlabel("parameters removed (%)")
    ax.set_ylabel("speed-up vs. dense (x)")
    ax.grid(True, alpha=0.3)
    ax.legend()
    ax.set_title("Measured speed-up vs. removed parameters")
    fig.tight_layout()
    path = out / "speedup_vs_removed.png"
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def render_report(paths: list[str | Path], out_dir: str | Path) -> Path:
    """Write ``report.md`` and the PNG plots into ``out_dir``; returns the Markdown path."""
    import matplotlib

    matplotlib.use("Agg")
    groups = load_results(paths)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    md = ["# slimformer report", ""]
    evals = groups.get("eval", [])
    if evals:
        md += ["## Quality", ""]
        rows = []
        for name, d in evals:
            method, removed = _label(d)
            zs = d.get("zero_shot", {}) or {}
            rows.append([name, method, f"{100 * removed:.1f}%",
                         f"{d['ppl']:.3f}" if "ppl" in d else "-", str(d.get("seqlen", "-")),
                         f"{d.get('tokens', 0):,}" if "tokens" in d else "-",
                         f"{zs['average']:.4f}" if "average" in zs else "-"])
        md += _table(["result", "method", "params removed", "ppl", "seqlen", "tokens", "zero-shot avg"], rows) + [""]
        plot = _plot_ppl(evals, out)
        if plot:
            md += [f"![perplexity vs removed]({plot.name})", ""]
    comps = groups.get("compress", [])
    if comps:
        md += ["## Compression runs", ""]
        rows = [[name, str(r.get("method")), f"{r['params_before']:,}", f"{r['params_after']:,}",
                 f"{100 * r['removed_fraction']:.2f}%", f"{r.get('seconds', 0):.1f}", f"{r.get('peak_rss_mb', 0):.0f}"]
                for name, r in comps]
        md += _table(["run", "method", "params before", "params after", "removed", "seconds", "peak RSS MB"], rows) + [""]
        for i, (name, r) in enumerate(comps):
            md += [f"![widths {name}]({_plot_widths(name, r, out, i).name})", ""]
    benches = groups.get("bench", [])
    if benches:
        md += ["## Speed", ""]
        rows = []
        for name, d in benches:
            _, removed = _label(d)
            sp = d.get("speedup", {})
            flops = flop_speedup(sp)
            rows.append([name, f"{100 * removed:.1f}%", f"{sp.get('prefill', float('nan')):.3f}",
                         f"{sp.get('decode', float('nan')):.3f}", "-" if flops is None else f"{flops:.3f}"])
        md += _table(["result", "params removed", "prefill x", "decode x", "expected x (matmul FLOPs)"], rows) + [""]
        plot = _plot_speedup(benches, out)
        if plot:
            md += [f"![speed-up vs removed]({plot.name})", ""]
    path = out / "report.md"
    path.write_text("\n".join(md) + "\n")
    return path
