"""Equal-parameter rows next to each paper's own ratio definition (docs/ratios.md, docs/ratios.json).

Every method here is compressed by ``target_params``: the fraction of *all* the model's
parameters removed (embeddings, the head and every shortcut matrix counted; an untied head
that SliceGPT's fusion creates counts as added). The papers state their ratios differently,
so a "30%" in a paper is not a "30%" here. For every compressed model this script measures,
from the compressed model's own structure (its ``layers`` table and its parameter tensors,
never from the config):

* ``all``: fraction of all parameters removed (this library's definition);
* ``width``: fraction of the hidden width ``d`` sliced, ``1 - k/d`` averaged over the
  2L residual points every block reads (attention input ``d_in``, MLP input ``d_mid``);
  SliceGPT's "slicing" / DOTResize's width reduction;
* ``block``: fraction of the decoder blocks' parameters removed (attention + MLP linear
  weights and biases, plus SliceGPT's shortcut matrices where present; norms, embeddings,
  positions and the head excluded); MoDeGPT's / DISP's / FASP's compression rate;
* ``ffn``: fraction of the MLP (FFN) parameters removed; PruneNet's ratio.

    python benchmarks/ratios.py [--models stories260k opt-fixture] [--targets 0.2 0.3]
    python benchmarks/ratios.py --render      # docs/ratios.md from docs/ratios.json
"""

from __future__ import annotations

import argparse
import copy
import json
import re
import time
from typing import Any, Callable

import torch
from torch import nn

import slimformer as sf
from common import REPO, SETUPS, eval_ids, eval_ppl, load_real  # benchmarks/common.py

OUT_JSON = REPO / "docs" / "ratios.json"
OUT_MD = REPO / "docs" / "ratios.md"


#: method -> (config factory at a target, which ratio its paper reports, where that definition is stated)
METHODS: dict[str, tuple[Callable[[float], Any], str, str]] = {
    "slicegpt": (lambda t: sf.SliceGPTConfig(target_params=t), "width",
                 "SliceGPT's \"slicing\" is the fraction of the embedding dimension d deleted (paper §3-4, Table 1; "
                 "METHODS.md: '\"sparsity\" only refers to d, so far fewer parameters go')"),
    "fasp": (lambda t: sf.FASPConfig(target_params=t, attention="heads"), "block",
             "FASP prunes only inside the blocks (interlinked columns/rows, METHODS.md); its pruning ratio is "
             "taken over the pruned layers' parameters, embeddings and head excluded (the abstract does not "
             "define it: unverified)"),
    "modegpt": (lambda t: sf.MoDeGPTConfig(target_params=t), "block",
                "MoDeGPT's \"25-30% compression rates\" (abstract) are the mean module sparsity phi_avg of the "
                "global allocation (§3.3, METHODS.md), applied to each block's MLP, QK and VO modules: the blocks' "
                "parameters, embeddings and head excluded (paper Table: unverified)"),
    "dotresize": (lambda t: sf.DOTResizeConfig(target_params=t), "width",
                  "DOTResize reduces the hidden (residual) width d, SliceGPT-style (METHODS.md; method section "
                  "unverified): its ratio is the fraction of d removed"),
    "prunenet": (lambda t: sf.PruneNetConfig(target_params=t), "ffn",
                 "PruneNet keeps int((1 - ratio) * I) FFN rows per layer (prunenet code, METHODS.md): the fraction "
                 "of FFN parameters removed; attention untouched"),
    "disp": (lambda t: sf.DISPConfig(target_params=t, steps=100), "block",
             "DISP's budget r/p is the kept fraction of attention + MLP parameters (loss lam*|log(r/p)|, "
             "official code; METHODS.md): the blocks' parameters, embeddings and head excluded"),
    "magnitude": (lambda t: sf.MagnitudeConfig(target_params=t), "block",
                  "baseline on FASP's structures (MLP channels + value channels per head): reported like FASP"),
}

