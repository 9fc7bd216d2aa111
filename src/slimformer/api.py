"""Public API: ``compress()``, ``load_model()`` and the result object."""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import os
import time
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from ._version import __version__
from .arch import UnsupportedModelError, get_adapter
from .calib.dist import current as dist_current, shard
from .calib.offload import discard as discard_offloaded, finish as finish_offloaded, open_offloaded, store_of
from .calib.source import BlockSource, InMemoryBlocks
from .core.params import count_params
from .core.plan import ShapePlan, plan_from_model
from .core.projections import split_projections
from .io.format import load_model, save_compressed
from .memory import peak_rss_mb, reset_peak_rss, rss_mb, use_mmap_for_large_blocks
from .methods import METHODS, Runtime, spec_for_config, structures_of
from .validate import EXPORT_TARGETS

logger = logging.getLogger("slimformer.api")


@dataclass
class CompressionResult:
    """What :func:`compress` returns.

    Attributes:
        model: the compressed model (a regular HF ``*ForCausalLM`` instance).
        plan: its :class:`ShapePlan`.
        report: params before/after, removed fraction, seconds, peak memory, widths, ...
        section: the ``"slimformer"`` config section written by :meth:`save`.
        artifacts: extra files (name -> bytes) :meth:`save` writes into the directory,
            e.g. PruneNet's ``policy.safetensors`` / ``policy.json``.
    """

    model: nn.Module
    plan: ShapePlan
    report: dict[str, Any]
    section: dict[str, Any] = field(default_factory=dict)
    tokenizer: Any = None
    artifacts: dict[str, bytes] = field(default_factory=dict)

    def save(self, out: str | os.PathLike, tokenizer: Any = None, overwrite: bool = False,
             plain: bool | None = None) -> str:
        """Save as a Hugging Face directory (see :mod:`slimformer.io.format`).

        ``plain=None`` (default) writes an ordinary config that loads without remote code
        whenever one can describe the model (uniform MLP widths and head counts, no rotated
        residual stream; :func:`slimformer.io.targets.plain_blockers`), else the remote-code
        format; ``plain=True`` insists (raises :class:`~slimformer.io.format.PlainExportError`
        saying why it cannot); ``plain=False`` always writes the remote-code format.
        """
        if any(p.device.type == "meta" for p in self.model.parameters()):
            raise ValueError("this model was compressed offloaded: its blocks were written to the output directory "
                             "as they were compressed and are not in memory; load that directory instead")
        tok = tokenizer if tokenizer is not None else self.tokenizer
        source = getattr(self.model, "name_or_path", None)  # the input model: never replaced by ``out``
        return str(save_compressed(self.model, out, self.section, self.report, tok, overwrite=overwrite, plain=plain,
                                   extra_files=self.artifacts, inputs=(source or None,)))


def _calib_tensor(calib: Any) -> tuple[torch.Tensor, dict[str, Any]]:
    """Accept CalibData or a ``[N, T]`` LongTensor; return ids and the data identity."""
    if isinstance(calib, torch.Tensor):
        digest = hashlib.sha256(calib.detach().to("cpu", torch.int64).contiguous().numpy().tobytes()).hexdigest()
        ids, ident = calib, {"name": "tensor", "sha256": digest, "samples": calib.shape[0], "seqlen": calib.shape[-1]}
    elif hasattr(calib, "input_ids"):
        ids, ident = calib.input_ids, calib.identity()
    else:
        raise TypeError("calib must be slimformer.data.CalibData or a LongTensor [samples, seqlen]")
    if ids.dim() != 2 or ids.dtype not in (torch.long, torch.int32, torch.int64) or ids.shape[0] < 1:
        raise ValueError(f"calibration ids must be an integer tensor [samples, seqlen], got {tuple(ids.shape)} {ids.dtype}")
    return ids.long(), ident


def _check_model(model: nn.Module, offloaded: bool = False) -> None:
    params = list(model.parameters())
    if not params:
        raise ValueError("model has no parameters")
    dtypes = {p.dtype for p in params}
    if not all(dt.is_floating_point for dt in dtypes):
        raise TypeError(f"model weights must be floating point (got {sorted(map(str, dtypes))}); quantised models are not supported")
    if not offloaded and any(p.device.type == "meta" for p in params):
        raise ValueError("model has weights on the meta device; load it fully before compressing "
                         "(or use compress_offloaded / --offload to stream it from its checkpoint)")


