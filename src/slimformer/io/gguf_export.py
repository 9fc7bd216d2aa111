"""``slimformer export --to gguf``: write a pruned (or dense) model as a GGUF file llama.cpp runs.

Which models (:func:`slimformer.io.targets.gguf_blockers`): llama, mistral, qwen2 and qwen3
models whose blocks keep their Hugging Face structure: dense models, and the outputs of the
pruning methods (FASP, magnitude, wanda-sp, random, PruneNet) with whole-head
(``--attention heads``) or MLP-only (``--attention none``) pruning, any per-layer widths.
Uniform shapes use llama.cpp's own architecture of the family (``llama``, ``qwen2``,
``qwen3``); per-layer head counts or MLP widths use ``deci`` (the Nemotron-NAS layout,
per-layer ``attention.head_count``, ``attention.head_count_kv`` and ``feed_forward_length``).

The maths of the conversion (nothing is approximated at ``f32``):

* Tensor layout: GGUF stores a ``[out, in]`` PyTorch weight as is (ggml lists dims the other
  way round).
* RoPE: Hugging Face rotates channel pairs ``(i, i + hd/2)`` of each head (``rotate_half``);
  llama.cpp's ``llama``/``deci`` graphs rotate adjacent pairs ``(2i, 2i+1)`` with the same
  frequency ``base^(-2i/hd)``. Reordering the rows of each q/k head (and their biases) from
  ``[first half; second half]`` to interleaved makes the two identical: new row ``2i + j`` is
  old row ``j * hd/2 + i``. The ``qwen2``/``qwen3`` graphs rotate like Hugging Face (NEOX
  order): no reordering.
* Norms, biases and the tied head are copied (llama.cpp re-ties a missing ``output.weight``).

Tensors are converted and written one at a time (the header first declares them all), so
the export needs the model plus one converted tensor in memory, never a second copy of
the model. Quantised outputs (``f16``, ``bf16``, ``q8_0``) round the 2-D weights; 1-D tensors (norms,
biases) stay ``f32``, and ``q8_0`` keeps ``f16`` for rows whose length is not a multiple of
its block of 32 (logged).
"""

from __future__ import annotations

import logging
import math
import os
import tempfile
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch import nn

from ..arch import ArchAdapter, get_adapter, get_module
from ..core.plan import plan_from_model
from .outputs import check_free_space, check_output_file, staged_file
from ..validate import GGUF_DTYPES
from .targets import GGUF_ARCHS, base_head_dim, gguf_arch, gguf_blockers, head_counts

logger = logging.getLogger("slimformer.io.gguf")

GGUF_MAGIC = b"GGUF"
#: llama.cpp graphs that rotate adjacent channel pairs (q/k rows are reordered for them)
NORM_ROPE_ARCHS = ("llama", "deci")


class ExportError(ValueError):
    """The model cannot be written to the requested target (the message says why and what to do)."""


def _rope_config(config: Any) -> tuple[float, dict[str, Any]]:
    """``(rope base, scaling dict)`` from a transformers 4 or 5 config."""
    params = getattr(config, "rope_parameters", None) or {}
    scaling = dict(params) if params else dict(getattr(config, "rope_scaling", None) or {})
    base = params.get("rope_theta", getattr(config, "rope_theta", 10000.0))
    return float(base), scaling


