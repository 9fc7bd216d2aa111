"""Produce docs/report/: quality (stories260k) and speed (random Llama 1024x8) with plots.

Every number comes from the slimformer CLI / API run here:
  * stories260k dense and SliceGPT at 0.1/0.2/0.25/0.3 (calibration 128 x 256 tokens of the
    TinyStories train prefix, seed 42), perplexity on the valid prefix at seqlen 512;
  * random Llama (hidden 1024, 8 layers, fp32) dense vs SliceGPT at 0.1/0.25/0.4: `slimformer bench`
    (batch 1, prompt 128, 64 decoded tokens, 1 thread - robust on a shared 2-core box -, 1 warm-up,
    5 interleaved repeats).

    python benchmarks/make_report.py [--work /tmp/sf-report] [--skip-speed]
"""

from __future__ import annotations

import argparse
import os
import shutil
from pathlib import Path

import torch

import slimformer as sf
from slimformer.cli import main as cli

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("SHARED", REPO.parent / "shared"))
OUT = REPO / "docs" / "report"


def quality(work: Path, data: Path) -> None:
    model = SHARED / "models" / "stories260k"
    train = SHARED / "data" / "tinystories" / "tinystories_train_prefix.txt"
    valid = SHARED / "data" / "tinystories" / "tinystories_valid_prefix.txt"
    ev = ["--ppl", str(valid), "--seqlen", "512", "--batch-size", "16", "--no-progress"]
    assert cli(["eval", str(model), *ev, "--json", str(data / "stories-dense.json")]) == 0
    for s in ("0.1", "0.2", "0.25", "0.3"):
        out = work / f"stories-slicegpt-{s}"
        assert cli(["compress", str(model), "--method", "slicegpt", "--sparsity", s, "--calib", str(train),
                    "--calib-samples", "128", "--calib-seqlen", "256", "--seed", "42", "--out", str(out),
                    "--overwrite", "--no-progress"]) == 0
        shutil.copy(out / "slimformer_report.json", data / f"stories-slicegpt-{s}.compress.json")
        assert cli(["eval", str(out), *ev, "--json", str(data / f"stories-slicegpt-{s}.json")]) == 0


def speed(work: Path, data: Path) -> None:
    from common import random_llama

    torch.manual_seed(0)
    dense_dir = work / "llama1024-dense"
    random_llama().save_pretrained(dense_dir)
    calib = torch.randint(0, 32000, (16, 256), generator=torch.Generator().manual_seed(0))
    for s in (0.1, 0.25, 0.4):
        model, _ = sf.load_model(dense_dir)
        result = sf.compress(model, sf.SliceGPTConfig(sparsity=s), calib, progress=False)
        out = result.save(work / f"llama1024-slicegpt-{s}", overwrite=True)
        assert cli(["bench", out, "--baseline", str(dense_dir), "--batch", "1", "--seqlen", "128",
                    "--new-tokens", "64", "--threads", "1", "--warmup", "1", "--repeats", "5",
                    "--json", str(data / f"llama1024-slicegpt-{s}.bench.json")]) == 0


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--work", default="/tmp/sf-report")
    p.add_argument("--skip-speed", action="store_true")
    p.add_argument("--skip-quality", action="store_true", help="reuse the quality JSON already in docs/report/data")
    args = p.parse_args()
    work, data = Path(args.work), OUT / "data"
    work.mkdir(parents=True, exist_ok=True)
    data.mkdir(parents=True, exist_ok=True)
    if not args.skip_quality:
        quality(work, data)
    if not args.skip_speed:
        speed(work, data)
    assert cli(["report", *sorted(str(f) for f in data.glob("*.json")), "--out", str(OUT)]) == 0


if __name__ == "__main__":
    main()
