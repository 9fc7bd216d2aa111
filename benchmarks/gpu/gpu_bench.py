"""One-command GPU benchmark: compression cost and speed of random-init Llama-3.2-1B and
Llama-3.1-8B shapes (bf16, built directly on the GPU) for SliceGPT, FASP, MoDeGPT,
magnitude pruning and offloaded SliceGPT.

Run it through ``benchmarks/gpu/run.sh OUT_DIR [--tiny]`` (which sets ``PYTHONPATH`` to the
repository's ``src`` and renders the table even after a timeout). Directly:

    PYTHONPATH=src python benchmarks/gpu/gpu_bench.py OUT_DIR [--tiny] [--budget-s 420]
    python benchmarks/gpu/gpu_bench.py --render OUT_DIR      # (re)print the table from the JSON

Per model size it measures the dense model's prefill/decode speed once, then for every
method: build the random model again from the same seed (timed), compress it (wall time,
plus a split into Gram/covariance updates, linear-algebra solves, checkpoint reads/writes
and the rest = forwards, rotations, bookkeeping), peak GPU memory
(``torch.cuda.max_memory_allocated``, reset per run) and peak host RSS (``VmHWM``, reset
per run), then the compressed model's prefill/decode tokens/s at batch 1 and 16 (KV cache,
eager, no CUDA graphs, median of repeats; :func:`slimformer.eval.speed.compare_speed`).

Time budget: every item is checked against a deadline (``--budget-s`` from the start of
the process). Items of the large model are first estimated from the small model's
measured phases, scaled by operation counts; an item that would not fit is skipped with a
note, and a timer interrupts an item still running at the deadline. Results are written
after every item (``gpu_bench.json`` + ``gpu_bench.md`` in OUT_DIR), so a killed run still
leaves everything measured so far.
"""

from __future__ import annotations

import time

T_START = time.monotonic()  # before the heavy imports: the budget counts them too

import argparse  # noqa: E402
import datetime  # noqa: E402
import gc  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import platform  # noqa: E402
import shutil  # noqa: E402
import signal  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import traceback  # noqa: E402
from contextlib import contextmanager  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any, Callable, Iterator  # noqa: E402

JSON_NAME = "gpu_bench.json"
MD_NAME = "gpu_bench.md"
OPTIONAL_MODULES = ("ot", "constriction", "lm_eval")  # must not be needed on the compress path

# Real shapes (RoPE "llama3" frequency scaling is left out: it does not change any cost).
SIZES: dict[str, dict[str, Any]] = {
    "llama-3.2-1b": dict(hidden_size=2048, num_hidden_layers=16, num_attention_heads=32, num_key_value_heads=8,
                         head_dim=64, intermediate_size=8192, vocab_size=128256, tie_word_embeddings=True,
                         max_position_embeddings=131072, rope_theta=500000.0, rms_norm_eps=1e-5),
    "llama-3.1-8b": dict(hidden_size=4096, num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=8,
                         head_dim=128, intermediate_size=14336, vocab_size=128256, tie_word_embeddings=False,
                         max_position_embeddings=131072, rope_theta=500000.0, rms_norm_eps=1e-5),
}
CALIB = {"llama-3.2-1b": (128, 2048), "llama-3.1-8b": (32, 2048)}  # windows x tokens

# --tiny: the same code path with tiny shapes (seconds on a CPU)
TINY_SIZES: dict[str, dict[str, Any]] = {
    "tiny-1b": dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, head_dim=16,
                    intermediate_size=128, vocab_size=512, tie_word_embeddings=True, max_position_embeddings=256,
                    rope_theta=500000.0, rms_norm_eps=1e-5),
    "tiny-8b": dict(hidden_size=96, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, head_dim=24,
                    intermediate_size=192, vocab_size=512, tie_word_embeddings=False, max_position_embeddings=256,
                    rope_theta=500000.0, rms_norm_eps=1e-5),
}
TINY_CALIB = {"tiny-1b": (4, 64), "tiny-8b": (4, 64)}

