"""Command line interface: a thin layer over :mod:`slimformer.api`.

Method and fine-tune options are generated from the config dataclasses
(:mod:`slimformer.cli_options`), so the CLI and the Python API cannot drift apart.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import threading
from pathlib import Path
from typing import Any, NoReturn, Sequence

from ._version import __version__
from .cli_options import add_config_options as _add_config_options
from .cli_options import add_method_options as _add_method_options
from .cli_options import attribute_docs as _attribute_docs  # noqa: F401 (tests)
from .cli_options import build_config, build_method_config
from .cli_options import plain as _plain  # noqa: F401 (tests)
from .validate import DTYPE_NAMES, require_dir

logger = logging.getLogger("slimformer.cli")

DTYPE_CHOICES = DTYPE_NAMES  # --dtype


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors: ``slimformer: error: ...`` on stderr and exit code 2,
    without the usage dump (subparsers are built with the same class)."""

    def error(self, message: str, command: str | None = None) -> NoReturn:  # type: ignore[override]
        command = command or (self.prog.split(" ", 1)[1] if " " in self.prog else "")
        see = f"slimformer {command} --help" if command else "slimformer --help"
        self.exit(2, f"slimformer: error: {' '.join(message.split())} (see '{see}')\n")

    def parse_args(self, args: Sequence[str] | None = None,  # type: ignore[override]
                   namespace: argparse.Namespace | None = None) -> argparse.Namespace:
        ns, extras = self.parse_known_args(args, namespace)
        if extras:  # a subcommand's unknown options: point at that subcommand's help
            self.error(f"unrecognized arguments: {' '.join(extras)}", getattr(ns, "command", None))
        return ns


