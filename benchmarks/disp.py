"""Reproduce docs/disp.md: DISP-LLM vs SliceGPT, FASP and MoDeGPT at equal removed parameters.

Every method gets the same budget through ``target_params`` (exact parameter count); the
evaluation text, windows and calibration windows are those of ``benchmarks/fasp.py``
(stories260k: TinyStories train prefix for calibration, valid prefix for perplexity;
opt-fixture: WikiText-2 valid / test). DISP trains its hypernetwork on the calibration
windows on the CPU (``--steps`` steps of ``--batch`` windows); the row records the
training steps, the training seconds, the final LM loss and the logit offset that made
the budget exact.

    python benchmarks/disp.py [--threads 1] [--fractions 0.2 0.4] [--steps 400] [--models stories260k]   # docs/disp.json
    python benchmarks/disp.py --render                                              # Markdown tables

Held-out study (docs/disp.md, "Reference variant and step scaling"), one process per variant:

    python benchmarks/disp.py --study library      # lr chosen on held-out calibration windows, then 300/1k/3k steps
    python benchmarks/disp.py --study reference

The study splits stories260k's calibration windows (``split_calibration``: the last
``--holdout`` of them held out), trains DISP at ``--study-fraction`` on the rest for every
``--lrs`` value (``--lr-steps`` steps), picks the learning rate with the lowest held-out
perplexity and reports the evaluation perplexity of that choice only; then it trains with
that learning rate to each of ``--scaling-steps`` (one run resumed from its checkpoint: step
``t`` draws the same data and noise either way, so each point equals a fresh run of that
length) and reports held-out and evaluation perplexity per point.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import torch

import slimformer as sf

sys.path.insert(0, str(Path(__file__).resolve().parent))
from fasp import SETUPS, SHARED, ppl_table, run_model as fasp_run_model  # noqa: E402  (same data, windows and evaluation as the FASP benchmark)

REPO = Path(__file__).resolve().parents[1]
STUDY_MODEL = "stories260k"


def methods(steps: int, batch: int, seqlen: int | None, lam: float, lr: float) -> dict[str, Callable[[float], Any]]:
    return {
        "disp": lambda f: sf.DISPConfig(target_params=f, steps=steps, batch=batch, seqlen=seqlen, lam=lam,
                                        learning_rate=lr),
        "slicegpt": lambda f: sf.SliceGPTConfig(target_params=f),
        "fasp": lambda f: sf.FASPConfig(target_params=f),
        "fasp (heads)": lambda f: sf.FASPConfig(target_params=f, attention="heads"),
        "modegpt (global)": lambda f: sf.MoDeGPTConfig(target_params=f),
    }


def disp_fields(method: str, rep: dict[str, Any]) -> dict[str, Any]:
    """The training/budget fields of a DISP row (empty for the other methods)."""
    if method != "disp":
        return {}
    return dict(steps=rep["steps"], train_seconds=rep["train_seconds"], final_lm_loss=rep["final_lm_loss"],
                final_r=rep["final_r"], p=rep["p"], budget_adjustment=rep["budget_adjustment"],
                kept_widths=rep["kept_widths"], config={k: v for k, v in rep["config"].items() if k != "checkpoint"})


def run_model(name: str, fractions: list[float], table: dict[str, Callable[[float], Any]]) -> dict[str, Any]:
    return fasp_run_model(name, fractions, table, extra=disp_fields)


def tables(data: dict[str, Any]) -> str:
    """Markdown tables (one per model) from the JSON this script writes."""
    lines = []
    for name, res in data["models"].items():
        lines += ppl_table(name, res)
        lines += ["", "DISP training (per target): steps, training seconds, mean LM loss of the last 20 steps, "
                  "kept fraction r of attention + MLP parameters at the last step vs its target p, and the "
                  "global logit offset that made the budget exact (removed fraction before -> after).", "",
                  "| target | steps | train s | final LM loss | r / p | offset | removed before -> after |",
                  "|---|---|---|---|---|---|---|"]
        for r in res["rows"]:
            if r["method"] != "disp" or "error" in r:
                continue
            b = r["budget_adjustment"]
            lines.append(f"| {r['target']:.2f} | {r['steps']} | {r['train_seconds']:.1f} | {r['final_lm_loss']:.3f} | "
                         f"{r['final_r']:.3f} / {r['p']:.3f} | {b['logit_offset']:+.3f} | "
                         f"{b['removed_before_offset']:.3f} -> {r['removed']:.3f} |")
        lines += ["", "DISP kept widths per block (attn_in / attn_out / mlp_in / mlp_mid / mlp_out) at the highest target:",
                  ""]
        top = [r for r in res["rows"] if r["method"] == "disp" and "error" not in r]
        if top:
            r = max(top, key=lambda r: r["target"])
            for i, w in enumerate(r["kept_widths"]):
                lines.append(f"* block {i}: {w['attn_in']} / {w['attn_out']} / {w['mlp_in']} / {w['mlp_mid']} / "
                             f"{w['mlp_out']}")
        lines.append("")
    return "\n".join(lines) + "\n"


# ----- held-out study: learning rate on held-out calibration windows, then step scaling ---------------------
def study_data(holdout: float) -> dict[str, Any]:
    """stories260k, its calibration windows split into train / held out, and the evaluation ids."""
    from slimformer.methods.auto.apply import split_calibration

    s = SETUPS[STUDY_MODEL]
    model_dir = SHARED / "models" / STUDY_MODEL
    _, tok = sf.load_model(model_dir, dtype="float32")
    calib = sf.data.load(str(SHARED / s["calib"]), tok, samples=s["samples"], seqlen=s["seqlen"], seed=s["seed"])
    train, held = split_calibration(calib.input_ids, holdout)
    ids = sf.data.tokenize_text(sf.data.load_text(str(SHARED / s["eval"])).text, tok)[: s["eval_tokens"]]
    return {"model_dir": model_dir, "tok": tok, "train": train, "held": held, "eval_ids": ids, "setup": s}


def heldout_ppl(model: torch.nn.Module, held: torch.Tensor) -> float:
    """Perplexity on the held-out calibration windows ``[k, T]`` (each window scored on its own)."""
    from slimformer.methods.auto.apply import heldout_nll

    return math.exp(heldout_nll(model, held, 16, torch.device("cpu")))


def eval_ppl(model: torch.nn.Module, d: dict[str, Any]) -> float:
    """Perplexity on the evaluation text (the same windows as the main table)."""
    from slimformer.eval import perplexity

    return perplexity(model, d["tok"], d["eval_ids"], seqlen=d["setup"]["eval_seqlen"], batch_size=16,
                      progress=False).ppl


def disp_point(d: dict[str, Any], cfg: Any) -> tuple[torch.nn.Module, dict[str, Any]]:
    """Compress a fresh stories260k with ``cfg`` on the training windows; the model and its row (no eval ppl)."""
    model, _ = sf.load_model(d["model_dir"], dtype="float32")
    t0 = time.perf_counter()
    rep = sf.compress(model, cfg, d["train"], progress=False).report
    row = {"steps": rep["steps"], "learning_rate": cfg.learning_rate, "lam": cfg.lam, "variant": cfg.variant,
           "seconds": time.perf_counter() - t0, "train_seconds": rep["train_seconds"],
           "resumed_from": rep["resumed_from"],
           "removed": rep["removed_fraction"], "final_lm_loss": rep["final_lm_loss"], "final_r": rep["final_r"],
           "p": rep["p"], "budget_adjustment": rep["budget_adjustment"], "heldout_ppl": heldout_ppl(model, d["held"])}
    return model, row


def run_study(variant: str, fraction: float, lrs: list[float], lr_steps: int, scaling: list[int],
              holdout: float, batch: int, seqlen: int) -> dict[str, Any]:
    """Held-out learning-rate choice, then the step-scaling curve, for one DISP variant."""
    d = study_data(holdout)
    base = dict(target_params=fraction, batch=batch, seqlen=seqlen, variant=variant)
    out: dict[str, Any] = {"fraction": fraction, "holdout": holdout, "train_windows": int(d["train"].shape[0]),
                           "heldout_windows": int(d["held"].shape[0]), "lr_steps": lr_steps, "lr_sweep": []}
    best: tuple[float, torch.nn.Module, dict[str, Any]] | None = None
    for lr in lrs:
        model, row = disp_point(d, sf.DISPConfig(**base, steps=lr_steps, learning_rate=lr))
        out["lr_sweep"].append(row)
        print(variant, "lr", json.dumps(row), flush=True)
        if best is None or row["heldout_ppl"] < best[0]:
            best = (row["heldout_ppl"], model, row)
    assert best is not None
    best[2]["eval_ppl"] = eval_ppl(best[1], d)  # the evaluation text sees the chosen value only
    lr = best[2]["learning_rate"]
    out["chosen_lr"] = lr
    print(variant, "chosen lr", lr, "eval ppl", best[2]["eval_ppl"], flush=True)
    out["scaling"] = []
    with tempfile.TemporaryDirectory() as tmp:
        ckpt = str(Path(tmp) / f"disp-{variant}.pt")
        for steps in sorted(scaling):
            model, row = disp_point(d, sf.DISPConfig(**base, steps=steps, learning_rate=lr, checkpoint=ckpt))
            row["eval_ppl"] = eval_ppl(model, d)
            out["scaling"].append(row)
            print(variant, "steps", json.dumps(row), flush=True)
    return out


def study_tables(studies: dict[str, Any]) -> str:
    """Markdown tables of the held-out learning-rate choice and the step-scaling curves."""
    lines = ["| variant | lr | held-out ppl | eval ppl |", "|---|---|---|---|"]
    for variant, st in studies.items():
        for r in st["lr_sweep"]:
            chosen = r["learning_rate"] == st["chosen_lr"]
            ev = f"**{r['eval_ppl']:.2f}**" if chosen and "eval_ppl" in r else "-"
            lines.append(f"| {variant} | {r['learning_rate']:g}{' (chosen)' if chosen else ''} | "
                         f"{r['heldout_ppl']:.2f} | {ev} |")
    lines += ["", "| variant | lr | steps | held-out ppl | eval ppl | final LM loss | r / p | offset | "
              "removed before -> after | train s (this segment) |", "|---|---|---|---|---|---|---|---|---|---|"]
    for variant, st in studies.items():
        for r in st["scaling"]:
            b = r["budget_adjustment"]
            lines.append(f"| {variant} | {r['learning_rate']:g} | {r['steps']} | {r['heldout_ppl']:.2f} | "
                         f"{r['eval_ppl']:.2f} | {r['final_lm_loss']:.3f} | {r['final_r']:.3f} / {r['p']:.3f} | "
                         f"{b['logit_offset']:+.3f} | {b['removed_before_offset']:.3f} -> {r['removed']:.3f} | "
                         f"{r['train_seconds']:.0f} |")
    return "\n".join(lines) + "\n"


def write_merged(path: Path, update: Any) -> dict[str, Any]:
    """Re-read ``path``, apply ``update(data)``, write it back (two study processes share the file)."""
    data = json.loads(path.read_text()) if path.exists() else {"models": {}}
    update(data)
    path.write_text(json.dumps(data, indent=2) + "\n")
    return data


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--fractions", type=float, nargs="+", default=[0.2, 0.4])
    p.add_argument("--models", nargs="+", default=list(SETUPS), choices=list(SETUPS))
    p.add_argument("--steps", type=int, default=400, help="DISP training steps")
    p.add_argument("--batch", type=int, default=4, help="DISP windows per step")
    p.add_argument("--seqlen", type=int, default=256, help="DISP tokens per training window")
    p.add_argument("--lam", type=float, default=6.0, help="DISP budget regulariser weight")
    p.add_argument("--learning-rate", type=float, default=1e-2,
                   help="DISP AdamW learning rate (1e-2: the held-out choice of 1e-3/3e-3/1e-2, library variant, "
                        "400 steps, stories260k at 30%%; see --study and docs/disp.md)")
    p.add_argument("--study", choices=["library", "reference"], default=None,
                   help="run the held-out learning-rate study + step scaling for this DISP variant")
    p.add_argument("--study-fraction", type=float, default=0.3)
    p.add_argument("--lrs", type=float, nargs="+", default=[1e-3, 3e-3, 1e-2])
    p.add_argument("--lr-steps", type=int, default=400, help="steps of each learning-rate candidate")
    p.add_argument("--scaling-steps", type=int, nargs="+", default=[300, 1000, 3000])
    p.add_argument("--holdout", type=float, default=0.125, help="fraction of calibration windows held out")
    p.add_argument("--only", nargs="*", default=None, metavar="METHOD", help="run only these methods")
    p.add_argument("--json", default=str(REPO / "docs" / "disp.json"))
    p.add_argument("--render", action="store_true", help="only print the Markdown tables of an existing --json")
    args = p.parse_args()
    if args.render:
        data = json.loads(Path(args.json).read_text())
        print(tables(data))
        if data.get("studies"):
            print(study_tables(data["studies"]))
        return
    torch.set_num_threads(args.threads)
    if args.study:
        res = run_study(args.study, args.study_fraction, args.lrs, args.lr_steps, args.scaling_steps, args.holdout,
                        args.batch, args.seqlen)
        res.update(threads=args.threads, versions=sf.api.library_versions())
        data = write_merged(Path(args.json), lambda d: d.setdefault("studies", {}).__setitem__(args.study, res))
        print(study_tables(data["studies"]))
        return
    table = methods(args.steps, args.batch, args.seqlen, args.lam, args.learning_rate)
    if args.only:
        table = {k: v for k, v in table.items() if k in args.only}
    path = Path(args.json)
    data = json.loads(path.read_text()) if path.exists() else {"models": {}}
    for name in args.models:  # merged per model, so the two models can run as separate processes
        data["models"][name] = run_model(name, args.fractions, table)
        data.update(threads=args.threads, versions=sf.api.library_versions())
        path.write_text(json.dumps(data, indent=2) + "\n")
    print(tables(data))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