METHODS: dict[str, dict[str, Any]] = {
    "slicegpt": dict(label="SliceGPT uniform, sparsity 0.25", calib=True, offload=None,
                     config=lambda sf: sf.SliceGPTConfig(sparsity=0.25, schedule="uniform"), linalg_width="hidden"),
    "fasp": dict(label="FASP, target_params 0.2", calib=True, offload=None,
                 config=lambda sf: sf.FASPConfig(target_params=0.2), linalg_width="mlp"),
    "modegpt": dict(label="MoDeGPT, target_params 0.2", calib=True, offload=None,
                    config=lambda sf: sf.MoDeGPTConfig(target_params=0.2), linalg_width="mlp"),
    "magnitude": dict(label="magnitude, target_params 0.2 (no calibration)", calib=False, offload=None,
                      config=lambda sf: sf.MagnitudeConfig(target_params=0.2), linalg_width="mlp"),
    "slicegpt-offload-cpu": dict(label="SliceGPT 0.25, compress_offloaded(offload='cpu')", calib=True, offload="cpu",
                                 config=lambda sf: sf.SliceGPTConfig(sparsity=0.25, schedule="uniform"),
                                 linalg_width="hidden"),
}
# Order: the small model's cheap methods, then the large model's, then MoDeGPT (the most expensive:
# a float64 eigendecomposition of the MLP Gram per block), small first. Large-model items are
# estimated from the small model's measured phases before they start.
ORDER = [(0, "dense"), (0, "slicegpt"), (0, "fasp"), (0, "magnitude"), (0, "slicegpt-offload-cpu"),
         (1, "dense"), (1, "slicegpt"), (1, "fasp"), (1, "magnitude"), (1, "slicegpt-offload-cpu"),
         (0, "modegpt"), (1, "modegpt")]


class DeadlineExceeded(Exception):
    """Raised by the SIGALRM handler when the budget runs out in the middle of an item."""


# --------------------------------------------------------------------------------------------
# phase timers (monkeypatches for this process only; exclusive time, CUDA-synchronised)


class PhaseTimers:
    """Times selected library calls while active. Nested timed calls are counted once (exclusive)."""

    def __init__(self, sync: Callable[[], None]) -> None:
        self.sync = sync
        self.times: dict[str, float] = {}
        self._stack: list[list[Any]] = []
        self._patches: list[tuple[Any, str, Any]] = []

    def _wrap(self, owner: Any, name: str, key: str) -> None:
        f = getattr(owner, name, None)
        if f is None:
            return
        timers = self

        def wrapped(*a: Any, **k: Any) -> Any:
            timers.sync()
            frame = [key, time.perf_counter(), 0.0]
            timers._stack.append(frame)
            try:
                return f(*a, **k)
            finally:
                timers.sync()
                timers._stack.pop()
                elapsed = time.perf_counter() - frame[1]
                timers.times[key] = timers.times.get(key, 0.0) + elapsed - frame[2]
                if timers._stack:
                    timers._stack[-1][2] += elapsed

        self._patches.append((owner, name, f))
        setattr(owner, name, wrapped)

    @contextmanager
    def active(self) -> Iterator["PhaseTimers"]:
        import torch

        import slimformer.calib.offload as off
        import slimformer.calib.stats as stats

        self._wrap(stats.Covariance, "update", "gram")
        for fn in ("eigh", "eigvalsh", "svd", "solve", "solve_triangular", "cholesky", "lstsq", "qr", "inv"):
            self._wrap(torch.linalg, fn, "linalg")
        self._wrap(off.CheckpointSource, "read", "read")
        self._wrap(off.LayerStore, "release", "write")
        try:
            yield self
        finally:
            for owner, name, f in reversed(self._patches):
                setattr(owner, name, f)
            self._patches.clear()


# --------------------------------------------------------------------------------------------
# helpers


def _write_json(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(data, indent=1, default=str))
    os.replace(tmp, path)


def _fmt(x: Any, nd: int = 1) -> str:
    if x is None:
        return "–"
    if isinstance(x, float):
        if abs(x) >= 1e5:
            return f"{x:,.0f}"
        if 0 < abs(x) < 10 ** -nd:  # small but not zero: two significant digits
            return f"{x:.2g}"
        return f"{x:.{nd}f}"
    return str(x)