def _parser() -> argparse.ArgumentParser:
    from .methods import method_names

    p = _Parser(prog="slimformer", description="Structured width compression of causal LLMs.")
    p.add_argument("--version", action="version", version=f"slimformer {__version__}")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = p.add_subparsers(dest="command", required=True)

    c = sub.add_parser("compress", help="compress a model and save it")
    c.add_argument("model", help="hub id or local model directory")
    c.add_argument("--method", required=True, help=f"one of: {', '.join(method_names())}")
    c.add_argument("--calib", help="calibration text: local .txt/.raw/.jsonl file or wikitext2|ptb|c4|alpaca")
    c.add_argument("--calib-split", default=None, help="split of a hub dataset (default: train)")
    c.add_argument("--calib-samples", type=int, default=128, help="number of calibration windows (default 128)")
    c.add_argument("--calib-seqlen", type=int, default=None,
                   help="tokens per calibration window (default: 2048, or the model's context if shorter)")
    c.add_argument("--seed", type=int, default=0, help="seed of the calibration windows (default 0)")
    c.add_argument("--device", default="cpu", help="compute device, e.g. cpu, cuda, cuda:1 (default cpu)")
    c.add_argument("--dtype", choices=DTYPE_CHOICES, default=None, help="load dtype (default: the checkpoint's)")
    c.add_argument("--batch-size", type=int, default=8, help="calibration windows per forward (default 8)")
    c.add_argument("--offload-activations", action="store_true", help="keep cached activations on CPU")
    c.add_argument("--offload", choices=("cpu", "disk"), default=None,
                   help="sequential onloading: never load the whole model; each block is read from the checkpoint's "
                        "safetensors onto --device while it is processed and written to --out right after; "
                        "calibration activations on CPU or in files (disk). Needs --out")
    c.add_argument("--out", help="output directory (written atomically)")
    c.add_argument("--dry-run", action="store_true", help="compress and report without saving (instead of --out)")
    c.add_argument("--overwrite", action="store_true", help="replace a non-empty --out")
    c.add_argument("--plain", action="store_true",
                   help="insist on an ordinary HF config (no remote code) and fail saying why when the model needs "
                        "one; without it a model is saved plain whenever its shapes allow (uniform MLP widths and "
                        "head counts, no rotated residual stream)")
    c.add_argument("--no-progress", action="store_true", help="hide progress bars")
    _add_method_options(c)

    b = sub.add_parser("bench", help="speed and memory of a model vs. a baseline, side by side")
    b.add_argument("model", help="model to measure (usually a slimformer output directory)")
    b.add_argument("--baseline", help="dense model to compare with (hub id or directory)")
    b.add_argument("--batch-size", dest="batch", metavar="BATCH_SIZE", type=int, default=1,
                   help="sequences per forward (default 1)")
    b.add_argument("--batch", dest="batch", type=int, default=argparse.SUPPRESS, help=argparse.SUPPRESS)  # old name
    b.add_argument("--seqlen", type=int, default=128, help="prompt length for prefill (default 128)")
    b.add_argument("--new-tokens", type=int, default=32, help="tokens decoded with the KV cache (default 32)")
    b.add_argument("--warmup", type=int, default=1)
    b.add_argument("--repeats", type=int, default=5)
    b.add_argument("--threads", type=int, default=None, help="torch intra-op threads (fix it for stable numbers)")
    b.add_argument("--device", default="cpu")
    b.add_argument("--dtype", choices=DTYPE_CHOICES, default=None)
    b.add_argument("--json", dest="json_out", help="write the result as JSON to this file")
    b.add_argument("--no-progress", action="store_true", help="hide the progress bar")

    r = sub.add_parser("report", help="render result JSON files into a Markdown table and PNG plots")
    r.add_argument("results", nargs="+", help="JSON files from compress (slimformer_report.json), eval --json, bench --json")
    r.add_argument("--out", required=True, help="output directory for report.md and the plots")

    i = sub.add_parser("info", help="show the plan, parameters and provenance of a saved model")
    i.add_argument("dir", help="slimformer output directory")
    i.add_argument("--json", dest="json_out", action="store_true", help="print the raw slimformer section as JSON")

    e = sub.add_parser("eval", help="evaluate a dense or compressed model")
    e.add_argument("model", help="hub id, local model directory, or slimformer output directory")
    e.add_argument("--ppl", default=None, help="text for perplexity: local file or wikitext2|ptb|c4")
    e.add_argument("--tasks", default=None,
                   help="zero-shot lm-eval tasks, comma-separated: piqa,hellaswag,arc_easy,arc_challenge,winogrande")
    e.add_argument("--tasks-data", default=None, metavar="DIR",
                   help="local task data (layout of shared/data) instead of the hub (default: $SLIMFORMER_TASKS_DATA)")
    e.add_argument("--limit", type=int, default=None, metavar="N", help="first N examples of each task (default: all)")
    e.add_argument("--tasks-batch-size", type=int, default=8, help="lm-eval batch size for --tasks (default 8)")
    e.add_argument("--ppl-split", default=None, help="split of a hub dataset (default: test)")
    e.add_argument("--seqlen", type=int, default=2048, help="window length (default 2048)")
    e.add_argument("--stride", type=int, default=None, help="sliding-window stride (default: non-overlapping)")
    e.add_argument("--batch-size", type=int, default=4)
    e.add_argument("--max-tokens", type=int, default=None, help="evaluate only the first N tokens")
    e.add_argument("--device", default="cpu")
    e.add_argument("--dtype", choices=DTYPE_CHOICES, default=None)
    e.add_argument("--json", dest="json_out", help="write the result as JSON to this file")
    e.add_argument("--no-progress", action="store_true")
    _add_finetune_parser(sub)
    _add_pack_parsers(sub)
    _add_verify_parser(sub)
    _add_export_parser(sub)
    return p


def check_device(device: str) -> None:
    """Clear error for a device string torch does not know or this machine lacks."""
    import torch

    try:
        dev = torch.device(device)
    except RuntimeError as exc:
        raise ValueError(f"unknown device {device!r}: use cpu, cuda or cuda:N") from exc
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"device {device} requested but CUDA is not available here; use --device cpu")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise RuntimeError(f"device {device} does not exist ({torch.cuda.device_count()} CUDA devices)")


def _check_architecture(name: str) -> Any:
    """Fail before loading weights when the model family is unsupported; returns the config
    (``None`` when it cannot be read here: :func:`load_model` then reports why)."""
    from transformers import AutoConfig

    from .arch import get_adapter

    if Path(name).expanduser().exists() and not (Path(name).expanduser() / "config.json").is_file():
        raise FileNotFoundError(f"{name} has no config.json: not a Hugging Face model directory")
    try:
        config = AutoConfig.from_pretrained(name)
    except (OSError, ValueError):
        return None  # load_model reports missing/unreadable models with its own message
    get_adapter(config)
    return config


