"""Command line interface: a thin layer over :mod:`slimformer.api`.

Method options are generated from the method config dataclasses, so the CLI and
the Python API cannot drift apart.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import re
import sys
from pathlib import Path
from typing import Any, Sequence

from . import __version__

logger = logging.getLogger("slimformer.cli")

DTYPE_CHOICES = ("float32", "bfloat16", "float16")


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _method_fields() -> dict[str, dataclasses.Field]:
    """Union of all method config fields (first definition wins for help/type)."""
    from .methods import METHODS

    fields: dict[str, dataclasses.Field] = {}
    for spec in METHODS.values():
        for f in dataclasses.fields(spec.config_cls):
            fields.setdefault(f.name, f)
    return fields


def _attribute_docs(cls: type) -> dict[str, str]:
    """Each entry of the ``Attributes:`` section of ``cls``'s docstring (name -> text)."""
    docs: dict[str, str] = {}
    section, current = False, None
    for line in (cls.__doc__ or "").splitlines():
        stripped = line.strip()
        if stripped == "Attributes:":
            section = True
            continue
        if not section or not stripped:
            continue
        m = re.match(r"^(\w+)(?: \(.*?\))?: (.*)$", stripped)
        if m and len(line) - len(line.lstrip()) <= 8:
            current = m.group(1)
            docs[current] = m.group(2)
        elif current is not None:
            docs[current] += " " + stripped
    return {k: v.replace("``", "").rstrip(".") for k, v in docs.items()}


def _method_help() -> dict[str, str]:
    """Help text per option: its description and the methods it applies to."""
    from .methods import METHODS

    users: dict[str, list[str]] = {}
    docs: dict[str, str] = {}
    for name, spec in sorted(METHODS.items()):
        for k, v in _attribute_docs(spec.config_cls).items():
            docs.setdefault(k, v)
        for f in dataclasses.fields(spec.config_cls):
            users.setdefault(f.name, []).append(name)
    return {k: (docs.get(k, "") + f" [{', '.join(v)}]").strip() for k, v in users.items()}


def _annotation_type(f: dataclasses.Field) -> type:
    """Type of an option whose default is None, from its annotation ("int | None" -> int, "str | None" -> str)."""
    ann = str(f.type)
    return int if ann.startswith("int") else str if ann.startswith("str") else float


def _add_method_options(p: argparse.ArgumentParser) -> None:
    group = p.add_argument_group("method options (from the method config dataclasses; [methods they apply to])")
    helps = _method_help()
    for name, f in _method_fields().items():
        default = f.default if f.default is not dataclasses.MISSING else None
        text = f"{helps.get(name, '')} (default {default})".replace("%", "%%")
        if isinstance(default, bool):
            group.add_argument(_flag(name), dest=name, action="store_true", default=None, help=text)
        else:
            # None default: the annotation says the type ("int | None" -> int, else float)
            typ = type(default) if default is not None else _annotation_type(f)
            group.add_argument(_flag(name), dest=name, type=typ, default=None, help=text)


def build_method_config(method: str, args: argparse.Namespace) -> Any:
    """Instantiate the method's config from the parsed options (validates on construction)."""
    from .methods import get_method

    spec = get_method(method)
    own = {f.name for f in dataclasses.fields(spec.config_cls)}
    given = {n: getattr(args, n) for n in _method_fields() if getattr(args, n, None) is not None}
    foreign = sorted(set(given) - own)
    if foreign:
        raise ValueError(f"option(s) {', '.join(_flag(n) for n in foreign)} do not apply to method {method}")
    missing = [
        f.name for f in dataclasses.fields(spec.config_cls)
        if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING and f.name not in given
    ]
    if missing:
        raise ValueError(f"method {method} needs {', '.join(_flag(n) for n in missing)}")
    return spec.config_cls(**given)


