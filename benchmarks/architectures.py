"""The support table: every registered family x every method, measured on tiny random models.

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


def main() -> None:
    logging.disable(logging.WARNING)
    torch.set_num_threads(1)
    res = run()
    (ROOT / "docs" / "architectures.json").write_text(json.dumps(res, indent=1) + "\n")
    print(markdown(res))


if __name__ == "__main__":
    main()