def _cmd_compress(args: argparse.Namespace) -> int:
    """Compress; under ``torchrun`` every rank calibrates on its shard and rank 0 saves."""
    from .calib import dist

    config = build_method_config(args.method, args)  # validates sparsity etc. before any work
    check_device(args.device)
    info, device = dist.init_from_env(args.device)
    try:
        return _compress(args, config, str(device), info)
    finally:
        dist.shutdown()


def _compress(args: argparse.Namespace, config: Any, device: str, info: Any) -> int:
    from .api import compress, load_model
    from .data import load_text
    from .io.outputs import check_output_dir
    from .methods import get_method

    if args.out:
        check_output_dir(args.out, args.overwrite, inputs=_compress_inputs(args, config))
    elif not args.dry_run:
        raise ValueError("pass --out DIR to save the compressed model (or --dry-run to compress and report only)")
    if args.out and args.dry_run:
        raise ValueError("--dry-run saves nothing: drop --out, or drop --dry-run to save")
    spec = get_method(args.method)
    if spec.needs_calibration and not args.calib:
        raise ValueError(f"method {args.method} needs calibration data: pass --calib FILE_OR_NAME")
    if args.calib and not spec.accepts_calibration:
        raise ValueError(f"method {args.method} is calibration-free: drop --calib")
    # fails fast on a missing file; no data is read at all without --calib
    source = load_text(args.calib, split=args.calib_split) if args.calib else None
    model_config = _check_architecture(args.model)  # before loading any weights
    args.calib_seqlen = _calib_seqlen(args.calib_seqlen, model_config)
    if args.offload:
        return _compress_offloaded(args, config, device, info, source)
    from .memory import reset_peak_rss, rss_mb

    reset_peak_rss()  # the report's peak then covers loading + compression, not imports
    rss_before_load = rss_mb()
    model, tok = load_model(args.model, dtype=args.dtype)
    if model_config is None:  # e.g. a hub id: the positions are known now
        args.calib_seqlen = _calib_seqlen(args.calib_seqlen, model.config)
    if args.out:  # room for the output before the work (untied heads/shortcuts can add ~10%)
        from .io.outputs import check_free_space

        check_free_space(args.out, int(1.1 * sum(p.numel() * p.element_size() for p in model.parameters())),
                         "the compressed model")
    calib = _calibration(args, source, tok)
    result = compress(
        model, config, calib, device=device, batch_size=args.batch_size,
        offload_activations=args.offload_activations, progress=not args.no_progress and info.main,
        tokenizer=tok, seed=args.seed,
    )
    if not info.main:  # every rank holds the same compressed model; rank 0 reports and saves
        return 0  # (no collective follows compress(), so no rank can be left waiting)
    result.report["rss_before_load_mb"] = round(rss_before_load, 1)
    _print_compression(result.report)
    if args.out:
        out = result.save(args.out, overwrite=args.overwrite, plain=True if args.plain else None)
        print(f"saved to {out}")
    else:
        print("dry run: nothing saved (pass --out DIR to save)")
    return 0


def _compress_inputs(args: argparse.Namespace, config: Any) -> tuple[Any, ...]:
    """Every path ``compress`` reads: --out may not be or contain one of them."""
    return (args.model, args.calib, getattr(config, "policy", None), getattr(config, "checkpoint", None))


def _calib_seqlen(requested: int | None, model_config: Any) -> int | None:
    """``--calib-seqlen``: the default is ``min(2048, positions)``; longer than the positions is refused."""
    from .api import check_calib_length, max_positions

    limit = max_positions(model_config) if model_config is not None else None
    if requested is None:
        return min(2048, limit) if limit is not None else (None if model_config is None else 2048)
    if model_config is not None:
        check_calib_length(model_config, requested)
    return requested


def _calibration(args: argparse.Namespace, source: Any, tok: Any) -> Any:
    """Tokenised calibration windows from ``--calib*`` (``None`` without ``--calib``)."""
    from .data import load

    if source is None:
        return None
    if tok is None:
        raise ValueError(f"no tokenizer found for {args.model}; calibration text cannot be tokenised")
    return load(source, tok, samples=args.calib_samples, seqlen=args.calib_seqlen or 2048, seed=args.seed)


