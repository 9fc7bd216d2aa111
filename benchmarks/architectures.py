"""The support table: every registered family x every method, measured on tiny random models;
and compression time of a Mixtral-shaped MoE against the dense Llama of the same size.

    .venv/bin/python benchmarks/architectures.py            # writes docs/architectures.{json,md}

Each cell runs the grid of ``tests/family_grid.py`` (the same code the test suite asserts): max
|delta logits| at sparsity 0 against the dense model (fp32, perturbed norms and biases), the
parameter fraction removed at ``target_params=0.2``, and the max |delta logits| of the saved model
reloaded with plain transformers (``trust_remote_code``); or the one-line refusal.
"""

from __future__ import annotations

import json
import logging
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

import family_grid as grid  # noqa: E402
import transformers  # noqa: E402

import slimformer as sf  # noqa: E402


def run() -> dict:
    cells: dict[str, dict[str, dict]] = {}
    for family in grid.families():
        cells[family] = {}
        for method in grid.METHODS:
            t0 = time.perf_counter()
            zero = None if method in grid.NO_ZERO_POINT else grid.zero_cell(family, method)
            with tempfile.TemporaryDirectory() as tmp:
                target = grid.target_cell(family, method, Path(tmp) / "out")
            cells[family][method] = {"zero": zero, "target": target, "seconds": round(time.perf_counter() - t0, 2)}
            print(f"{family:18s} {method:14s} {cells[family][method]}", flush=True)
    return {"torch": torch.__version__, "transformers": transformers.__version__, "slimformer": sf.__version__,
            "target": grid.TARGET, "cells": cells}


def _cell(c: dict) -> str:
    for part in (c["zero"], c["target"]):
        if isinstance(part, str):
            return "refused"
    zero = "n/a" if c["zero"] is None else f"{c['zero']:.0e}"
    ok = c["zero"] in (None,) or c["zero"] <= grid.EXACT_TOL
    ok = ok and abs(c["target"]["removed"] - grid.TARGET) <= grid.TARGET_TOL
    ok = ok and c["target"]["reload_err"] <= grid.RELOAD_TOL
    return f"{'✓' if ok else '✗'} {zero} / {c['target']['removed']:.3f}"


def markdown(res: dict) -> str:
    methods = list(grid.METHODS)
    lines = [
        "| family | " + " | ".join(methods) + " |",
        "|---|" + "---|" * len(methods),
    ]
    reasons: dict[str, set[str]] = {}
    for family, row in res["cells"].items():
        lines.append(f"| {family} | " + " | ".join(_cell(row[m]) for m in methods) + " |")
        for m in methods:
            for part in (row[m]["zero"], row[m]["target"]):
                if isinstance(part, str):
                    reasons.setdefault(part, set()).add(f"{family}/{m}")
    out = "\n".join(lines) + "\n\nRefusals (each printed as one line by the API and the CLI):\n\n"
    for text, where in sorted(reasons.items()):
        out += f"* {', '.join(sorted(where))}: \"{text}\"\n"
    return out


#: the MoE timing: 8 experts of width 1792 (Mixtral's 3.5 x hidden), hidden 512, 4 layers, top-2;
#: the dense Llama has one MLP of 8 x 1792 channels, so both have the same parameter count
MOE = dict(hidden_size=512, num_hidden_layers=4, num_attention_heads=8, num_key_value_heads=4, vocab_size=4096,
           max_position_embeddings=512)
MOE_METHODS = ("slicegpt", "dotresize", "fasp", "magnitude", "wanda-sp", "random")