def render_markdown(data: dict[str, Any]) -> str:
    """The Markdown table of a result JSON (works on partial results)."""
    meta = data.get("meta", {})
    lines = [
        f"# slimformer GPU benchmark ({'TINY dry run' if meta.get('tiny') else 'full'})",
        "",
        f"device: {meta.get('device_name', '?')} ({meta.get('device', '?')}), dtype {meta.get('dtype', '?')}, "
        f"torch {meta.get('torch', '?')}, transformers {meta.get('transformers', '?')}, "
        f"started {meta.get('started', '?')}, total {_fmt(data.get('total_s'))} s "
        f"(budget {_fmt(meta.get('budget_s'), 0)} s)"
        + ("" if data.get("finished") else " — INCOMPLETE (run stopped early)"),
        "",
    ]
    speed = meta.get("speed", {})
    if speed:
        lines += [f"speed: prefill {speed.get('seqlen')} tokens, decode {speed.get('new_tokens')} new tokens "
                  f"(greedy generate, KV cache, eager, no CUDA graphs), warm-up {speed.get('warmup')}, "
                  f"median of {speed.get('repeats')}; tokens/s = batch x tokens / seconds", ""]
    for size, s in data.get("sizes", {}).items():
        dense_params = f"{s['params_dense'] / 1e6:,.1f} M params" if s.get("params_dense") else "dense not built"
        lines += [f"## {size}: {dense_params}, calibration {s.get('calibration')}", ""]
        lines += ["| method | status | params after (removed) | build s | compress s | split of compress s | "
                  "peak GPU GiB | peak RSS GiB | prefill tok/s b1 / b16 | decode tok/s b1 / b16 | "
                  "speed-up prefill b1 / b16 | speed-up decode b1 / b16 |",
                  "|---|---|---|---|---|---|---|---|---|---|---|---|"]
        for r in s.get("runs", []):
            sp = r.get("speed") or {}
            su = r.get("speedup") or {}

            def pair(d: dict[str, Any], key: str, nd: int = 0) -> str:
                return f"{_fmt((d.get('b1') or {}).get(key), nd)} / {_fmt((d.get('b16') or {}).get(key), nd)}"

            params = "–"
            if r.get("params_after"):
                params = f"{r['params_after'] / 1e6:,.{1 if r['params_after'] >= 1e7 else 3}f} M"
                if r.get("removed_fraction") is not None:
                    params += f" ({100 * r['removed_fraction']:.1f}%)"
            split = "; ".join(f"{k} {_fmt(v)}" for k, v in (r.get("phases") or {}).items())
            status = r.get("status", "?")
            if r.get("note"):
                status += f": {r['note']}"
            gpu = r.get("peak_gpu_mb")
            rss = r.get("peak_rss_mb")
            lines.append(
                f"| {r.get('method')} | {status} | {params} | {_fmt(r.get('build_s'))} | {_fmt(r.get('compress_s'))} | "
                f"{split or '–'} | {_fmt(gpu / 1024 if gpu else None, 2)} | {_fmt(rss / 1024 if rss else None, 2)} | "
                f"{pair(sp, 'prefill_tok_s')} | {pair(sp, 'decode_tok_s')} | "
                f"{pair(su, 'prefill', 2)} | {pair(su, 'decode', 2)} |")
        lines.append("")
    for n in data.get("notes", []):
        lines.append(f"* {n}")
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------------------------
# the benchmark