def _compress_offloaded(args: argparse.Namespace, config: Any, device: str, info: Any, source: Any) -> int:
    """``--offload cpu|disk``: stream the blocks from the checkpoint and write --out as they finish."""
    from .api import compress_offloaded, offload_method_names
    from .io.format import load_tokenizer
    from .methods import get_method

    if not args.out:
        raise ValueError("--offload writes the model while compressing it: pass --out DIR")
    if args.plain:
        raise ValueError("--offload does not support --plain")
    if not get_method(args.method).offload:
        raise ValueError(f"method {args.method} needs every block in memory at once; --offload works with: "
                         f"{', '.join(offload_method_names())}")
    tok = load_tokenizer(args.model)
    calib = _calibration(args, source, tok)
    result = compress_offloaded(
        args.model, config, calib, args.out, offload=args.offload, device=device, dtype=args.dtype,
        batch_size=args.batch_size, progress=not args.no_progress and info.main, tokenizer=tok, seed=args.seed,
        overwrite=args.overwrite, writer=info.main,
    )
    if not info.main:
        return 0
    _print_compression(result.report)
    print(f"saved to {Path(args.out).absolute()} (offloaded: {args.offload})")
    return 0


def _print_compression(r: dict[str, Any]) -> None:
    print(
        f"{r['method']}: params {r['params_before']:,} -> {r['params_after']:,} "
        f"({100 * r['removed_fraction']:.2f}% removed) in {r['seconds']:.1f}s, peak RSS {r['peak_rss_mb']:.0f} MB"
    )
    if r.get("target_params"):
        t = r["target_params"]
        how = (f" ({r['schedule']} schedule, mean slicing {r.get('sparsity', 0):.4f})" if "schedule" in r else
               f" (global logit offset {r['budget_adjustment']['logit_offset']:+.4f})" if "budget_adjustment" in r else "")
        print(f"target params: requested {100 * t['requested']:.2f}% removed, achieved {100 * t['achieved']:.2f}%{how}")
    if r.get("world_size", 1) > 1:
        print(f"data-parallel calibration over {r['world_size']} ranks")
    for text in r.get("warnings", []):
        print(f"warning: {text}")


def _cmd_eval(args: argparse.Namespace) -> int:
    from .api import library_versions, load_model
    from .data import load_text
    from .eval import perplexity
    from .io.format import describe_compression

    check_device(args.device)
    if not args.ppl and not args.tasks:
        raise ValueError("eval needs --ppl TEXT and/or --tasks piqa,hellaswag,arc_easy,arc_challenge,winogrande")
    _check_json_out(args, (args.model, args.ppl, args.tasks_data))
    names, tasks_data = None, None
    if args.tasks:  # validate tasks, --limit and --tasks-data before loading anything
        from .eval.zeroshot import check_zero_shot_args

        names, tasks_data = check_zero_shot_args(args.tasks, args.limit, args.tasks_batch_size, args.tasks_data)
    elif args.limit is not None or args.tasks_data is not None:
        raise ValueError("--limit and --tasks-data apply to --tasks only")
    source = None
    if args.ppl:
        source = load_text(args.ppl, split=args.ppl_split or ("test" if not Path(args.ppl).exists() else None))
    model, tok = load_model(args.model, dtype=args.dtype, device=args.device)
    if tok is None:
        raise ValueError(f"no tokenizer found for {args.model}")
    out: dict[str, Any] = {}
    if source is not None:
        res = perplexity(
            model, tok, source, seqlen=args.seqlen, batch_size=args.batch_size, max_tokens=args.max_tokens,
            stride=args.stride, device=args.device, progress=not args.no_progress,
        )
        print(f"perplexity {res.ppl:.4f} on {res.tokens:,} tokens of {res.data} (seqlen {res.seqlen})")
        out.update(res.to_dict())
    if names:
        from .eval.zeroshot import format_table, zero_shot

        zs = zero_shot(model, tok, names, limit=args.limit, batch_size=args.tasks_batch_size,
                       tasks_data=tasks_data, device=args.device)
        where = f"local data {tasks_data}" if tasks_data is not None else "hub datasets"
        limit = f"first {args.limit} examples per task" if args.limit else "all examples"
        print(f"zero-shot (lm-eval {zs['settings']['lm_eval_version']}, {where}, {limit}):")
        print(format_table(zs))
        out["zero_shot"] = zs
    out["compression"] = describe_compression(args.model)
    out["settings"] = {
        "model": args.model, "device": args.device, "dtype": args.dtype, "versions": library_versions(),
        "ppl": args.ppl, "ppl_split": args.ppl_split, "seqlen": args.seqlen, "stride": args.stride,
        "batch_size": args.batch_size, "max_tokens": args.max_tokens,
        "tasks": names, "tasks_data": str(tasks_data) if tasks_data is not None else None,
        "limit": args.limit, "tasks_batch_size": args.tasks_batch_size,
    }
    _write_json_out(args, out)
    return 0