def _parser() -> argparse.ArgumentParser:
    from .methods import method_names

    p = argparse.ArgumentParser(prog="slimformer", description="Structured width compression of causal LLMs.")
    p.add_argument("--version", action="version", version=f"slimformer {__version__}")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = p.add_subparsers(dest="command", required=True)

    c = sub.add_parser("compress", help="compress a model and save it")
    c.add_argument("model", help="hub id or local model directory")
    c.add_argument("--method", required=True, help=f"one of: {', '.join(method_names())}")
    c.add_argument("--calib", help="calibration text: local .txt/.raw/.jsonl file or wikitext2|ptb|c4|alpaca")
    c.add_argument("--calib-split", default=None, help="split of a hub dataset (default: train)")
    c.add_argument("--calib-samples", type=int, default=128, help="number of calibration windows (default 128)")
    c.add_argument("--calib-seqlen", type=int, default=2048, help="tokens per calibration window (default 2048)")
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
    c.add_argument("--overwrite", action="store_true", help="replace a non-empty --out")
    c.add_argument("--plain", action="store_true",
                   help="save an ordinary HF config (no remote code); only for uniform MLP-width pruning")
    c.add_argument("--no-progress", action="store_true", help="hide progress bars")
    _add_method_options(c)

    b = sub.add_parser("bench", help="speed and memory of a model vs. a baseline, side by side")
    b.add_argument("model", help="model to measure (usually a slimformer output directory)")
    b.add_argument("--baseline", help="dense model to compare with (hub id or directory)")
    b.add_argument("--batch", type=int, default=1)
    b.add_argument("--seqlen", type=int, default=128, help="prompt length for prefill (default 128)")
    b.add_argument("--new-tokens", type=int, default=32, help="tokens decoded with the KV cache (default 32)")
    b.add_argument("--warmup", type=int, default=1)
    b.add_argument("--repeats", type=int, default=5)
    b.add_argument("--threads", type=int, default=None, help="torch intra-op threads (fix it for stable numbers)")
    b.add_argument("--device", default="cpu")
    b.add_argument("--dtype", choices=DTYPE_CHOICES, default=None)
    b.add_argument("--json", dest="json_out", help="write the result as JSON to this file")

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


def _check_architecture(name: str) -> None:
    """Fail before loading weights when the model family is unsupported."""
    from transformers import AutoConfig

    from .arch import get_adapter

    if Path(name).expanduser().exists() and not (Path(name).expanduser() / "config.json").is_file():
        raise FileNotFoundError(f"{name} has no config.json: not a Hugging Face model directory")
    try:
        config = AutoConfig.from_pretrained(name)
    except (OSError, ValueError):
        return  # load_model reports missing/unreadable models with its own message
    get_adapter(config)


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
    from .io.format import check_output_dir
    from .methods import get_method

    if args.out:
        check_output_dir(args.out, args.overwrite)
    spec = get_method(args.method)
    if spec.needs_calibration and not args.calib:
        raise ValueError(f"method {args.method} needs calibration data: pass --calib FILE_OR_NAME")
    if args.calib and not spec.accepts_calibration:
        raise ValueError(f"method {args.method} is calibration-free: drop --calib")
    # fails fast on a missing file; no data is read at all without --calib
    source = load_text(args.calib, split=args.calib_split) if args.calib else None
    _check_architecture(args.model)  # before loading any weights
    if args.offload:
        return _compress_offloaded(args, config, device, info, source)
    from .memory import reset_peak_rss, rss_mb

    reset_peak_rss()  # the report's peak then covers loading + compression, not imports
    rss_before_load = rss_mb()
    model, tok = load_model(args.model, dtype=args.dtype)
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
        out = result.save(args.out, overwrite=args.overwrite, plain=args.plain)
        print(f"saved to {out}")
    return 0


def _calibration(args: argparse.Namespace, source: Any, tok: Any) -> Any:
    """Tokenised calibration windows from ``--calib*`` (``None`` without ``--calib``)."""
    from .data import load

    if source is None:
        return None
    if tok is None:
        raise ValueError(f"no tokenizer found for {args.model}; calibration text cannot be tokenised")
    return load(source, tok, samples=args.calib_samples, seqlen=args.calib_seqlen, seed=args.seed)


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


def _cmd_eval(args: argparse.Namespace) -> int:
    from .api import library_versions, load_model
    from .data import load_text
    from .eval import perplexity
    from .io.format import describe_compression

    check_device(args.device)
    if not args.ppl and not args.tasks:
        raise ValueError("eval needs --ppl TEXT and/or --tasks piqa,hellaswag,arc_easy,arc_challenge,winogrande")
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
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(out, indent=2) + "\n")
    return 0