class Bench:
    def __init__(self, args: argparse.Namespace) -> None:
        import torch

        self.args = args
        self.torch = torch
        self.out = Path(args.out_dir)
        self.out.mkdir(parents=True, exist_ok=True)
        self.tiny = args.tiny
        self.sizes = TINY_SIZES if self.tiny else SIZES
        self.calib_shape = TINY_CALIB if self.tiny else CALIB
        self.size_names = list(self.sizes)
        if args.device:
            self.device = torch.device(args.device)
        else:
            self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        self.cuda = self.device.type == "cuda"
        if not self.cuda and not self.tiny and not args.allow_cpu:
            raise SystemExit("no CUDA device: the full benchmark needs a GPU (use --tiny for a CPU dry run)")
        self.dtype = getattr(torch, args.dtype)
        self.deadline = T_START + args.budget_s
        # tiny: short prompts and more new tokens, so decode (= generate - prefill) is not lost in the noise
        self.speed = (dict(seqlen=8, new_tokens=24, warmup=1, repeats=2) if self.tiny
                      else dict(seqlen=args.speed_seqlen, new_tokens=args.new_tokens, warmup=1, repeats=args.repeats))
        self.batches = [1, 16]
        self.calib_batch = 2 if self.tiny else args.calib_batch
        self.scratch = Path(tempfile.mkdtemp(prefix="slimformer-gpu-bench-", dir=args.scratch))
        self.checkpoints: dict[str, Path] = {}
        self.data: dict[str, Any] = {"meta": self._meta(), "sizes": {}, "notes": [], "finished": False}
        self._warm_up()
        for name in self.size_names:
            w, t = self.calib_shape[name]
            self.data["sizes"][name] = {"shape": self.sizes[name], "calibration": f"{w} x {t} random tokens",
                                        "runs": []}

    # -- bookkeeping ----------------------------------------------------------------------------
    def _meta(self) -> dict[str, Any]:
        import torch
        import transformers

        name = torch.cuda.get_device_name(self.device) if self.cuda else platform.processor() or platform.machine()
        return {
            "tiny": self.tiny,
            "started": datetime.datetime.now().isoformat(timespec="seconds"),
            "device": str(self.device),
            "device_name": name,
            "dtype": self.args.dtype,
            "torch": torch.__version__,
            "cuda": torch.version.cuda,
            "transformers": transformers.__version__,
            "python": platform.python_version(),
            "budget_s": self.args.budget_s,
            "speed": self.speed,
            "calibration_batch": self.calib_batch,
            "seed": self.args.seed,
            "command": " ".join(sys.argv),
        }

    def _warm_up(self) -> None:
        """CUDA context and the Llama modeling code, so the first build is not charged for them."""
        from transformers import LlamaConfig, LlamaForCausalLM

        self.torch.empty(1, device=self.device)
        with self.torch.device("meta"):
            LlamaForCausalLM(LlamaConfig(hidden_size=8, intermediate_size=8, num_hidden_layers=1,
                                         num_attention_heads=1, vocab_size=8))
        self.sync()

    def left(self) -> float:
        return self.deadline - time.monotonic()

    def save(self) -> None:
        self.data["total_s"] = round(time.monotonic() - T_START, 1)
        self.data["meta"]["optional_modules_loaded"] = sorted(m for m in OPTIONAL_MODULES if m in sys.modules)
        _write_json(self.out / JSON_NAME, self.data)
        (self.out / MD_NAME).write_text(render_markdown(self.data))

    def log(self, msg: str) -> None:
        print(f"[{time.monotonic() - T_START:7.1f}s] {msg}", flush=True)

    def sync(self) -> None:
        if self.cuda:
            self.torch.cuda.synchronize(self.device)

    def free(self) -> None:
        gc.collect()
        if self.cuda:
            self.torch.cuda.empty_cache()

    # -- models ---------------------------------------------------------------------------------
    def build(self, size: str) -> Any:
        """The random-init model, built directly on the device in the benchmark dtype."""
        torch = self.torch
        from transformers import AutoModelForCausalLM, LlamaConfig

        cfg = LlamaConfig(**self.sizes[size])
        torch.manual_seed(self.args.seed)
        with torch.device(self.device):
            try:
                model = AutoModelForCausalLM.from_config(cfg, dtype=self.dtype)
            except TypeError:  # transformers before ``dtype=``
                model = AutoModelForCausalLM.from_config(cfg, torch_dtype=self.dtype)
        model.eval()
        if {p.dtype for p in model.parameters()} != {self.dtype}:  # older transformers ignore dtype=
            model.to(self.dtype)
        return model

    def calib_ids(self, size: str) -> Any:
        w, t = self.calib_shape[size]
        g = self.torch.Generator().manual_seed(self.args.seed + 1)
        return self.torch.randint(0, self.sizes[size]["vocab_size"], (w, t), generator=g)

    def measure_speed(self, name: str, model: Any) -> tuple[dict[str, Any], float]:
        from slimformer.eval.speed import SpeedSettings, compare_speed

        t0 = time.perf_counter()
        out: dict[str, Any] = {}
        for b in self.batches:
            s = SpeedSettings(batch=b, seed=self.args.seed, **self.speed)
            r = compare_speed({name: model}, s, device=self.device)["models"][name]
            pre, dec = r["prefill_tokens_per_s"], r["decode_tokens_per_s"]
            out[f"b{b}"] = {"prefill_tok_s": pre["median"], "decode_tok_s": dec["median"],
                            "decode_ms_per_token": r["decode_ms_per_token"]["median"],
                            "prefill_tok_s_min_max": [pre["min"], pre["max"]],
                            "decode_tok_s_min_max": [dec["min"], dec["max"]],
                            "peak_gpu_mb": r.get("peak_gpu_mb")}
        return out, time.perf_counter() - t0

    def checkpoint(self, size: str, run: dict[str, Any]) -> Path:
        """The random model saved once (safetensors) for the offloaded run."""
        if size in self.checkpoints:
            return self.checkpoints[size]
        t0 = time.perf_counter()
        model = self.build(size)
        path = self.scratch / f"{size}-dense"
        model.save_pretrained(path)  # safetensors (the only format transformers 5 writes)
        del model
        self.free()
        run["checkpoint_save_s"] = round(time.perf_counter() - t0, 2)
        run["checkpoint_gb"] = round(sum(f.stat().st_size for f in path.glob("*.safetensors")) / 1e9, 2)
        self.checkpoints[size] = path
        return path

    # -- estimates ------------------------------------------------------------------------------
    def estimate(self, si: int, method: str) -> float | None:
        """Seconds the item should take, from the small model's measured run scaled by operation counts."""
        if si == 0:
            return None
        small, big = self.size_names[0], self.size_names[si]
        sizes = self.data["sizes"]
        ref = next((r for r in sizes[small]["runs"] if r["method"] == method and r["status"] == "ok"), None)
        dense_big = next((r for r in sizes[big]["runs"] if r["method"] == "dense" and r["status"] == "ok"), None)
        if method == "dense" or ref is None:
            return None
        a, b = self.sizes[small], self.sizes[big]
        (wa, ta), (wb, tb) = self.calib_shape[small], self.calib_shape[big]

        def block_params(s: dict[str, Any]) -> float:
            h, kv = s["hidden_size"], s["num_key_value_heads"] * s["head_dim"]
            q = s["num_attention_heads"] * s["head_dim"]
            return s["num_hidden_layers"] * (2 * h * q + 2 * h * kv + 3 * h * s["intermediate_size"])

        tok = (wb * tb) / (wa * ta)
        fwd = block_params(b) / block_params(a) * tok
        width = "hidden_size" if METHODS[method]["linalg_width"] == "hidden" else "intermediate_size"
        gram = b["num_hidden_layers"] / a["num_hidden_layers"] * (b[width] / a[width]) ** 2 * tok
        linalg = b["num_hidden_layers"] / a["num_hidden_layers"] * (b[width] / a[width]) ** 3
        io = block_params(b) / block_params(a)
        ph = ref.get("phases", {})
        known = {"gram": gram, "linalg": linalg,
                 "read": io, "write": io}
        est = sum(ph.get(k, 0.0) * f for k, f in known.items())
        est += max(ref["compress_s"] - sum(ph.get(k, 0.0) for k in known), 0.0) * fwd
        est += ref.get("build_s", 0.0) * io + ref.get("load_s", 0.0) * io
        if method.endswith("offload-cpu") and big not in self.checkpoints:
            est += ref.get("checkpoint_save_s", 0.0) * io
        est += dense_big["speed_s"] if dense_big else ref.get("speed_s", 0.0) * fwd
        return self.args.estimate_margin * est

    # -- items ----------------------------------------------------------------------------------
    def run_dense(self, size: str, run: dict[str, Any]) -> None:
        torch = self.torch
        if self.cuda:
            torch.cuda.reset_peak_memory_stats(self.device)
        from slimformer.memory import peak_rss_mb, reset_peak_rss

        reset_peak_rss()
        t0 = time.perf_counter()
        model = self.build(size)
        self.sync()
        run["build_s"] = round(time.perf_counter() - t0, 3)
        run["params_after"] = sum(p.numel() for p in model.parameters())
        self.data["sizes"][size]["params_dense"] = run["params_after"]
        if self.cuda:
            run["peak_gpu_mb"] = round(torch.cuda.max_memory_allocated(self.device) / 2**20, 1)
        run["peak_rss_mb"] = round(peak_rss_mb(), 1)
        self.log(f"{size}: dense built in {run['build_s']:.1f}s ({run['params_after'] / 1e6:.1f} M params)")
        run["speed"], run["speed_s"] = self.measure_speed("dense", model)
        del model

    def run_method(self, size: str, method: str, run: dict[str, Any]) -> None:
        import slimformer as sf
        from slimformer.memory import peak_rss_mb, reset_peak_rss, rss_mb

        torch = self.torch
        spec = METHODS[method]
        ids = self.calib_ids(size) if spec["calib"] else None
        if spec["calib"]:
            run["calibration"] = self.data["sizes"][size]["calibration"]
        timers = PhaseTimers(self.sync)
        model = None
        if spec["offload"]:
            src = self.checkpoint(size, run)
            out = self.scratch / f"{size}-{method}"
            if self.cuda:
                torch.cuda.reset_peak_memory_stats(self.device)
            reset_peak_rss()
            run["rss_at_start_mb"] = round(rss_mb(), 1)
            t0 = time.perf_counter()
            with timers.active():
                result = sf.compress_offloaded(src, spec["config"](sf), ids, out, offload=spec["offload"],
                                               device=self.device, dtype=self.dtype, batch_size=self.calib_batch,
                                               progress=False)
            self.sync()
            run["compress_s"] = round(time.perf_counter() - t0, 3)
            run["build_s"] = 0.0  # nothing is built: compress_offloaded streams the checkpoint (reads are in the split)
            report = result.report
            if self.cuda:
                run["peak_gpu_mb"] = round(torch.cuda.max_memory_allocated(self.device) / 2**20, 1)
            run["peak_rss_mb"] = round(peak_rss_mb(), 1)
            del result
            self.free()
            t0 = time.perf_counter()
            model, _ = sf.load_model(out, dtype=self.dtype, device=self.device)
            self.sync()
            run["load_s"] = round(time.perf_counter() - t0, 3)
        else:
            if self.cuda:
                torch.cuda.reset_peak_memory_stats(self.device)
            reset_peak_rss()
            run["rss_at_start_mb"] = round(rss_mb(), 1)
            t0 = time.perf_counter()
            model = self.build(size)
            self.sync()
            run["build_s"] = round(time.perf_counter() - t0, 3)
            t0 = time.perf_counter()
            with timers.active():
                result = sf.compress(model, spec["config"](sf), ids, batch_size=self.calib_batch, progress=False)
            self.sync()
            run["compress_s"] = round(time.perf_counter() - t0, 3)
            report = result.report
            if self.cuda:
                run["peak_gpu_mb"] = round(torch.cuda.max_memory_allocated(self.device) / 2**20, 1)
            run["peak_rss_mb"] = round(peak_rss_mb(), 1)
            del result
        phases = {k: round(v, 3) for k, v in timers.times.items()}
        phases["rest"] = round(max(run["compress_s"] - sum(timers.times.values()), 0.0), 3)
        run["phases"] = phases
        run["report"] = {k: report.get(k) for k in ("seconds", "params_before", "params_after", "removed_fraction",
                                                    "peak_gpu_mb", "peak_rss_mb", "rss_at_start_mb", "device",
                                                    "dtype", "offload", "sparsity", "schedule", "target_params")}
        run["params_after"] = report.get("params_after")
        run["removed_fraction"] = report.get("removed_fraction")
        self.log(f"{size}: {method} compressed in {run['compress_s']:.1f}s "
                 f"({100 * (run['removed_fraction'] or 0):.1f}% removed) phases {phases}")
        run["speed"], run["speed_s"] = self.measure_speed(method, model)
        del model
        if spec["offload"]:  # free the disk (one offloaded run per size)
            shutil.rmtree(self.scratch / f"{size}-{method}", ignore_errors=True)
            shutil.rmtree(self.checkpoints.pop(size), ignore_errors=True)

    def speedups(self, size: str, run: dict[str, Any]) -> None:
        dense = next((r for r in self.data["sizes"][size]["runs"] if r["method"] == "dense" and r["status"] == "ok"),
                     None)
        if dense is None or not run.get("speed"):
            return
        run["speedup"] = {b: {"prefill": run["speed"][b]["prefill_tok_s"] / dense["speed"][b]["prefill_tok_s"],
                              "decode": run["speed"][b]["decode_tok_s"] / dense["speed"][b]["decode_tok_s"]}
                          for b in run["speed"] if b in dense.get("speed", {})}

    def main(self) -> int:
        # run.sh's outer timeout sends SIGINT; a shell may have started us with SIGINT ignored
        signal.signal(signal.SIGINT, signal.default_int_handler)
        signal.signal(signal.SIGTERM, signal.default_int_handler)
        signal.signal(signal.SIGALRM, self._alarm)
        signal.setitimer(signal.ITIMER_REAL, max(self.left(), 0.01))
        stopped = None
        items = []
        for si, method in ORDER:  # every row exists from the start (a killed run shows what is missing)
            if si >= len(self.size_names) or (self.args.only and method not in self.args.only):
                continue
            size = self.size_names[si]
            run: dict[str, Any] = {"method": method, "label": "dense (random init)" if method == "dense"
                                   else METHODS[method]["label"], "status": "pending"}
            self.data["sizes"][size]["runs"].append(run)
            items.append((si, size, method, run))
        for size in self.size_names:  # table order: dense first, then the methods in METHODS order
            rank = ["dense", *METHODS]
            self.data["sizes"][size]["runs"].sort(key=lambda r: rank.index(r["method"]))
        try:
            for si, size, method, run in items:
                if stopped:
                    run.update(status="skipped", note=stopped)
                    continue
                est = self.estimate(si, method) if self.args.estimate_margin > 0 else None
                if est is not None:
                    run["estimated_s"] = round(est, 1)
                floor = 2.0 if self.tiny else 15.0
                if est is not None and est > self.left() or self.left() < floor:
                    why = (f"estimated {est:.0f} s" if est is not None and est > self.left()
                           else f"under the {floor:.0f} s minimum")
                    run.update(status="skipped", note=f"budget: {why}, {max(self.left(), 0):.0f} s left")
                    self.log(f"{size}: {method} skipped ({run['note']})")
                    self.save()
                    continue
                t0 = time.perf_counter()
                run["status"] = "running"
                try:
                    if method == "dense":
                        self.run_dense(size, run)
                    else:
                        self.run_method(size, method, run)
                        self.speedups(size, run)
                    run["status"] = "ok"
                except DeadlineExceeded:
                    run.update(status="aborted", note=f"deadline reached after {time.perf_counter() - t0:.0f} s")
                    stopped = "deadline reached earlier"
                    self.log(f"{size}: {method} aborted at the deadline")
                except KeyboardInterrupt:
                    run.update(status="aborted", note="interrupted (outer timeout)")
                    stopped = "interrupted"
                    raise
                except Exception as exc:  # one failing method must not lose the others
                    if self.cuda and isinstance(exc, self.torch.cuda.OutOfMemoryError):
                        run["note"] = "CUDA out of memory"
                    run.update(status="failed", error=f"{type(exc).__name__}: {exc}"[:2000],
                               traceback=traceback.format_exc()[-4000:])
                    self.log(f"{size}: {method} FAILED: {type(exc).__name__}: {exc}")
                finally:
                    run["item_wall_s"] = round(time.perf_counter() - t0, 2)
                    self.free()
                    self.save()
            signal.setitimer(signal.ITIMER_REAL, 0)
            self.data["finished"] = True
        except DeadlineExceeded:  # between items (while saving, freeing or skipping)
            stopped = "budget: deadline reached"
            self.log("deadline reached between items")
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
            for v in self.data["sizes"].values():
                for r in v["runs"]:
                    if r["status"] in ("pending", "running"):
                        r.update(status="skipped", note=stopped or "deadline or interruption")
            shutil.rmtree(self.scratch, ignore_errors=True)
            self._notes()
            self.save()
        failed = [(s, r["method"]) for s, v in self.data["sizes"].items() for r in v["runs"] if r["status"] == "failed"]
        return 1 if failed else 0

    def _alarm(self, signum: int, frame: Any) -> None:
        signal.setitimer(signal.ITIMER_REAL, 0)
        raise DeadlineExceeded()

    def _notes(self) -> None:
        n = self.data["notes"]
        n.append(f"Random-init weights (std 0.02), {'TINY' if self.tiny else 'real'} shapes; calibration on "
                 "uniformly random token windows: "
                 + ", ".join(f"{k} {v['calibration']}" for k, v in self.data["sizes"].items())
                 + f"; calibration batch {self.calib_batch}. Times measure cost, not quality.")
        n.append("build s: random init directly on the device in the benchmark dtype (nothing on the CPU). "
                 "For the offloaded run build s is 0: it streams a checkpoint saved once (checkpoint_save_s in the "
                 "JSON), and load_s (reading the compressed output back for the speed test) is in the JSON.")
        n.append("split of compress s (exclusive, CUDA-synchronised): gram = Covariance.update (float64 "
                 "covariance/Gram sums), linalg = torch.linalg eigh/svd/solve/cholesky/lstsq, read = checkpoint "
                 "reads, write = block writes (offloaded run), rest = calibration forwards, rotations/pruning, "
                 "bookkeeping.")
        n.append("peak GPU: torch.cuda.max_memory_allocated over build + compression (reset per run); the speed "
                 "test's own peak is in the JSON. peak RSS: the process VmHWM, reset before each run (includes "
                 "the CUDA context and Python/torch themselves).")
        n.append("speed-up = compressed tokens/s / dense tokens/s, both measured in this process.")
        skipped = [f"{s}/{r['method']} ({r['status']}: {r.get('note', r.get('error', ''))})"
                   for s, v in self.data["sizes"].items() for r in v["runs"] if r["status"] != "ok"]
        if skipped:
            n.append("Not measured: " + "; ".join(skipped))


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out_dir")
    ap.add_argument("--tiny", action="store_true", help="tiny shapes on whatever device is there (seconds)")
    ap.add_argument("--render", action="store_true", help="only print the table from OUT_DIR/gpu_bench.json")
    ap.add_argument("--budget-s", type=float, default=None,
                    help="deadline from process start (default 420 s; --tiny 240 s)")
    ap.add_argument("--device", default=None, help="default: cuda if available, else cpu")
    ap.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--calib-batch", type=int, default=8, help="calibration windows per forward")
    ap.add_argument("--speed-seqlen", type=int, default=512)
    ap.add_argument("--new-tokens", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--only", type=lambda s: s.split(","), default=None,
                    help="comma list of items to run (dense,slicegpt,fasp,modegpt,magnitude,slicegpt-offload-cpu)")
    ap.add_argument("--estimate-margin", type=float, default=1.2,
                    help="skip a large-model item when margin x its estimate exceeds the time left (0: never "
                         "skip by estimate; the deadline timer still stops a run that overruns)")
    ap.add_argument("--scratch", default=None, help="where the checkpoints for the offloaded run go (default $TMPDIR)")
    ap.add_argument("--allow-cpu", action="store_true", help="run the full shapes without a GPU (very slow)")
    args = ap.parse_args(argv)
    if args.budget_s is None:
        args.budget_s = 240.0 if args.tiny else 420.0
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    out = Path(args.out_dir)
    if args.render:
        path = out / JSON_NAME
        if not path.exists():
            print(f"no results in {path}", file=sys.stderr)
            return 1
        text = render_markdown(json.loads(path.read_text()))
        (out / MD_NAME).write_text(text)
        print(text)
        return 0
    try:
        return Bench(args).main()
    except KeyboardInterrupt:  # the outer timeout (run.sh) or ^C: the items so far are saved already
        print(f"interrupted: the items measured so far are in {out / JSON_NAME}", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