def _cmd_bench(args: argparse.Namespace) -> int:
    from .api import library_versions, load_model
    from .eval.speed import SpeedSettings, compare_speed
    from .io.format import describe_compression

    check_device(args.device)
    _check_json_out(args, (args.model, args.baseline))
    settings = SpeedSettings(batch=args.batch, seqlen=args.seqlen, new_tokens=args.new_tokens,
                             warmup=args.warmup, repeats=args.repeats, threads=args.threads)
    models = {}
    if args.baseline:
        models["baseline"] = load_model(args.baseline, dtype=args.dtype, device=args.device)[0]
    models["model"] = load_model(args.model, dtype=args.dtype, device=args.device)[0]
    res = compare_speed(models, settings, device=args.device, progress=not args.no_progress)
    res["paths"] = {"model": args.model, "baseline": args.baseline}
    res["versions"] = library_versions()
    res["compression"] = describe_compression(args.model)
    for name, r in res["models"].items():
        print(f"{name:9s} prefill {r['prefill_tokens_per_s']['median']:10.1f} tok/s   decode "
              f"{r['decode_tokens_per_s']['median']:8.1f} tok/s ({r['decode_ms_per_token']['median']:.2f} ms/token)"
              f"   params {r['params']:,} ({r['param_mb']:.1f} MB)")
    if "speedup" in res:
        sp = res["speedup"]
        print(f"speed-up  prefill x{sp['prefill']:.3f}  decode x{sp['decode']:.3f}  "
              f"(expected from matmul FLOPs x{sp['matmul_flops']:.3f})")
    _write_json_out(args, res)
    return 0


def _check_json_out(args: argparse.Namespace, inputs: tuple[Any, ...]) -> None:
    """``--json FILE``: checked before the work (not a directory, not an input, writable)."""
    from .io.outputs import check_json_out

    check_json_out(getattr(args, "json_out", None), inputs)


def _write_json_out(args: argparse.Namespace, record: dict[str, Any]) -> None:
    """Write ``--json FILE`` atomically (a crash leaves the previous file or none)."""
    if getattr(args, "json_out", None):
        from .io.outputs import write_text_atomic

        write_text_atomic(args.json_out, json.dumps(record, indent=2, default=str) + "\n")


def _cmd_report(args: argparse.Namespace) -> int:
    from .eval.report import render_report

    path = render_report(args.results, args.out)
    print(f"wrote {path} and its plots")
    return 0


def _add_pack_parsers(sub: Any) -> None:
    """``slimformer pack DIR FILE`` / ``slimformer unpack FILE DIR`` (bits-back storage)."""
    k = sub.add_parser("pack", help="store a saved model losslessly in one bits-back coded file")
    k.add_argument("dir", help="model directory (slimformer output, or any safetensors HF model)")
    k.add_argument("file", help="pack file to write (atomically)")
    k.add_argument("--no-bitsback", action="store_true", help="entropy-code the weights as they are (baseline)")
    k.add_argument("--overwrite", action="store_true", help="replace an existing pack file")
    k.add_argument("--no-verify", action="store_true",
                   help="skip the self-check that runs the model before and after the rotation (large models)")
    k.add_argument("--no-progress", action="store_true", help="hide progress bars")
    u = sub.add_parser("unpack", help="restore a model directory from a pack file")
    u.add_argument("file", help="pack file written by slimformer pack")
    u.add_argument("dir", help="output directory (written atomically)")
    u.add_argument("--overwrite", action="store_true", help="replace a non-empty output directory")
    u.add_argument("--no-progress", action="store_true", help="hide progress bars")