RATIO_NAMES = {"all": "all parameters", "width": "hidden width d", "block": "decoder-block parameters",
               "ffn": "FFN parameters"}

_BLOCK = re.compile(r"(^|\.)layers\.\d+\.")
_FFN = re.compile(r"\.(mlp|fc1|fc2)\.")


def param_counts(model: nn.Module) -> dict[str, int]:
    """Parameter counts by the groups the ratios use (shared tensors counted once)."""
    seen: set[int] = set()
    out = {"all": 0, "block": 0, "ffn": 0}
    for name, p in model.named_parameters(remove_duplicate=False):
        if id(p) in seen:
            continue
        seen.add(id(p))
        out["all"] += p.numel()
        if _BLOCK.search(name) and "norm" not in name:
            out["block"] += p.numel()
            if _FFN.search(name):
                out["ffn"] += p.numel()
    return out


def width_ratio(layers: list[dict[str, Any]], d: int) -> float:
    """Mean of ``1 - k/d`` over the residual points every block reads (``d_in``, ``d_mid``)."""
    points = [row[k] for row in layers for k in ("d_in", "d_mid")]
    return sum(1.0 - k / d for k in points) / len(points)


def ratios(before: dict[str, int], model: nn.Module, layers: list[dict[str, Any]], d: int) -> dict[str, float]:
    """Every ratio of a compressed ``model`` against the dense counts ``before``."""
    after = param_counts(model)
    out = {k: 1.0 - after[k] / before[k] for k in ("all", "block", "ffn")}
    out["width"] = width_ratio(layers, d)
    return out


def run(name: str, targets: list[float], methods: list[str]) -> dict[str, Any]:
    base, tok, calib = load_real(name)
    ids = eval_ids(name, tok)

    def ppl(m: nn.Module) -> float:
        return eval_ppl(m, tok, ids, name)

    before = param_counts(base)
    d = int(base.config.hidden_size)
    res: dict[str, Any] = {"params": before, "hidden": d, "dense_ppl": ppl(base), "rows": []}
    for target in targets:
        for method in methods:
            factory, paper, _ = METHODS[method]
            model = copy.deepcopy(base)
            t0 = time.perf_counter()
            row: dict[str, Any] = {"method": method, "target": target, "paper_ratio": paper}
            try:
                data = None if method == "prunenet" else calib  # PruneNet is calibration-free
                result = sf.compress(model, factory(target), data, progress=False)
            except ValueError as exc:
                row["error"] = str(exc).splitlines()[0]
            else:
                rep = result.report
                row.update(ratios(before, result.model, rep["layers"], d), report_removed=rep["removed_fraction"],
                           seconds=round(time.perf_counter() - t0, 1), ppl=ppl(result.model))
            res["rows"].append(row)
            print(name, json.dumps(row), flush=True)
    return res


