"""The one-command GPU benchmark (benchmarks/gpu/run.sh, docs/gpu.md) in its --tiny mode, and
the compress path it relies on working without the optional packages (POT, constriction,
lm-eval) that the GPU machine does not have."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
METHODS = ["dense", "slicegpt", "fasp", "modegpt", "magnitude", "slicegpt-offload-cpu"]
OPTIONAL = ("ot", "constriction", "lm_eval")


def _env() -> dict[str, str]:
    env = dict(os.environ, PYTHON=sys.executable, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    env["PYTHONPATH"] = os.pathsep.join([str(REPO / "src"), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    return env


def _positive(x: object) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x) and x > 0


def test_run_sh_tiny(tmp_path: Path) -> None:
    out = tmp_path / "gpu-results"
    proc = subprocess.run(["bash", str(REPO / "benchmarks" / "gpu" / "run.sh"), str(out), "--tiny"],
                          capture_output=True, text=True, env=_env(), cwd=REPO, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    data = json.loads((out / "gpu_bench.json").read_text())
    assert data["finished"] and data["meta"]["tiny"]
    assert data["meta"]["optional_modules_loaded"] == []
    assert set(data["sizes"]) == {"tiny-1b", "tiny-8b"}
    for size, s in data["sizes"].items():
        runs = {r["method"]: r for r in s["runs"]}
        assert list(runs) == METHODS, size
        for method, r in runs.items():
            where = f"{size}/{method}: {r.get('note')} {r.get('error')}"
            assert r["status"] == "ok", where
            assert _positive(r["item_wall_s"]) and _positive(r["peak_rss_mb"]), where
            for b in ("b1", "b16"):
                sp = r["speed"][b]
                assert _positive(sp["prefill_tok_s"]) and _positive(sp["decode_tok_s"]), where
                assert sp["decode_tok_s"] < 1e8, where  # decode = generate - prefill must not collapse to ~0 s
            if method == "dense":
                assert _positive(r["build_s"]) and r["params_after"] == s["params_dense"]
                continue
            assert _positive(r["compress_s"]) and r["params_after"] > 0, where
            assert 0 < r["report"]["seconds"] <= r["compress_s"], where
            assert sum(r["phases"].values()) <= r["compress_s"] + 0.005 and all(v >= 0 for v in r["phases"].values())
            assert set(r["speedup"]) == {"b1", "b16"}
            assert all(_positive(v) for d in r["speedup"].values() for v in d.values()), where
            if method == "slicegpt-offload-cpu":
                assert _positive(r["load_s"]) and _positive(r["checkpoint_save_s"]), where
                assert r["phases"]["read"] > 0 and r["phases"]["write"] > 0
            else:
                assert _positive(r["build_s"]), where
            if method != "magnitude":  # calibration-free
                assert r["phases"]["gram"] > 0, where
        # the large size's items were estimated from the small size's measured phases
        assert all(_positive(r.get("estimated_s")) for m, r in runs.items() if m != "dense" and size == "tiny-8b")
    md = (out / "gpu_bench.md").read_text()
    assert "TINY dry run" in md and md.count("| dense | ok |") == 2
    for method in METHODS:
        assert f"| {method} | ok |" in md
    assert "| method | status |" in proc.stdout  # run.sh prints the table
    assert (out / "log.txt").exists()


def test_budget_skips_and_interruption_keep_what_was_measured(tmp_path: Path) -> None:
    """The paths the real run is likely to take (an item skipped for the budget, the outer
    timeout's SIGINT in the middle of an item): valid JSON, every item accounted for, a table."""
    out = tmp_path / "budget"
    proc = subprocess.run(["bash", str(REPO / "benchmarks" / "gpu" / "run.sh"), str(out), "--tiny", "--budget-s", "1"],
                          capture_output=True, text=True, env=_env(), cwd=REPO, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    data = json.loads((out / "gpu_bench.json").read_text())
    runs = [r for s in data["sizes"].values() for r in s["runs"]]
    assert runs and all(r["status"] == "skipped" and r["note"].startswith("budget: ") for r in runs)
    assert "Not measured: " in (out / "gpu_bench.md").read_text()

    out = tmp_path / "interrupted"
    child = subprocess.Popen([sys.executable, str(REPO / "benchmarks" / "gpu" / "gpu_bench.py"), str(out), "--tiny"],
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=_env(), cwd=REPO)
    assert child.stdout is not None
    for line in child.stdout:  # interrupt in the second item (dense is measured, slicegpt's speed test runs)
        if "tiny-1b: slicegpt compressed" in line:
            child.send_signal(signal.SIGINT)
            break
    rest = child.communicate(timeout=120)[0]
    assert child.returncode == 130 and "interrupted: the items measured so far are in" in rest
    assert "Traceback" not in rest
    data = json.loads((out / "gpu_bench.json").read_text())
    status = {(size, r["method"]): r["status"] for size, s in data["sizes"].items() for r in s["runs"]}
    assert not data["finished"] and status[("tiny-1b", "dense")] == "ok"
    assert set(status.values()) <= {"ok", "aborted", "skipped"} and "aborted" in status.values()
    rendered = subprocess.run([sys.executable, str(REPO / "benchmarks" / "gpu" / "gpu_bench.py"), str(out), "--render"],
                              capture_output=True, text=True, env=_env(), cwd=REPO, timeout=120)
    assert rendered.returncode == 0 and "| dense | ok |" in rendered.stdout


BLOCKED_CHILD = r"""
import sys, tempfile
for name in sys.argv[1:]:
    sys.modules[name] = None  # "not installed": import raises, importlib.util.find_spec returns None
import torch
import slimformer as sf
from transformers import LlamaConfig, LlamaForCausalLM
cfg = LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, vocab_size=256, max_position_embeddings=128)
ids = torch.randint(0, 256, (4, 32), generator=torch.Generator().manual_seed(0))
for config, calib in [(sf.SliceGPTConfig(sparsity=0.25), ids), (sf.FASPConfig(target_params=0.2), ids),
                      (sf.MoDeGPTConfig(target_params=0.2), ids), (sf.MagnitudeConfig(target_params=0.2), None)]:
    torch.manual_seed(0)
    sf.compress(LlamaForCausalLM(cfg).eval(), config, calib, progress=False)
torch.manual_seed(0)
d = tempfile.mkdtemp()
LlamaForCausalLM(cfg).save_pretrained(d + "/src")
sf.compress_offloaded(d + "/src", sf.SliceGPTConfig(sparsity=0.25), ids, d + "/out", offload="cpu", progress=False)
model, _ = sf.load_model(d + "/out")
from slimformer.eval.speed import SpeedSettings, compare_speed
compare_speed({"m": model}, SpeedSettings(batch=1, seqlen=8, new_tokens=8, warmup=0, repeats=1))
print("OK")
"""


def test_compress_path_needs_no_optional_packages() -> None:
    proc = subprocess.run([sys.executable, "-c", BLOCKED_CHILD, *OPTIONAL], capture_output=True, text=True,
                          env=_env(), cwd=REPO, timeout=300)
    assert proc.returncode == 0 and proc.stdout.strip().endswith("OK"), proc.stderr[-3000:]