def _cmd_pack(args: argparse.Namespace) -> int:
    from .io.bitsback import pack

    st = pack(args.dir, args.file, bitsback=not args.no_bitsback, progress=not args.no_progress,
              overwrite=args.overwrite, verify=not args.no_verify)
    weight_bits = 8 * st.file_bytes - st.meta_bits
    print(f"packed {args.dir} -> {args.file}: {st.file_bytes:,} bytes ({st.weight_bytes_raw:,} bytes of raw weights), "
          f"{weight_bits / max(st.n_weights, 1):.3f} bits/weight; bits-back {st.bitsback_bits:,} bits "
          f"({st.correction_bits:,} bits of corrections, {len(st.groups)} rotation groups) in {st.seconds:.1f}s")
    return 0


def _cmd_unpack(args: argparse.Namespace) -> int:
    from .io.bitsback import unpack

    out = unpack(args.file, args.dir, overwrite=args.overwrite, progress=not args.no_progress)
    print(f"unpacked {args.file} -> {out}")
    return 0


def _add_finetune_parser(sub: Any) -> None:
    """``slimformer finetune``: the settings options are generated from :class:`slimformer.FinetuneConfig`.

    ``--learning-rate`` / ``--batch-size`` set the config's ``lr`` / ``batch`` (the CLI's
    names for them everywhere); ``--lr`` / ``--batch`` still parse (hidden).
    """
    from .finetune_config import FinetuneConfig  # torch-free

    d = FinetuneConfig()
    f = sub.add_parser("finetune", help="recovery fine-tune a compressed model with LoRA, merge and save it")
    f.add_argument("dir", help="slimformer output directory (a compressed model)")
    f.add_argument("--data", required=True, help="training text: local .txt/.raw/.jsonl file or wikitext2|ptb|c4|alpaca")
    f.add_argument("--out", required=True, help="output directory for the merged model (written atomically)")
    f.add_argument("--eval-data", default=None,
                   help=f"held-out text for perplexity (default: the last {100 * d.holdout:.0f}%% of --data's tokens)")
    f.add_argument("--device", default="cpu", help="training device (default cpu)")
    f.add_argument("--keep-adapter", default=None, metavar="DIR",
                   help="also save the unmerged peft adapter to DIR (peft cannot hold LoRA on head-pruned "
                        "v/o/q/k: those then stay frozen; DISP models are refused)")
    f.add_argument("--overwrite", action="store_true", help="replace non-empty --out / --keep-adapter directories")
    f.add_argument("--json", dest="json_out", help="write the fine-tune record as JSON to this file")
    f.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    _add_config_options(f.add_argument_group("fine-tune settings (from FinetuneConfig)"), FinetuneConfig)


def _cmd_finetune(args: argparse.Namespace) -> int:
    from .data import load_text
    from .finetune import FinetuneConfig, finetune
    from .io.outputs import check_free_space, check_output_dir

    config = build_config(FinetuneConfig, args)  # validates before any work
    check_device(args.device)
    require_dir(args.dir)
    inputs = (args.dir, args.data, args.eval_data)
    check_output_dir(args.out, args.overwrite, inputs=inputs)
    if args.keep_adapter is not None:
        check_output_dir(args.keep_adapter, args.overwrite, inputs=inputs + (args.out,), what="adapter directory")
        a, o = Path(args.keep_adapter).absolute(), Path(args.out).absolute()
        if a == o or a in o.parents or o in a.parents:
            raise ValueError("--keep-adapter and --out must be separate directories (neither inside the other)")
    _check_json_out(args, inputs)
    check_free_space(args.out, int(1.05 * sum(f.stat().st_size for f in Path(args.dir).glob("*.safetensors"))),
                     "the fine-tuned model")
    data = load_text(args.data)  # fail fast on a missing file
    eval_data = load_text(args.eval_data, split="validation") if args.eval_data else None
    result = finetune(args.dir, data, config, eval_data=eval_data, keep_adapter=args.keep_adapter,
                      overwrite=args.overwrite, device=args.device, progress=not args.no_progress)
    r = result.record
    stop = f" (stopped early: {r['stopped_early']})" if r["stopped_early"] else ""
    print(f"finetune: {r['steps_done']} steps in {r['seconds']:.1f}s{stop}; held-out perplexity "
          f"{r['ppl_before']['ppl']:.4f} -> {r['ppl_after']['ppl']:.4f}; merge max |dlogit| {r['merge_max_abs_logit_diff']:.2e}")
    out = result.save(args.out, overwrite=args.overwrite)
    print(f"saved to {out}" + (f"; adapter in {r['adapter_dir']}" if r["adapter_dir"] else ""))
    _write_json_out(args, r)
    return 0