def _cmd_bench(args: argparse.Namespace) -> int:
    from .api import library_versions, load_model
    from .eval.speed import SpeedSettings, compare_speed
    from .io.format import describe_compression

    check_device(args.device)
    settings = SpeedSettings(batch=args.batch, seqlen=args.seqlen, new_tokens=args.new_tokens,
                             warmup=args.warmup, repeats=args.repeats, threads=args.threads)
    models = {}
    if args.baseline:
        models["baseline"] = load_model(args.baseline, dtype=args.dtype, device=args.device)[0]
    models["model"] = load_model(args.model, dtype=args.dtype, device=args.device)[0]
    res = compare_speed(models, settings, device=args.device)
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
              f"(matmul FLOP ratio {sp['matmul_flop_ratio']:.3f})")
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(res, indent=2) + "\n")
    return 0


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
    """``slimformer finetune``: options mirror :class:`slimformer.finetune.FinetuneConfig` (defaults from it)."""
    from .finetune import TARGET_ROLES, FinetuneConfig

    d = FinetuneConfig()
    f = sub.add_parser("finetune", help="recovery fine-tune a compressed model with LoRA, merge and save it")
    f.add_argument("dir", help="slimformer output directory (a compressed model)")
    f.add_argument("--data", required=True, help="training text: local .txt/.raw/.jsonl file or wikitext2|ptb|c4|alpaca")
    f.add_argument("--out", required=True, help="output directory for the merged model (written atomically)")
    f.add_argument("--eval-data", default=None,
                   help=f"held-out text for perplexity (default: the last {100 * d.holdout:.0f}%% of --data's tokens)")
    f.add_argument("--steps", type=int, default=d.steps, help=f"optimiser steps (default {d.steps})")
    f.add_argument("--lr", type=float, default=d.lr, help=f"peak learning rate (default {d.lr})")
    f.add_argument("--lora-r", type=int, default=d.lora_r, help=f"LoRA rank (default {d.lora_r})")
    f.add_argument("--lora-alpha", type=float, default=d.lora_alpha, help=f"LoRA alpha (default {d.lora_alpha})")
    f.add_argument("--lora-dropout", type=float, default=d.lora_dropout, help=f"(default {d.lora_dropout})")
    f.add_argument("--targets", default=None,
                   help=f"comma-separated LoRA targets among {','.join(TARGET_ROLES)} (default: all linears, no shortcuts)")
    f.add_argument("--batch", type=int, default=d.batch, help=f"windows per micro-batch (default {d.batch})")
    f.add_argument("--seqlen", type=int, default=d.seqlen, help=f"tokens per window (default {d.seqlen})")
    f.add_argument("--grad-accum", type=int, default=d.grad_accum, help="micro-batches per optimiser step (default 1)")
    f.add_argument("--seed", type=int, default=d.seed, help=f"seed of LoRA init and window offsets (default {d.seed})")
    f.add_argument("--eval-every", type=int, default=d.eval_every, help="held-out perplexity every N steps (0: before/after only)")
    f.add_argument("--eval-tokens", type=int, default=d.eval_tokens, help="evaluate on the first N held-out tokens (default: all)")
    f.add_argument("--max-minutes", type=float, default=d.max_minutes, help="stop training after this many minutes")
    f.add_argument("--dtype", choices=DTYPE_CHOICES, default=None, help="train/save dtype (default: the checkpoint's)")
    f.add_argument("--device", default="cpu", help="training device (default cpu)")
    f.add_argument("--keep-adapter", default=None, metavar="DIR", help="also save the unmerged peft adapter to DIR")
    f.add_argument("--overwrite", action="store_true", help="replace non-empty --out / --keep-adapter directories")
    f.add_argument("--json", dest="json_out", help="write the fine-tune record as JSON to this file")
    f.add_argument("--no-progress", action="store_true", help="hide the progress bar")


def _cmd_finetune(args: argparse.Namespace) -> int:
    from .data import load_text
    from .finetune import FinetuneConfig, finetune
    from .io.format import check_output_dir

    config = FinetuneConfig(
        steps=args.steps, lr=args.lr, lora_r=args.lora_r, lora_alpha=args.lora_alpha, lora_dropout=args.lora_dropout,
        targets=args.targets, batch=args.batch, seqlen=args.seqlen, seed=args.seed, grad_accum=args.grad_accum,
        eval_every=args.eval_every, eval_tokens=args.eval_tokens, max_minutes=args.max_minutes, dtype=args.dtype,
    )  # validates before any work
    check_device(args.device)
    check_output_dir(args.out, args.overwrite)
    if not Path(args.dir).is_dir():
        raise FileNotFoundError(f"model directory not found: {args.dir}")
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
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(r, indent=2, default=str) + "\n")
    return 0


