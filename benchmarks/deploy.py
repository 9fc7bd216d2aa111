"""Reproduce docs/deploy.md: pruned models in llama.cpp (GGUF) vs the dense GGUF, and what the
exportable structures cost in quality.

For stories260k (trained) and a random Llama (hidden 1024, 8 layers, MLP 2816, 16 heads, vocab
32000), at 20% and 30% of the parameters removed (exact counts, ``target_params``):

* speed: llama.cpp decode tokens/s of each pruned GGUF vs the dense GGUF, 1 and 2 threads,
  interleaved repeats in one process (median), next to the transformers decode speed-up of the
  same pruned model (1 torch thread, :func:`slimformer.eval.speed.compare_speed`);
* quality (stories260k only; held-out TinyStories valid text, never used to choose anything):
  FASP unconstrained (value channels per head, uniform; remote code only) vs ``--exportable
  gguf`` (whole GQA groups, global schedule: per-layer shapes, llama.cpp ``deci``) vs
  ``--exportable hf`` (whole GQA groups, uniform: a plain config, llama.cpp ``llama``).

    python benchmarks/deploy.py            # writes docs/deploy.json and prints the tables
    python benchmarks/deploy.py --render   # Markdown tables from docs/deploy.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import torch

import slimformer as sf
from slimformer.eval import perplexity
from slimformer.eval.speed import SpeedSettings, compare_speed

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("SHARED", REPO.parent / "shared"))
OUT = REPO / "docs" / "deploy.json"

VARIANTS: dict[str, Callable[[float], Any]] = {
    "fasp (channels, uniform)": lambda f: sf.FASPConfig(target_params=f),
    "fasp --exportable gguf (heads, global)": lambda f: sf.FASPConfig(target_params=f, schedule="global",
                                                                      exportable="gguf"),
    "fasp --exportable hf (heads, uniform)": lambda f: sf.FASPConfig(target_params=f, exportable="hf"),
}


def llama_cpp_decode(paths: dict[str, Path], threads: int, prompt: list[int], new_tokens: int,
                     repeats: int) -> dict[str, float]:
    """Median decode tokens/s of each GGUF file (one token at a time with the KV cache), interleaved."""
    import llama_cpp

    models = {n: llama_cpp.Llama(model_path=str(p), n_ctx=256, n_threads=threads, n_threads_batch=threads,
                                 verbose=False) for n, p in paths.items()}
    runs: dict[str, list[float]] = {n: [] for n in models}
    try:
        for rep in range(repeats + 1):  # the first round warms up
            for name, llm in models.items():
                llm.reset()
                llm.eval(prompt)
                tok = int(torch.tensor(llm.scores[llm.n_tokens - 1]).argmax())
                t0 = time.perf_counter()
                for _ in range(new_tokens):
                    llm.eval([tok])
                    tok = int(torch.tensor(llm.scores[llm.n_tokens - 1]).argmax())
                if rep:
                    runs[name].append(new_tokens / (time.perf_counter() - t0))
    finally:
        for llm in models.values():
            llm.close()
    return {n: statistics.median(v) for n, v in runs.items()}


def _setup(name: str) -> tuple[Callable[[], torch.nn.Module], torch.Tensor, Any, torch.Tensor | None, Path | None]:
    """(fresh dense model, calibration ids, tokenizer, eval ids or None, tokenizer dir or None)."""
    if name == "stories260k":
        model_dir = SHARED / "models" / "stories260k"
        _, tok = sf.load_model(model_dir)
        calib = sf.data.load(str(SHARED / "data/tinystories/tinystories_train_prefix.txt"), tok, samples=128,
                             seqlen=256, seed=42)
        ids = sf.data.tokenize_text(sf.data.load_text(str(SHARED / "data/tinystories/tinystories_valid_prefix.txt"))
                                    .text, tok)[:100_000]
        return (lambda: sf.load_model(model_dir, dtype="float32")[0]), calib, tok, ids, model_dir
    from common import random_llama  # benchmarks/common.py

    calib = torch.randint(0, 32000, (16, 256), generator=torch.Generator().manual_seed(0))

    def make() -> torch.nn.Module:
        torch.manual_seed(0)
        return random_llama()

    return make, calib, None, None, None


def run(name: str, fractions: list[float], threads: list[int], repeats: int, new_tokens: int) -> dict[str, Any]:
    from slimformer.io.gguf_export import export_gguf

    make, calib, tok, eval_ids, tok_dir = _setup(name)
    out: dict[str, Any] = {"rows": [], "speed": []}
    with tempfile.TemporaryDirectory() as tmp:
        dense = make()
        params = sf.count_params(dense)
        out["params"] = params
        if eval_ids is not None:
            out["dense_ppl"] = perplexity(dense, tok, eval_ids, seqlen=512, batch_size=16, progress=False).ppl
        files = {"dense": export_gguf(dense, Path(tmp) / "dense.gguf", tokenizer_dir=tok_dir)}
        pruned: dict[str, torch.nn.Module] = {}
        for f in fractions:
            for variant, cfg in VARIANTS.items():
                model = make()
                r = sf.compress(model, cfg(f), calib, progress=False)
                row: dict[str, Any] = {"target": f, "variant": variant, "removed": r.report["removed_fraction"],
                                       "params_after": r.report["params_after"]}
                if eval_ids is not None:
                    row["ppl"] = perplexity(model, tok, eval_ids, seqlen=512, batch_size=16, progress=False).ppl
                try:
                    key = f"{variant} @ {f:.0%}"
                    files[key] = export_gguf(model, Path(tmp) / f"{len(files)}.gguf", tokenizer_dir=tok_dir)
                    pruned[key] = model
                    row["gguf"] = "yes"
                except ValueError as exc:
                    row["gguf"] = f"no: {str(exc).splitlines()[0]}"
                out["rows"].append(row)
                print(name, json.dumps(row), flush=True)
        prompt = (calib if isinstance(calib, torch.Tensor) else calib.input_ids)[0, :32].tolist()
        cpp = {t: llama_cpp_decode(files, t, prompt, new_tokens, repeats) for t in threads}
        settings = SpeedSettings(batch=1, seqlen=32, new_tokens=new_tokens, warmup=1, repeats=repeats, threads=1)
        for key, model in pruned.items():
            hf = compare_speed({"dense": make(), key: model}, settings)
            entry = {"model": key, "transformers_decode_speedup": hf["speedup"]["decode"]}
            for t in threads:
                entry[f"llama.cpp {t}t tok/s"] = cpp[t][key]
                entry[f"llama.cpp {t}t dense tok/s"] = cpp[t]["dense"]
                entry[f"llama.cpp {t}t speedup"] = cpp[t][key] / cpp[t]["dense"]
            out["speed"].append(entry)
            print(name, json.dumps(entry), flush=True)
    return out


def render(res: dict[str, Any]) -> str:
    lines = []
    for name, r in res["models"].items():
        lines.append(f"### {name} ({r['params']:,} parameters)\n")
        if "dense_ppl" in r:
            lines.append(f"Dense perplexity {r['dense_ppl']:.3f}.\n")
        lines.append("| removed | variant | params after | ppl | GGUF |")
        lines.append("|---|---|---:|---:|---|")
        for row in r["rows"]:
            ppl = f"{row['ppl']:.3f}" if "ppl" in row else "-"
            gguf = row["gguf"].split(";")[0].replace("no: cannot export to GGUF: ", "no: ")
            lines.append(f"| {row['removed']:.1%} | {row['variant']} | {row['params_after']:,} | {ppl} | {gguf} |")
        threads = [k.split()[1] for k in r["speed"][0] if k.endswith("t speedup")] if r["speed"] else []
        lines.append("")
        head = "| model | transformers decode speed-up | " + " | ".join(
            f"llama.cpp {t} tok/s (dense) | llama.cpp {t} speed-up" for t in threads) + " |"
        lines.append(head)
        lines.append("|---|---:|" + "---:|---:|" * len(threads))
        for e in r["speed"]:
            cells = " | ".join(f"{e[f'llama.cpp {t} tok/s']:.1f} ({e[f'llama.cpp {t} dense tok/s']:.1f}) | "
                               f"{e[f'llama.cpp {t} speedup']:.2f}x" for t in threads)
            lines.append(f"| {e['model']} | {e['transformers_decode_speedup']:.2f}x | {cells} |")
        lines.append("")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=["stories260k", "random-llama-1024x8"])
    ap.add_argument("--fractions", nargs="+", type=float, default=[0.2, 0.3])
    ap.add_argument("--threads", nargs="+", type=int, default=[1, 2])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--render", action="store_true")
    args = ap.parse_args()
    if args.render:
        print(render(json.loads(OUT.read_text())))
        return
    torch.set_num_threads(1)
    import llama_cpp
    import transformers

    res = {"date": time.strftime("%Y-%m-%d"), "torch": torch.__version__, "transformers": transformers.__version__,
           "llama_cpp_python": llama_cpp.__version__, "cpu_count": os.cpu_count(), "models": {}}
    for name in args.models:
        res["models"][name] = run(name, args.fractions, args.threads, args.repeats, args.new_tokens)
    OUT.write_text(json.dumps(res, indent=2) + "\n")
    print(render(res))


if __name__ == "__main__":
    main()