def render(data: dict[str, Any]) -> str:
    lines = ["# Our ratio vs each paper's ratio",
             "",
             "Generated by `python benchmarks/ratios.py` "
             f"({data['date']}, torch {data['torch']}, 1 thread, other jobs on the machine). Every row is "
             "compressed at `target_params` = the **fraction of all parameters removed** (this library's "
             "definition, column *all*: embeddings, positions, the head and SliceGPT's shortcut matrices "
             "counted; SliceGPT's untied head counts as added). The other columns measure the same compressed "
             "model the way the papers state their ratios, from its structure (`layers` table, parameter "
             "tensors):",
             "",
             "* *width*: fraction of the hidden width d sliced, `1 - k/d` averaged over the residual points "
             "each block reads (attention input, MLP input);",
             "* *block*: fraction of the decoder blocks' parameters removed (attention + MLP linears, plus "
             "SliceGPT's shortcut matrices, which count as block parameters and make the block ratio smaller; "
             "norms, embeddings, positions and head excluded);",
             "* *ffn*: fraction of the MLP parameters removed.",
             "",
             "**paper's ratio** is the column matching the method's paper (bold in the row); compare a paper's "
             "headline \"x% compression\" with that column, and our equal-parameter tables with *all*. "
             "Perplexity on the evaluation text (lower is better). DISP trains its hypernetwork for only "
             "100 steps here (the ratio is the point, not its quality).",
             "",
             "Paper definitions used:",
             ""]
    for method, (_, paper, why) in METHODS.items():
        lines.append(f"* **{method}** ({RATIO_NAMES[paper]}): {why}.")
    for name, res in data["models"].items():
        p = res["params"]
        lines += ["", f"## {name} (d = {res['hidden']}; {p['all']:,} parameters, {p['block']:,} in the blocks, "
                      f"{p['ffn']:,} in the MLPs; dense ppl {res['dense_ppl']:.3f})", "",
                  "| target (all) | method | all | width | block | ffn | paper's ratio | ppl | seconds |",
                  "|---|---|---|---|---|---|---|---|---|"]
        for r in res["rows"]:
            if "error" in r:
                lines.append(f"| {r['target']:.2f} | {r['method']} | error: {r['error']} | | | | | | |")
                continue
            cells = {k: f"{r[k]:.3f}" for k in ("all", "width", "block", "ffn")}
            cells[r["paper_ratio"]] = f"**{cells[r['paper_ratio']]}**"
            lines.append(f"| {r['target']:.2f} | {r['method']} | {cells['all']} | {cells['width']} | "
                         f"{cells['block']} | {cells['ffn']} | {r[r['paper_ratio']]:.1%} "
                         f"({RATIO_NAMES[r['paper_ratio']]}) | {r['ppl']:.3f} | {r['seconds']:.0f} |")
    lines += ["", "## Reading", "",
              "The paper's headline ratio of the same compressed model, per method (min-max over the models and "
              "budgets above):", ""]
    for method, (_, paper, _) in METHODS.items():
        pairs = [(r["all"], r[paper]) for res in data["models"].values() for r in res["rows"]
                 if r["method"] == method and "error" not in r]
        if not pairs:
            continue
        f = [b / a for a, b in pairs]
        lines.append(f"* **{method}**: {RATIO_NAMES[paper]} removed = {min(f):.2f}-{max(f):.2f} x the fraction of "
                     f"all parameters removed (e.g. {pairs[-1][0]:.1%} of all parameters = {pairs[-1][1]:.1%} of "
                     f"the {RATIO_NAMES[paper]}).")
    every = all(r[METHODS[r["method"]][1]] > r["all"] for res in data["models"].values() for r in res["rows"]
                if "error" not in r)
    lead = ("So at equal parameters, a paper's \"x%\" is a larger number than ours for every row here: " if every
            else "So at equal parameters a paper's \"x%\" is usually not ours: ")
    lines += ["", lead + "a width ratio counts only d (the vocabulary-sized embedding and head, which slicing keeps "
              "or grows, are a large share of these small models), a block or FFN ratio leaves the embeddings and "
              "head out of the denominator. Compare papers with each other only after converting to one definition."]
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="+", default=list(SETUPS), choices=list(SETUPS))
    ap.add_argument("--targets", nargs="+", type=float, default=[0.2, 0.3])
    ap.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--render", action="store_true", help="rewrite docs/ratios.md from docs/ratios.json")
    args = ap.parse_args()
    if args.render:
        OUT_MD.write_text(render(json.loads(OUT_JSON.read_text())))
        return
    torch.set_num_threads(args.threads)
    data = {"date": time.strftime("%Y-%m-%d"), "torch": torch.__version__, "models": {}}
    for name in args.models:
        data["models"][name] = run(name, args.targets, args.methods)
    OUT_JSON.write_text(json.dumps(data, indent=2) + "\n")
    OUT_MD.write_text(render(data))
    print(render(data))


if __name__ == "__main__":
    main()