def compress(
    model: nn.Module,
    config: Any,
    calib: Any = None,
    *,
    device: str | torch.device | None = None,
    batch_size: int = 8,
    offload_activations: bool = False,
    progress: bool = True,
    tokenizer: Any = None,
    seed: int | None = None,
) -> CompressionResult:
    """Compress ``model`` in place with the method whose config is ``config``.

    Args:
        model: a Hugging Face causal LM of a supported family (``config.model_type``).
        config: a method config, e.g. ``SliceGPTConfig(sparsity=0.25)``.
        calib: ``slimformer.data.CalibData`` or ids ``[samples, seqlen]``.
        device: compute device for the block being processed (default: the model's).
        batch_size: calibration windows per forward.
        offload_activations: keep cached activations on CPU while blocks run on ``device``.
    Returns:
        A :class:`CompressionResult`; ``result.model`` is ``model`` itself, compressed.
    """
    spec = spec_for_config(config)
    adapter = get_adapter(model)
    touches = structures_of(config)
    reason = adapter.refusal(touches, spec.name) if touches is not None else None
    if reason is not None:
        raise UnsupportedModelError(reason)
    blocks = block_source(model, adapter)
    if blocks.offloaded and (adapter.unfuse or adapter.experts):
        raise UnsupportedModelError(f"{adapter.name} holds fused projections or 3-D expert tensors, which offloaded "
                                    "compression does not split yet: load the model and compress it in memory")
    split_projections(model, adapter)  # Phi-3: fused qkv / gate_up held as their parts (exact)
    if blocks.offloaded and not spec.offload:
        raise ValueError(f"method {spec.name} needs every block in memory at once; it cannot run offloaded. "
                         f"Offloading works with: {', '.join(offload_method_names())}")
    _check_model(model, offloaded=blocks.offloaded)
    if spec.needs_calibration and calib is None:
        raise ValueError(f"method {spec.name} needs calibration data (calib=...)")
    if calib is not None and not spec.accepts_calibration:
        raise ValueError(f"method {spec.name} is calibration-free: call compress() without calib")
    ids, ident = _calib_tensor(calib) if calib is not None else (None, None)
    check_calib_length(model.config, ids.shape[1] if ids is not None else None)
    world = dist_current().world
    if ids is not None and world > 1:
        ids = shard(ids)  # data-parallel: statistics are all-reduced, every rank solves the same problem
    if ids is not None and int(ids.max()) >= model.config.vocab_size:
        raise ValueError(f"calibration token id {int(ids.max())} >= vocab size {model.config.vocab_size}: wrong tokenizer?")
    dev = torch.device(device) if device is not None else (
        torch.device("cpu") if blocks.offloaded else next(model.parameters()).device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device cuda requested but CUDA is not available; use --device cpu")
    params_before = count_params(model)
    rss_start = rss_mb()
    dtype = next(model.parameters()).dtype
    model.eval()
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
    t0 = time.perf_counter()
    extra = spec.apply(model, adapter, config, ids, Runtime(dev, batch_size, offload_activations, progress, blocks))
    seconds = time.perf_counter() - t0
    artifacts = extra.pop("_artifacts", {})  # extra files for the output directory (e.g. a learned policy)
    plan = plan_from_model(model, adapter)
    params_after = count_params(model)
    report: dict[str, Any] = {
        "method": spec.name,
        "config": dataclasses.asdict(config),
        "model": getattr(model, "name_or_path", None) or getattr(model.config, "_name_or_path", None),
        "model_type": model.config.model_type,
        "dtype": str(dtype).replace("torch.", ""),
        "params_before": params_before,
        "params_after": params_after,
        "removed_fraction": 1.0 - params_after / params_before,
        "seconds": round(seconds, 3),
        "peak_rss_mb": round(peak_rss_mb(), 1),
        "rss_at_start_mb": round(rss_start, 1),
        "device": str(dev),
        "calibration": ident,
        "world_size": world,
        "offload": blocks.activations,
        "layers": plan.widths_table(),
        **extra,
    }
    if dev.type == "cuda":
        report["peak_gpu_mb"] = round(torch.cuda.max_memory_allocated(dev) / 2**20, 1)
    section = {
        "method": spec.name,
        "method_config": dataclasses.asdict(config),
        "plan": plan.to_dict(),
        "provenance": provenance(ident, seed, params_before, params_after, report["model"]),
    }
    logger.info(
        "%s: %d -> %d params (%.1f%% removed) in %.1fs",
        spec.name, params_before, params_after, 100 * report["removed_fraction"], seconds,
    )
    return CompressionResult(model, plan, report, section, tokenizer, artifacts)


def block_source(model: nn.Module, adapter: Any) -> BlockSource:
    """Where the method's layer loops get ``model``'s decoder blocks from: the
    :class:`~slimformer.calib.offload.LayerStore` of a model from :func:`open_offloaded`
    (:func:`compress_offloaded`), else the model itself, in memory."""
    store = store_of(model)
    return store if store is not None else InMemoryBlocks(model, adapter)


def offload_method_names() -> list[str]:
    """Methods that run on an offloaded model (one block in memory at a time)."""
    return sorted(name for name, spec in METHODS.items() if spec.offload)


def max_positions(config: Any) -> int | None:
    """The model's context length (``max_position_embeddings`` or ``n_positions``), if it has one."""
    for name in ("max_position_embeddings", "n_positions"):
        value = getattr(config, name, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def check_calib_length(config: Any, seqlen: int | None) -> None:
    """Refuse calibration windows longer than the model's positions (OPT's learned positions fail
    with an IndexError; RoPE models would be calibrated on positions they never saw)."""
    limit = max_positions(config)
    if seqlen is not None and limit is not None and seqlen > limit:
        raise ValueError(f"calibration windows of {seqlen} tokens exceed the model's {limit} positions "
                         f"(max_position_embeddings); pass --calib-seqlen {limit} or less")


def compress_offloaded(
    name_or_path: str | os.PathLike,
    config: Any,
    calib: Any,
    out: str | os.PathLike,
    *,
    offload: str = "disk",
    device: str | torch.device | None = None,
    dtype: torch.dtype | str | None = None,
    batch_size: int = 8,
    progress: bool = True,
    tokenizer: Any = None,
    seed: int | None = None,
    overwrite: bool = False,
    writer: bool = True,
) -> CompressionResult:
    """Compress a checkpoint that is never in memory as a whole, writing ``out`` shard by shard.

    Each decoder block is read from the checkpoint's safetensors onto ``device``
    only while it is processed, then written to its own output shard and freed
    (:mod:`slimformer.calib.offload`). Calibration activations of the current layer
    boundary stay on the CPU (``offload="cpu"``) or in files (``offload="disk"``).
    Peak memory is about one block plus the embeddings/head plus one boundary of
    activations (less for ``"disk"``). The result equals :func:`compress` on the
    loaded model, and ``out`` is written atomically. The report's ``peak_rss_mb`` is
    the process peak during this call (the peak is reset at the start, Linux) and
    ``rss_at_start_mb`` the RSS before it.

    Args:
        name_or_path: a local Hugging Face checkpoint directory with safetensors (or a hub id).
        out: output directory (must be new or empty unless ``overwrite``).
        dtype: weights dtype (default: the checkpoint config's, else float32).
        writer: write ``out`` (default). Under torchrun only rank 0 writes; the other
            ranks compute the same blocks and discard them.
    Returns:
        The :class:`CompressionResult`; its model's decoder blocks are on the meta
        device (load ``out`` with :func:`load_model` to use the compressed model).
    """
    use_mmap_for_large_blocks()  # freed blocks go back to the OS (glibc); see slimformer.memory
    reset_peak_rss()  # the report's peak_rss_mb then covers this call only
    rss_start = rss_mb()
    model = open_offloaded(name_or_path, out, offload, dtype=dtype, overwrite=overwrite, writer=writer)
    try:
        result = compress(model, config, calib, device=device, batch_size=batch_size, progress=progress,
                          tokenizer=tokenizer, seed=seed)
        result.report["rss_at_start_mb"] = round(rss_start, 1)  # before the skeleton and global tensors
        if result.artifacts:
            raise ValueError("offloaded methods do not write extra files")
        if writer:
            finish_offloaded(model, result.section, result.report, tokenizer)
    except OSError as exc:  # a full disk etc. while writing shards: name the output, not the temporary
        from .io.outputs import as_output_error

        raise as_output_error(exc, out) from None
    finally:
        discard_offloaded(model)  # the scratch/temporary directory, if anything is left
    return result


def library_versions() -> dict[str, str]:
    """Versions of slimformer, torch and transformers (recorded with every result)."""
    import transformers

    return {"slimformer": __version__, "torch": torch.__version__, "transformers": transformers.__version__}


def provenance(calib: Any, seed: int | None, before: int, after: int, base: Any) -> dict[str, Any]:
    """Library versions, data identity, seed and parameter counts for the saved config."""
    return {
        **library_versions(),
        "base_model": base,
        "calibration": calib,
        "seed": seed,
        "params_before": before,
        "params_after": after,
    }



def export(model: str | os.PathLike | nn.Module, out: str | os.PathLike, to: str = "gguf", dtype: str = "f32",
           overwrite: bool = False) -> str:
    """Write a compressed (or dense) model for another runtime.

    Args:
        model: a slimformer output directory, any HF model directory or hub id, or a loaded
            model (``gguf`` only).
        to: ``"gguf"``: one GGUF file llama.cpp runs (llama, mistral, qwen2, qwen3; whole-head
            or MLP pruning, any per-layer widths; see :mod:`slimformer.io.gguf_export`);
            ``"hf"``: a directory with an ordinary transformers config (no remote code), for
            uniform shapes.
        dtype: GGUF weight type: ``f32`` (exact), ``f16``, ``bf16`` or ``q8_0``.
        overwrite: replace an existing output of the same kind.

    Raises:
        ValueError: the target cannot hold the model (the message names the structure and the
            options that give an exportable model), or an unknown target; nothing is written.
    """
    if to == "gguf":
        from .io.gguf_export import export_gguf

        return str(export_gguf(model, out, dtype=dtype, overwrite=overwrite))
    if to == "hf":
        if isinstance(model, nn.Module):
            raise TypeError("export(to='hf') takes a saved directory; for a result in memory use result.save(out)")
        from .io.format import export_plain

        return str(export_plain(model, out, overwrite=overwrite))
    raise ValueError(f"unknown export target {to!r}: use one of {', '.join(EXPORT_TARGETS)}")


__all__ = ["CompressionResult", "block_source", "compress", "compress_offloaded", "count_params", "export", "load_model"]