def moe_timing(repeats: int = 2) -> dict:
    """Seconds to compress (20% of parameters) the MoE and the dense model, per method, best of
    ``repeats`` runs measured alternately in this process (16 calibration windows of 128 tokens)."""
    from transformers import AutoModelForCausalLM, LlamaConfig, MixtralConfig

    def build(kind: str) -> torch.nn.Module:
        torch.manual_seed(0)
        cfg = (MixtralConfig(**MOE, intermediate_size=1792, num_local_experts=8, num_experts_per_tok=2)
               if kind == "moe" else LlamaConfig(**MOE, intermediate_size=8 * 1792))
        return AutoModelForCausalLM.from_config(cfg, dtype=torch.float32).eval()

    calib = torch.randint(0, MOE["vocab_size"], (16, 128), generator=torch.Generator().manual_seed(1))
    out: dict = {"params": {k: sum(p.numel() for p in build(k).parameters()) for k in ("moe", "dense")}}
    for method in MOE_METHODS:
        times: dict[str, list[float]] = {"moe": [], "dense": []}
        for _ in range(repeats):
            for kind in ("moe", "dense"):
                model = build(kind)
                config = grid.METHODS[method](target_params=0.2)
                data = None if method in grid.CALIBRATION_FREE else calib
                t0 = time.perf_counter()
                sf.compress(model, config, data, progress=False, batch_size=8)
                times[kind].append(time.perf_counter() - t0)
        med = {k: min(v) for k, v in times.items()}  # best of the repeats (noise only adds time)
        out[method] = {"moe_s": round(med["moe"], 2), "dense_s": round(med["dense"], 2),
                       "ratio": round(med["moe"] / med["dense"], 2)}
        print(method, out[method], flush=True)
    return out


def moe_markdown(moe: dict) -> str:
    """The MoE timing table."""
    lines = [f"Parameters: MoE {moe['params']['moe']:,}, dense {moe['params']['dense']:,}.", "",
             "| method | MoE (s) | dense Llama (s) | MoE / dense |", "|---|---|---|---|"]
    for method in MOE_METHODS:
        row = moe.get(method)
        if row is not None:
            lines.append(f"| {method} | {row['moe_s']} | {row['dense_s']} | {row['ratio']} |")
    return "\n".join(lines) + "\n"


HEADER = """# Supported architectures: every family x every method

Generated by `python benchmarks/architectures.py` (the grid of `tests/family_grid.py`, the same
code `tests/test_family_grid.py` asserts; tiny random models: hidden 64, 2 layers, vocab 128,
fp32, norm weights and biases perturbed). A cell reads `✓ Δ / removed`: max |Δlogits| of the
method at sparsity 0 against the dense model (`n/a` for DISP, whose target is a parameter
fraction), then the parameter fraction removed at `target_params=0.2`; ✓ means exact at 0
(≤ 1e-4), within ±0.01 of the target, and the saved model reloaded with plain transformers
(`trust_remote_code`) with identical logits (≤ 1e-5). `refused` cells print one line, listed
below the table. GPT-2's residual slicing runs with `--schedule uniform --slice-head` (its model
views the output at the embedding width). Measured with torch {torch}, transformers {transformers}.

"""


def write_docs(res: dict) -> None:
    """docs/architectures.json and docs/architectures.md from the measured results."""
    (ROOT / "docs" / "architectures.json").write_text(json.dumps(res, indent=1) + "\n")
    text = HEADER.format(torch=res["torch"], transformers=res["transformers"]) + markdown(res)
    if "moe_timing" in res:
        text += ("\n## Compression time: mixture of experts vs dense\n\n"
                 "A random Mixtral-shaped MoE (8 experts of width 1792, top-2, hidden 512, 4 layers, vocab "
                 "4096) against the dense Llama with one MLP of 8 x 1792 channels (the same parameter count), "
                 "20% of the parameters removed, 16 calibration windows of 128 tokens, one thread, best of "
                 "two runs measured alternately in one process.\n\n" + moe_markdown(res["moe_timing"])
                 + "\nReading: the methods that solve per MLP (FASP's least-squares restoration, Wanda-SP's "
                 "Gram) work on one `[1792, 1792]` Gram per expert on the MoE and one `[14336, 14336]` Gram "
                 "on the dense model, so the MoE compresses far faster; SliceGPT/DOTResize cost the same "
                 "rotations on both and a cheaper calibration forward on the MoE (top-2 of 8 experts "
                 "per token); the weight-only methods (magnitude, random) pay for splitting the 3-D expert "
                 "tensors into separate linears, which the dense model does not need. The machine was "
                 "shared with other jobs: seconds are noisy, ratios indicative.\n")
    (ROOT / "docs" / "architectures.md").write_text(text)


def main() -> None:
    logging.disable(logging.WARNING)
    torch.set_num_threads(1)
    if "--from-json" in sys.argv:  # rewrite the Markdown from the stored results
        write_docs(json.loads((ROOT / "docs" / "architectures.json").read_text()))
        return
    res = run()
    res["moe_timing"] = moe_timing()
    write_docs(res)
    print(markdown(res))


if __name__ == "__main__":
    main()