def interleave_rope_rows(w: torch.Tensor, n_heads: int) -> torch.Tensor:
    """Reorder each head's rows from half-split (HF ``rotate_half``) to adjacent pairs (llama.cpp).

    ``w``: ``[n_heads * hd, ...]`` (a q/k weight or bias); returns the same shape.
    """
    hd = w.shape[0] // n_heads
    return w.reshape(n_heads, 2, hd // 2, *w.shape[1:]).transpose(1, 2).reshape(w.shape)


def llama3_rope_factors(base: float, dim: int, scaling: dict[str, Any]) -> torch.Tensor:
    """Per-frequency divisors of Llama 3.1's RoPE scaling, ``[dim / 2]`` (llama.cpp's ``rope_freqs``).

    HF scales ``inv_freq`` by ``1/factor`` for long wavelengths, keeps short ones, and blends
    ``(1 - s) / factor + s`` in between; llama.cpp divides ``theta`` by the returned values.
    """
    factor = float(scaling["factor"])
    low, high = float(scaling.get("low_freq_factor", 1.0)), float(scaling.get("high_freq_factor", 4.0))
    old_ctx = float(scaling.get("original_max_position_embeddings", 8192))
    inv_freq = 1.0 / (base ** (torch.arange(0, dim, 2, dtype=torch.float64) / dim))
    wavelen = 2 * math.pi / inv_freq
    smooth = (old_ctx / wavelen - low) / (high - low)
    scale = torch.where(wavelen < old_ctx / high, torch.ones_like(inv_freq),
                        torch.where(wavelen > old_ctx / low, torch.full_like(inv_freq, 1 / factor),
                                    (1 - smooth) / factor + smooth))
    return (1.0 / scale).float()


def _np(t: torch.Tensor) -> np.ndarray:
    return t.detach().to("cpu", torch.float32).contiguous().numpy()


class _TensorSink:
    """The tensors of the file, converted and written one at a time (peak memory: one tensor).

    :meth:`add` records a name and how to get the tensor (a parameter, or a reordering of
    one); :meth:`write_info` declares every tensor (name, shape, type, bytes) to the
    ``gguf.GGUFWriter`` before the data; :meth:`write_data` converts and writes each in turn.
    2-D tensors take the requested dtype; 1-D ones (norms, biases) stay f32.
    """

    def __init__(self, dtype: str) -> None:
        self.dtype = dtype
        self.items: list[tuple[str, Callable[[], torch.Tensor], tuple[int, ...]]] = []
        self.fallbacks: list[str] = []

    def add(self, name: str, t: torch.Tensor, transform: Callable[[torch.Tensor], torch.Tensor] | None = None) -> None:
        self.items.append((name, (lambda: t) if transform is None else (lambda: transform(t)), tuple(t.shape)))

    def _qtype(self, name: str, shape: tuple[int, ...]) -> Any:
        import gguf

        Q = gguf.GGMLQuantizationType
        if len(shape) == 1 or self.dtype == "f32":
            return Q.F32
        if self.dtype == "f16":
            return Q.F16
        if self.dtype == "bf16":
            return Q.BF16
        if shape[-1] % gguf.GGML_QUANT_SIZES[Q.Q8_0][0]:
            self.fallbacks.append(name)
            return Q.F16
        return Q.Q8_0

    def write_info(self, writer: Any) -> None:
        import gguf

        Q = gguf.GGMLQuantizationType
        self.qtypes = [self._qtype(name, shape) for name, _, shape in self.items]
        for (name, _, shape), q in zip(self.items, self.qtypes):
            byte_shape = gguf.quant_shape_to_byte_shape(shape, q)
            nbytes = int(np.prod(byte_shape))
            if q in (Q.F32, Q.F16):
                writer.add_tensor_info(name, shape, np.dtype(np.float32 if q == Q.F32 else np.float16), nbytes)
            else:  # quantised types are declared as their bytes, as gguf.GGUFWriter.add_tensor does
                writer.add_tensor_info(name, byte_shape, np.dtype(np.uint8), nbytes, raw_dtype=q)

    def write_data(self, writer: Any) -> None:
        import gguf

        Q = gguf.GGMLQuantizationType
        for (_, get, _), q in zip(self.items, self.qtypes):
            a = _np(get())
            if q == Q.F16:
                a = a.astype(np.float16)
            elif q != Q.F32:
                a = gguf.quants.quantize(a, q)
            writer.write_tensor_data(a)


def _file_type(dtype: str) -> int:
    import gguf

    return {"f32": gguf.LlamaFileType.ALL_F32, "f16": gguf.LlamaFileType.MOSTLY_F16,
            "bf16": gguf.LlamaFileType.MOSTLY_BF16, "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0}[dtype]


def _write_hparams(w: Any, model: nn.Module, arch: str, heads: list[tuple[int, int]], mlp: list[int],
                   head_dim: int, name: str) -> None:
    cfg = model.config
    per_layer = arch == "deci"
    w.add_name(name)
    w.add_context_length(int(cfg.max_position_embeddings))
    w.add_embedding_length(int(cfg.hidden_size))
    w.add_block_count(len(heads))
    w.add_feed_forward_length(mlp if per_layer else mlp[0])
    w.add_head_count([h for h, _ in heads] if per_layer else heads[0][0])
    w.add_head_count_kv([kv for _, kv in heads] if per_layer else heads[0][1])
    w.add_key_length(head_dim)
    w.add_value_length(head_dim)
    w.add_rope_dimension_count(head_dim)
    w.add_layer_norm_rms_eps(float(cfg.rms_norm_eps))
    w.add_vocab_size(int(cfg.vocab_size))
    base, scaling = _rope_config(cfg)
    w.add_rope_freq_base(base)
    kind = scaling.get("rope_type") or scaling.get("type") or "default"
    if kind == "linear":
        import gguf

        w.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        w.add_rope_scaling_factor(float(scaling["factor"]))


def merge_scores(tok_dir: Path, tokens: list[tuple[bytes, float, Any]]) -> list[float]:
    """SentencePiece scores for a byte-fallback BPE ``tokenizer.json`` (a converted Llama tokenizer).

    llama.cpp's SPM tokenizer merges, at each step, the adjacent pair whose merged piece has the
    highest score; HF's BPE merges the pair with the lowest merge rank. Scoring every piece
    ``-rank`` of the merge that makes it gives the same merges (pieces no merge makes, i.e.
    single characters and special tokens, are below every merge).
    """
    import json

    model = json.loads((tok_dir / "tokenizer.json").read_text(encoding="utf-8"))["model"]
    ranks: dict[str, int] = {}
    for r, m in enumerate(model.get("merges") or []):
        a, b = m.split(" ", 1) if isinstance(m, str) else m
        ranks.setdefault(a + b, r)
    low = -float(len(ranks))
    return [-float(ranks[t.decode("utf-8", "replace")]) if t.decode("utf-8", "replace") in ranks
            else low - i for i, (t, _, _) in enumerate(tokens)]


def _write_tokenizer(w: Any, tok_dir: Path | None, vocab_size: int, model_type: str) -> str:
    """Tokenizer metadata from ``tok_dir``'s files; returns the GGUF tokenizer model written."""
    import gguf
    from gguf import vocab as gv

    candidates: list[tuple[str, Any]] = []
    if tok_dir is not None and (tok_dir / "tokenizer.model").is_file():
        candidates.append(("llama", gv.SentencePieceVocab))
    if tok_dir is not None and (tok_dir / "tokenizer.json").is_file():
        candidates += [("llama", gv.LlamaHfVocab), ("gpt2", gv.BpeVocab)]
    for kind, cls in candidates:
        try:
            voc = cls(tok_dir)
            toks = list(voc.all_tokens())
        except Exception as exc:  # not this kind of tokenizer: try the next reader
            logger.debug("%s cannot read %s: %s", cls.__name__, tok_dir, exc)
            continue
        if len(toks) > vocab_size:
            continue
        texts = [t for t, _, _ in toks]
        scores = merge_scores(tok_dir, toks) if cls is gv.LlamaHfVocab else [float(s) for _, s, _ in toks]
        types = [int(k) for _, _, k in toks]
        for i in range(len(toks), vocab_size):  # embedding rows beyond the tokenizer: padding tokens
            texts.append(f"[PAD{i}]".encode())
            scores.append(-1000.0)
            types.append(int(gguf.TokenType.UNUSED))
        w.add_tokenizer_model(kind)
        if kind == "gpt2":
            pre = "qwen2" if model_type.startswith("qwen") else "default"
            logger.warning("GGUF tokenizer: BPE pre-tokenizer written as %r (llama.cpp's own converter "
                           "identifies it by hashing; check text tokenization before serving)", pre)
            w.add_tokenizer_pre(pre)
        w.add_token_list(texts)
        w.add_token_scores(scores)
        w.add_token_types(types)
        vocab_log = logging.getLogger("gguf.vocab")  # its notes on post-processor templates are noise here
        level = vocab_log.level
        vocab_log.setLevel(logging.ERROR)
        try:
            gguf.SpecialVocab(tok_dir, load_merges=kind == "gpt2", n_vocab=vocab_size).add_to_gguf(w)
        finally:
            vocab_log.setLevel(level)
        return kind
    logger.warning("no tokenizer found%s: the GGUF file has no vocabulary (llama.cpp then takes token ids "
                   "only)", f" in {tok_dir}" if tok_dir else "")
    w.add_tokenizer_model("no_vocab")
    return "no_vocab"


def _block_tensors(block: nn.Module, adapter: ArchAdapter, i: int, n_h: int, n_kv: int, permute: bool,
                   sink: _TensorSink) -> None:
    """The tensors of block ``i`` under llama.cpp's names (``blk.i.*``)."""
    p = f"blk.{i}."
    sink.add(p + "attn_norm.weight", get_module(block, adapter.attn_norm).weight)
    assert adapter.mlp_norm is not None and adapter.gate is not None
    sink.add(p + "ffn_norm.weight", get_module(block, adapter.mlp_norm).weight)
    for key, gname, heads in (("q", "attn_q", n_h), ("k", "attn_k", n_kv), ("v", "attn_v", 0),
                              ("o", "attn_output", 0)):
        lin = get_module(block, getattr(adapter, key))
        for field in ("weight", "bias"):
            t = getattr(lin, field, None)
            if t is None:
                continue
            reorder = (lambda x, n=heads: interleave_rope_rows(x, n)) if permute and heads else None
            sink.add(f"{p}{gname}.{field}", t, reorder)
    if adapter.head_norms:  # Qwen3: per-head RMSNorm over the head dim (NEOX order: no reordering)
        attn = get_module(block, adapter.attn)
        sink.add(p + "attn_q_norm.weight", attn.q_norm.weight)
        sink.add(p + "attn_k_norm.weight", attn.k_norm.weight)
    for key, gname in (("gate", "ffn_gate"), ("up", "ffn_up"), ("down", "ffn_down")):
        lin = get_module(block, getattr(adapter, key))
        sink.add(f"{p}{gname}.weight", lin.weight)
        if lin.bias is not None:
            sink.add(f"{p}{gname}.bias", lin.bias)


def check_gguf(model: nn.Module) -> tuple[ArchAdapter, dict[str, Any]]:
    """``(adapter, plan dict)`` of a model GGUF can hold, or :class:`ExportError` saying why not."""
    adapter = get_adapter(model)
    plan = plan_from_model(model, adapter).to_dict()
    blockers = gguf_blockers(plan, model.config.to_dict())
    if blockers:
        raise ExportError(f"cannot export to GGUF: {blockers[0]}")
    return adapter, plan


def gguf_bytes_estimate(model: nn.Module, dtype: str) -> int:
    """Upper estimate of the GGUF file size (weights at ``dtype``, plus metadata)."""
    per = {"f32": 4, "f16": 2, "bf16": 2, "q8_0": 2}[dtype]
    return sum(p.numel() for p in model.parameters()) * per + 16 * 2**20


def export_gguf(
    model: nn.Module | str | os.PathLike,
    out: str | os.PathLike,
    dtype: str = "f32",
    overwrite: bool = False,
    tokenizer_dir: str | os.PathLike | None = None,
    tokenizer: Any = None,
) -> Path:
    """Write ``model`` (a saved directory, a hub id, or a loaded model) to the GGUF file ``out``.

    Args:
        dtype: ``f32`` (exact), ``f16``, ``bf16`` or ``q8_0`` for the 2-D weights.
        overwrite: replace an existing GGUF file (only a file that starts with the GGUF magic).
        tokenizer_dir: where the tokenizer files are (default: the model directory).
        tokenizer: a loaded Hugging Face tokenizer to write instead (used for a hub id, whose
            files are not in a directory of the user's; saved to a temporary directory and read).

    Raises:
        ExportError: the model has a structure llama.cpp cannot run (the message names it and
            the options that give an exportable model); nothing is written.
    """
    if dtype not in GGUF_DTYPES:
        raise ValueError(f"GGUF dtype must be one of {', '.join(GGUF_DTYPES)}, got {dtype!r}")
    source = None if isinstance(model, nn.Module) else str(model)
    out = Path(out)
    if not out.absolute().parent.is_dir():
        raise FileNotFoundError(f"the directory of the GGUF output {out} does not exist; create it first")
    check_output_file(out, overwrite, inputs=(source, tokenizer_dir), magic=GGUF_MAGIC, what="GGUF output")
    if source is not None:
        from .format import load_model

        model, loaded_tok = load_model(source, dtype=torch.float32)
        if tokenizer_dir is None and os.path.isdir(source):
            tokenizer_dir = source
        elif tokenizer_dir is None and tokenizer is None:
            tokenizer = loaded_tok
    assert isinstance(model, nn.Module)
    adapter, plan = check_gguf(model)
    check_free_space(out, gguf_bytes_estimate(model, dtype), "the GGUF file")
    cfg = model.config
    cfg_dict = cfg.to_dict()
    arch = gguf_arch(plan, cfg_dict)
    heads = head_counts(plan, cfg_dict)
    mlp = [b["mlp_width"] for b in plan["blocks"]]
    head_dim = int(base_head_dim(cfg_dict) or 0)
    window = getattr(cfg, "sliding_window", None)
    if window is not None and window < cfg.max_position_embeddings:
        logger.warning("llama.cpp's %s graph attends to all past tokens: outputs differ from the model's "
                       "sliding window beyond %d tokens", arch, window)
    import gguf

    permute = arch in NORM_ROPE_ARCHS
    with staged_file(out) as tmp:
        w = gguf.GGUFWriter(str(tmp), arch)
        name = Path(source).name if source else str(getattr(cfg, "_name_or_path", "") or cfg.model_type)
        _write_hparams(w, model, arch, heads, mlp, head_dim, name or cfg.model_type)
        w.add_file_type(_file_type(dtype))
        sink = _TensorSink(dtype)
        emb = get_module(model, adapter.embed)
        sink.add("token_embd.weight", emb.weight)
        base, scaling = _rope_config(cfg)
        if (scaling.get("rope_type") or scaling.get("type")) == "llama3":
            sink.add("rope_freqs.weight", llama3_rope_factors(base, head_dim, scaling))
        for i, block in enumerate(adapter.get_layers(model)):
            _block_tensors(block, adapter, i, heads[i][0], heads[i][1], permute, sink)
        sink.add("output_norm.weight", get_module(model, adapter.final_norm).weight)
        head = get_module(model, adapter.head)
        if head.weight is not emb.weight:
            sink.add("output.weight", head.weight)
        with tempfile.TemporaryDirectory(prefix="slimformer-tokenizer-") as tok_tmp:
            if tokenizer is not None and tokenizer_dir is None:
                tokenizer.save_pretrained(tok_tmp)
                tokenizer_dir = tok_tmp
            kind = _write_tokenizer(w, Path(tokenizer_dir) if tokenizer_dir else None, int(cfg.vocab_size),
                                    cfg.model_type)
        sink.write_info(w)
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_ti_data_to_file()
        sink.write_data(w)
        w.close()
    if sink.fallbacks:
        logger.warning("q8_0: %d tensors with rows not a multiple of 32 were written as f16 (e.g. %s); "
                       "--round-to 32 gives q8_0-friendly widths", len(sink.fallbacks), sink.fallbacks[0])
    logger.info("wrote %s (%s, %s, tokenizer %s, %.2f MB)", out, arch, dtype, kind, out.stat().st_size / 2**20)
    return out


__all__ = [
    "ExportError", "GGUF_ARCHS", "GGUF_DTYPES", "GGUF_MAGIC", "check_gguf", "export_gguf", "interleave_rope_rows",
    "llama3_rope_factors",
]
