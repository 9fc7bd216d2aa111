"""Loading memory: peak RSS while loading a saved compressed model vs. its safetensors size.

Builds a random Llama (hidden 2048, 8 layers, vocab 32000, fp32), slices it 25%
with SliceGPT, saves it, then loads it in fresh subprocesses three ways and
records the RSS growth caused by loading and then reading every weight once
(peak RSS after - RSS before the call; safetensors memory-maps the file, so
untouched pages would not count):
slimformer.load_model, transformers with trust_remote_code, and - for scale - a
dense model of the same config through plain transformers.

    python benchmarks/bench_load.py [--keep DIR]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

CHILD = r"""
import json, sys, time, torch
torch.set_num_threads(2)
how, path = sys.argv[1], sys.argv[2]
from slimformer.memory import peak_rss_mb, rss_mb  # /proc VmRSS / VmHWM (ru_maxrss is inherited across fork)
import transformers
if how == "slimformer":
    import slimformer as sf
before = rss_mb()
t0 = time.perf_counter()
if how == "slimformer":
    model, _ = sf.load_model(path)
else:
    model = transformers.AutoModelForCausalLM.from_pretrained(path, trust_remote_code=(how == "remote"))
secs = time.perf_counter() - t0
with torch.no_grad():  # touch every weight: memory-mapped pages count once they are read
    checksum = sum(float(p.sum()) for p in model.parameters())
peak = peak_rss_mb()
nbytes = sum(p.numel() * p.element_size() for p in model.parameters())
print(json.dumps({"rss_before_mb": before, "peak_rss_mb": peak, "growth_mb": peak - before,
                  "param_mb": nbytes / 2**20, "seconds": secs}))
"""


def build(out: Path) -> tuple[Path, Path]:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    import slimformer as sf

    torch.manual_seed(0)
    cfg = LlamaConfig(hidden_size=2048, intermediate_size=5632, num_hidden_layers=8, num_attention_heads=16,
                      num_key_value_heads=16, vocab_size=32000, max_position_embeddings=2048)
    model = LlamaForCausalLM(cfg).eval()
    dense_dir = out / "dense"
    model.save_pretrained(dense_dir)
    calib = torch.randint(0, 32000, (8, 128), generator=torch.Generator().manual_seed(0))
    result = sf.compress(model, sf.SliceGPTConfig(sparsity=0.25), calib, progress=False)
    return Path(result.save(out / "sliced")), dense_dir


def measure(how: str, path: Path) -> dict:
    proc = subprocess.run([sys.executable, "-c", CHILD, how, str(path)], capture_output=True, text=True, check=True)
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--keep", default=None, help="work directory to keep (default: a temporary one)")
    p.add_argument("--json", default=str(REPO / "docs" / "bench_load.json"))
    args = p.parse_args()
    work = Path(args.keep or tempfile.mkdtemp(prefix="slimformer-bench-load-"))
    sliced, dense = (work / "sliced", work / "dense")
    if not (sliced / "config.json").exists() or not (dense / "config.json").exists():
        sliced, dense = build(work)
    size_mb = sum(f.stat().st_size for f in sliced.glob("*.safetensors")) / 2**20
    dense_mb = sum(f.stat().st_size for f in dense.glob("*.safetensors")) / 2**20
    rows = {"slimformer": measure("slimformer", sliced), "remote_code": measure("remote", sliced),
            "dense_transformers": measure("dense", dense)}
    result = {"sliced_safetensors_mb": size_mb, "dense_safetensors_mb": dense_mb, **rows,
              "ratio_slimformer": rows["slimformer"]["growth_mb"] / size_mb,
              "ratio_remote_code": rows["remote_code"]["growth_mb"] / size_mb,
              "ratio_dense_transformers": rows["dense_transformers"]["growth_mb"] / dense_mb}
    print(json.dumps(result, indent=2))
    Path(args.json).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