def _cmd_info(args: argparse.Namespace) -> int:
    from .io.format import read_section
    from .io.modeling_slimformer import slim_section

    path = Path(args.dir)
    if not path.is_dir():
        raise FileNotFoundError(f"directory not found: {path}")
    section = read_section(path)
    if section is None:
        raise ValueError(f"{path} is not a slimformer output directory (no 'slimformer' section in config.json)")
    slim_section(argparse.Namespace(slimformer=section))  # checks the format version
    if args.json_out:
        print(json.dumps(section, indent=2))
        return 0
    print(format_info(section))
    return 0


def format_info(section: dict[str, Any]) -> str:
    """Human-readable summary of a saved model's ``"slimformer"`` section."""
    prov = section.get("provenance", {})
    plan = section["plan"]
    before, after = prov.get("params_before"), prov.get("params_after")
    lines = [
        f"method          {section.get('method')}  {json.dumps(section.get('method_config', {}))}",
        f"format_version  {section.get('format_version')}{'  (plain HF config)' if section.get('plain') else ''}",
        f"architecture    {plan['architecture']} ({plan['model_type']}), width {plan['full_width']}, "
        f"embedding {plan['embed_width']}, head input {plan['head_width']}",
    ]
    if before and after:
        lines.append(f"parameters      {before:,} -> {after:,} ({100 * (1 - after / before):.2f}% removed)")
    calib = prov.get("calibration") or {}
    lines.append(f"calibration     {calib.get('name')} sha256 {str(calib.get('sha256'))[:16]}... "
                 f"{calib.get('samples')} x {calib.get('seqlen')} seed {prov.get('seed')}")
    lines.append(f"versions        slimformer {prov.get('slimformer')}, torch {prov.get('torch')}, "
                 f"transformers {prov.get('transformers')}; base model {prov.get('base_model')}")
    ft = section.get("finetune")
    if ft:
        lines.append(f"finetune        LoRA r={ft['config']['lora_r']} on {','.join(ft['targets'])}, {ft['steps_done']} steps; "
                     f"held-out ppl {ft['ppl_before']['ppl']:.4f} -> {ft['ppl_after']['ppl']:.4f} "
                     f"({ft['eval_data'].get('name')})")
    header = ("layer", "d_in", "d_mid", "d_out", "q/k/v out", "mlp", "shortcuts")
    rows = [header] + [
        (str(i), str(b["d_in"]), "-" if b["d_mid"] is None else str(b["d_mid"]), str(b["d_out"]),
         f"{b['q_out']}/{b['k_out']}/{b['v_out']}", str(b["mlp_width"]),
         ",".join(n for n, on in (("attn", b["attn_shortcut"]), ("mlp", b["mlp_shortcut"])) if on) or "-")
        for i, b in enumerate(plan["blocks"])
    ]
    widths = [max(len(r[c]) for r in rows) for c in range(len(header))]
    lines.append("")
    lines += ["  ".join(v.rjust(w) for v, w in zip(r, widths)) for r in rows]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``slimformer`` command. Errors are one line on stderr, exit code 2."""
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING, format="%(name)s: %(message)s")
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # slimformer shows its own per-layer progress
    commands = {"compress": _cmd_compress, "eval": _cmd_eval, "info": _cmd_info, "bench": _cmd_bench,
                "report": _cmd_report, "finetune": _cmd_finetune,
                "pack": _cmd_pack, "unpack": _cmd_unpack}
    from .arch import UnsupportedModelError
    from .io.modeling_slimformer import SlimformerFormatError

    try:
        return commands[args.command](args)
    except (ValueError, TypeError, FileNotFoundError, FileExistsError, UnsupportedModelError,
            SlimformerFormatError, RuntimeError) as exc:
        if args.verbose:
            raise
        msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        world = int(os.environ.get("WORLD_SIZE", "1") or 1)
        where = f" (rank {os.environ.get('RANK', '?')} of {world})" if world > 1 else ""
        # under torchrun this rank exits non-zero and torchrun stops the other ranks
        print(f"slimformer: error{where}: {msg}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