def _add_verify_parser(sub: Any) -> None:
    """``slimformer verify DIR``: a saved model's config, plan, tensor shapes and checksums."""
    v = sub.add_parser("verify", help="check a saved model: config, plan schema, tensor shapes, sha256 of the weights")
    v.add_argument("dir", help="slimformer output directory")
    v.add_argument("--load", action="store_true", help="also build the model and run one forward pass")
    v.add_argument("--device", default="cpu", help="device for --load (default cpu)")


def _cmd_verify(args: argparse.Namespace) -> int:
    """Everything checkable without building (and, with ``--load``, one forward pass); one ``ok:`` line."""
    from .runtime.modeling_slimformer import check_saved

    path = require_dir(args.dir)
    if args.load:
        check_device(args.device)
    checked = check_saved(str(path))
    plan = checked.section["plan"]
    files = len(checked.files)
    sums = (f"sha256 verified for {len(checked.hashed)} weight file{'s' * (len(checked.hashed) != 1)}"
            if checked.hashed else "no checksums recorded (saved before slimformer recorded them)")
    msg = (f"ok: {path}: slimformer format {checked.section['format_version']}, {plan['architecture']}, "
           f"{len(plan['blocks'])} blocks, {len(checked.shapes)} tensors in {files} weight file{'s' * (files != 1)} "
           f"match the plan; {sums}")
    if args.load:
        msg += "; " + _verify_forward(path, checked, args.device)
    print(msg)
    return 0


def _verify_forward(path: Path, checked: Any, device: str) -> str:
    """Build the checked model (without hashing its files again) and run one short forward pass."""
    import torch

    from .runtime.modeling_slimformer import load_compressed

    if checked.section.get("plain"):
        from transformers import AutoModelForCausalLM

        model = AutoModelForCausalLM.from_pretrained(str(path)).to(device).eval()
    else:
        model = load_compressed(str(path), device=device, check_hashes=False)
    vocab = checked.shapes[checked.section["plan"]["paths"]["embed"] + ".weight"][0]
    ids = (torch.arange(8) % vocab).unsqueeze(0).to(device)
    with torch.no_grad():
        logits = model(input_ids=ids).logits
    if not bool(torch.isfinite(logits).all()):
        raise ValueError(f"{path}: the model loads but its forward pass gives non-finite logits")
    return f"loaded and ran a forward pass (logits {list(logits.shape)}, all finite)"


def _add_export_parser(sub: Any) -> None:
    """``slimformer export DIR --to gguf|hf --out PATH``."""
    x = sub.add_parser("export", help="write a model for another runtime: GGUF for llama.cpp, or a plain HF config")
    x.add_argument("dir", help="slimformer output directory (or any HF model directory / hub id for --to gguf)")
    x.add_argument("--to", required=True, help="target: gguf (one file llama.cpp runs) or hf (a directory with an "
                                               "ordinary transformers config, no remote code)")
    x.add_argument("--out", required=True, help="GGUF file (--to gguf) or directory (--to hf), written atomically")
    x.add_argument("--dtype", default="f32", help="GGUF weight type: f32 (exact, default), f16, bf16 or q8_0")
    x.add_argument("--overwrite", action="store_true", help="replace an existing output of the same kind")


def _cmd_export(args: argparse.Namespace) -> int:
    from .validate import EXPORT_TARGETS

    if args.to not in EXPORT_TARGETS:  # before torch is imported: a typo fails at once
        raise ValueError(f"unknown export target {args.to!r}: use one of {', '.join(EXPORT_TARGETS)}")
    if args.to == "gguf":
        from .validate import GGUF_DTYPES

        if args.dtype not in GGUF_DTYPES:
            raise ValueError(f"--dtype for GGUF must be one of {', '.join(GGUF_DTYPES)}, got {args.dtype!r}")
    elif args.dtype != "f32":
        raise ValueError("--dtype applies to --to gguf only (--to hf keeps the saved dtype)")
    from .api import export

    out = export(args.dir, args.out, to=args.to, dtype=args.dtype, overwrite=args.overwrite)
    print(f"exported {args.dir} -> {out} ({args.to})")
    return 0


