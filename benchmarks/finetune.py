"""Reproduce docs/finetune.md: recovery fine-tuning (LoRA) of stories260k sliced 30% with SliceGPT.

    python benchmarks/finetune.py [--minutes 3] [--threads 1] > /tmp/finetune.md

Compression: SliceGPT sparsity 0.3, calibration 128 x 256 tokens of the TinyStories
train prefix (seed 42), as in docs/results.md. Fine-tuning: LoRA on the same train
text (random windows), held-out perplexity on the TinyStories *validation* prefix
(non-overlapping 512-token windows, every token, as in docs/results.md) before and
after. Each run is limited to ``--minutes`` of training on the CPU.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import torch

import slimformer as sf
from slimformer.eval import perplexity

SHARED = Path(os.environ.get("SHARED", Path(__file__).resolve().parents[2] / "shared"))
TRAIN = SHARED / "data/tinystories/tinystories_train_prefix.txt"
VALID = SHARED / "data/tinystories/tinystories_valid_prefix.txt"
MODEL = SHARED / "models/stories260k"

RUNS = {  # name -> FinetuneConfig overrides
    "linears r8": dict(targets=None),
    "linears + shortcuts r8": dict(targets=("q", "k", "v", "o", "gate", "up", "down", "attn_shortcut", "mlp_shortcut")),
}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--minutes", type=float, default=3.0, help="training time limit per run")
    ap.add_argument("--steps", type=int, default=400)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--json", default=None, help="also write all records to this JSON file")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    _, tok = sf.load_model(MODEL)
    valid = sf.data.tokenize_text(sf.data.load_text(str(VALID)).text, tok)
    calib = sf.data.load(str(TRAIN), tok, samples=128, seqlen=256, seed=42)

    def ppl(model: torch.nn.Module) -> float:
        return perplexity(model, tok, valid, seqlen=512, batch_size=16, progress=False).ppl

    dense, _ = sf.load_model(MODEL)
    rows, records = [f"| dense | – | {ppl(dense):.3f} | – | – | – |"], {}
    with tempfile.TemporaryDirectory() as work:
        sliced_dir = Path(work) / "sliced30"
        model, _ = sf.load_model(MODEL)
        sf.compress(model, sf.SliceGPTConfig(sparsity=0.3), calib, progress=False, tokenizer=tok).save(sliced_dir)
        sliced_ppl = ppl(sf.load_model(sliced_dir)[0])
        rows.append(f"| SliceGPT 30% | – | {sliced_ppl:.3f} | – | – | – |")
        for name, overrides in RUNS.items():
            t0 = time.perf_counter()
            cfg = sf.FinetuneConfig(steps=args.steps, lr=2e-3, batch=8, seqlen=256, seed=0, eval_tokens=50_000,
                                    max_minutes=args.minutes, **overrides)
            res = sf.finetune(sliced_dir, str(TRAIN), cfg, eval_data=str(VALID), progress=False)
            out = Path(res.save(Path(work) / name.replace(" ", "_")))
            after = ppl(sf.load_model(out)[0])  # the saved, merged model, evaluated like the others
            rec = res.record
            with torch.no_grad():
                scale = res.model(input_ids=valid[None, :256]).logits.abs().max().item()
            rows.append(
                f"| SliceGPT 30% + RFT ({name}) | {rec['trainable_params']:,} | **{after:.3f}** | "
                f"{rec['steps_done']} steps, {rec['tokens_seen']:,} tokens, {rec['seconds']:.0f}s train "
                f"({time.perf_counter() - t0:.0f}s total) | {rec['ppl_before']['ppl']:.2f} → {rec['ppl_after']['ppl']:.2f} "
                f"| {rec['merge_max_abs_logit_diff']:.1e} (max logit {scale:.1f}) |"
            )
            records[name] = {**rec, "ppl512_after_saved": after, "ppl512_sliced": sliced_ppl}
    print(f"threads {args.threads}, torch {torch.__version__}, time limit {args.minutes} min per run\n")
    print("| model | LoRA params | valid ppl (seqlen 512, all tokens) | training | in-run ppl (seqlen 256, 50k tokens) "
          "| merge max abs logit diff |")
    print("|---|---|---|---|---|---|")
    print("\n".join(rows))
    if args.json:
        Path(args.json).write_text(json.dumps(records, indent=2, default=str) + "\n")


if __name__ == "__main__":
    main()