def _cmd_info(args: argparse.Namespace) -> int:
    from .io.info import format_info, read_info
    from .runtime.plan_schema import read_config_json

    section = read_info(args.dir)
    print(json.dumps(section, indent=2) if args.json_out else format_info(section, read_config_json(args.dir)))
    return 0


#: commands that load no Hugging Face model (no transformers progress bars to hide)
_NO_HF_COMMANDS = frozenset({"info", "report"})


def install_sigterm_handler() -> Any:
    """Make SIGTERM raise :class:`KeyboardInterrupt` in the main thread, as Ctrl-C does.

    ``timeout``, docker and SLURM stop a job with SIGTERM, which by default kills Python at
    once: the ``except BaseException`` clean-up paths of the savers (temporary directories,
    partial files) would never run. Returns the previous handler (pass it to
    ``signal.signal(signal.SIGTERM, ...)`` to restore it), or ``None`` when not called from
    the main thread (only the main thread may set signal handlers).
    """
    if threading.current_thread() is not threading.main_thread():
        return None

    def _interrupt(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt(signal.Signals(signum).name)

    return signal.signal(signal.SIGTERM, _interrupt)


def _quiet_hf_progress() -> None:
    """Hide transformers' and huggingface_hub's progress bars (slimformer shows its own per-layer
    progress) without importing them: both read ``HF_HUB_DISABLE_PROGRESS_BARS`` when imported."""
    if "transformers" in sys.modules or "huggingface_hub" in sys.modules:  # already imported (in-process callers)
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
    else:
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")  # a user's explicit 0 still wins


def _rank_note() -> str:
    """`` (rank R of W)`` under torchrun (WORLD_SIZE > 1), else empty."""
    world = int(os.environ.get("WORLD_SIZE", "1") or 1)
    return f" (rank {os.environ.get('RANK', '?')} of {world})" if world > 1 else ""


def _error_message(exc: BaseException) -> str:
    """One line for ``exc``: ``<strerror>: <filename>`` for system errors (PermissionError, ENOSPC,
    IsADirectoryError, ...), else the first line of its message (its class name when empty)."""
    if isinstance(exc, OSError) and exc.strerror:
        names = " -> ".join(str(n) for n in (exc.filename, exc.filename2) if n is not None)
        return f"{exc.strerror}: {names}" if names else str(exc.strerror)
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``slimformer`` command.

    Returns the exit code (also for ``--help`` and argument errors, which argparse would
    exit with). Argument errors and failures print one line on stderr, ``slimformer: error: ...``,
    and exit with code 2 (``-v`` re-raises failures with their traceback); Ctrl-C or SIGTERM
    prints ``slimformer: interrupted`` and exits with code 130. Under torchrun every line
    names the rank. Nothing heavy (torch, transformers) is imported before a command runs.
    """
    previous = install_sigterm_handler()
    verbose = False
    try:
        try:
            args = _parser().parse_args(argv)
        except SystemExit as exc:  # --help, --version, argument errors (already printed): the exit code
            return exc.code if isinstance(exc.code, int) else 0 if exc.code is None else 2
        verbose = args.verbose
        logging.basicConfig(level=logging.DEBUG if verbose else logging.WARNING, format="%(name)s: %(message)s")
        if args.command not in _NO_HF_COMMANDS:
            _quiet_hf_progress()
        commands = {"compress": _cmd_compress, "eval": _cmd_eval, "info": _cmd_info, "bench": _cmd_bench,
                    "report": _cmd_report, "finetune": _cmd_finetune,
                    "pack": _cmd_pack, "unpack": _cmd_unpack, "verify": _cmd_verify,
                    "export": _cmd_export}
        return commands[args.command](args)
    except KeyboardInterrupt:
        if verbose:
            raise
        print(f"slimformer: interrupted{_rank_note()}", file=sys.stderr)
        return 130
    # UnsupportedModelError, SlimformerFormatError, DataError, ... are ValueErrors; OutputExistsError,
    # TaskDataError, PermissionError, ENOSPC are OSErrors: no heavy module is imported to catch them.
    # ImportError: a missing optional dependency (POT, lm-eval, peft) says what to install.
    except (ValueError, TypeError, RuntimeError, OSError, ImportError) as exc:
        if verbose:
            raise
        # under torchrun this rank exits non-zero and torchrun stops the other ranks
        print(f"slimformer: error{_rank_note()}: {_error_message(exc)}", file=sys.stderr)
        return 2
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
