"""Where a compressed model can run: plain ``transformers``, llama.cpp (GGUF), or remote code only.

Torch-free: the answers are read off the saved plan (the ``"plan"`` of the ``"slimformer"``
config section, see :class:`slimformer.core.plan.ShapePlan`) and the base config, so
``slimformer info`` stays fast, and ``save``/``export`` use the same rules on a live model
(via ``plan_from_model(model).to_dict()``). Each ``*_blockers`` function returns the
reasons, one line each, that stop a target; an empty list means the target can hold the model.
"""

from __future__ import annotations

from typing import Any

from ..runtime.plan_schema import standard_config

#: families whose Hugging Face attention reads ``config.head_dim`` (so fewer heads need no
#: change of ``hidden_size``) and size ``o_proj`` by heads x head dim, read off the installed
#: transformers' attention code; OPT and StableLM derive the head dim from ``hidden_size``,
#: Helium sizes ``o_proj`` by ``hidden_size``. ``tests/test_family_grid.py`` reloads a
#: uniformly head-pruned model of every family as a plain model, so a wrong entry fails there.
HEAD_DIM_CONFIGURABLE = ("llama", "mistral", "qwen2", "qwen3", "phi", "phi3", "granite", "starcoder2", "olmo",
                         "cohere", "gemma", "gemma2", "gemma3_text", "ministral", "smollm3", "seed_oss",
                         "hunyuan_v1_dense", "arcee", "apertus", "nanochat", "glm", "ernie4_5")

#: llama.cpp architecture per family: (uniform shapes, per-layer shapes or ``None``). llama.cpp's
#: ``deci`` architecture (the Nemotron-NAS layout) takes per-layer head counts and FFN widths;
#: it has no per-head q/k norms, so a non-uniform Qwen3 has no GGUF architecture. llama.cpp's
#: ``qwen2`` graph assumes ``heads * head_dim == hidden_size`` (see :data:`FULL_HEADS_ONLY`).
GGUF_ARCHS: dict[str, tuple[str, str | None]] = {
    "llama": ("llama", "deci"),
    "mistral": ("llama", "deci"),
    "qwen2": ("qwen2", "deci"),
    "qwen3": ("qwen3", None),
}

#: uniform llama.cpp architectures whose tensors must have all heads (q/o ``[hidden, hidden]``):
#: with fewer heads the model goes to the per-layer architecture instead
FULL_HEADS_ONLY = ("qwen2",)

TARGETS = ("hf", "gguf")


def _blocks(plan: dict[str, Any]) -> list[dict[str, Any]]:
    return list(plan.get("blocks") or [])


def _head_dim(b: dict[str, Any], base_head_dim: int | None) -> int | None:
    return b.get("head_dim") or base_head_dim


def structure_blockers(plan: dict[str, Any], base_head_dim: int | None = None) -> list[str]:
    """Structures no ordinary architecture can hold, whatever the target (one line each).

    ``base_head_dim``: the base config's head dim (used when the plan predates per-block heads).
    """
    out: list[str] = []
    if plan.get("fused", False):
        out.append("its residual stream was rotated and sliced (SliceGPT/DOTResize: shortcut matrices, "
                   "per-point bases, norms folded into the linears); SliceGPT with --basis shared gives a "
                   "plain architecture, or prune with fasp/magnitude/wanda-sp/prunenet instead")
    if any(b.get(k) is not None for b in _blocks(plan)
           for k in ("attn_in_index", "attn_out_index", "mlp_in_index", "mlp_out_index")):
        out.append("its sublayers read and write subsets of the residual channels (DISP-LLM gather/scatter "
                   "index sets); prune with fasp/magnitude/wanda-sp/prunenet instead")
    if any(b.get("qk_index") is not None or (b.get("qk_head_dim") not in (None, _head_dim(b, base_head_dim)))
           for b in _blocks(plan)):
        out.append("its query/key heads keep fewer channels than the head dim (MoDeGPT's q/k pairs); "
                   "use fasp/magnitude/wanda-sp/prunenet with --attention heads")
    if any(b.get("v_head_dim") not in (None, _head_dim(b, base_head_dim)) for b in _blocks(plan)):
        out.append("its value heads keep fewer channels than the head dim (--attention channels); "
                   "compress with --attention heads (whole GQA groups) or --attention none, or --exportable")
    return out


def _uniform(values: list[Any]) -> bool:
    return len(set(values)) <= 1


def base_head_counts(config: dict[str, Any]) -> tuple[int, int]:
    """``(query heads, kv heads)`` of the base config."""
    config = standard_config(config)
    n_h = int(config.get("num_attention_heads") or 0)
    return n_h, int(config.get("num_key_value_heads") or n_h)


def head_counts(plan: dict[str, Any], config: dict[str, Any]) -> list[tuple[int, int]]:
    """``(query heads, kv heads)`` per block (the base config's where the plan has none)."""
    n_h, n_kv = base_head_counts(config)
    return [(b["n_heads"] if b.get("n_heads") is not None else n_h,
             b["n_kv_heads"] if b.get("n_kv_heads") is not None else n_kv) for b in _blocks(plan)]


def base_head_dim(config: dict[str, Any]) -> int | None:
    """The head dim the base config's attention reshapes with."""
    config = standard_config(config)
    if config.get("head_dim"):
        return int(config["head_dim"])
    if config.get("hidden_size") and config.get("num_attention_heads"):
        return int(config["hidden_size"]) // int(config["num_attention_heads"])
    return None


def plain_blockers(plan: dict[str, Any], config: dict[str, Any]) -> list[str]:
    """Why an ordinary Hugging Face config (no remote code) cannot describe the model."""
    out = structure_blockers(plan, base_head_dim(config))
    widths = [b["mlp_width"] for b in _blocks(plan)]
    if not _uniform(widths):
        out.append(f"its MLP widths differ per layer ({sorted(set(widths))}) and a config has one; "
                   "compress with --schedule uniform (or --exportable hf)")
    heads = head_counts(plan, config)
    if not _uniform(heads):
        out.append(f"its attention head counts differ per layer ({sorted(set(heads))}) and a config has one; "
                   "compress with --schedule uniform (or --exportable hf)")
    elif heads and heads[0][0] != base_head_counts(config)[0] \
            and plan.get("model_type") not in HEAD_DIM_CONFIGURABLE:
        out.append(f"{plan.get('model_type')}'s attention derives the head dim from hidden_size, so fewer heads "
                   "cannot be written in its config; compress with --attention none")
    elif heads and heads[0][0] != base_head_counts(config)[0] and heads[0][0] and \
            int(standard_config(config).get("hidden_size") or 0) % heads[0][0]:
        out.append(f"{heads[0][0]} heads do not divide hidden_size {standard_config(config).get('hidden_size')}, "
                   "which some transformers configs require (Llama's); it loads with the saved runtime")
    return out


def gguf_arch(plan: dict[str, Any], config: dict[str, Any]) -> str:
    """The llama.cpp architecture name for the model (assumes :func:`gguf_blockers` is empty)."""
    uniform, per_layer = GGUF_ARCHS[plan["model_type"]]
    heads = head_counts(plan, config)
    shapes = list(zip(heads, (b["mlp_width"] for b in _blocks(plan))))
    if not _uniform(shapes):
        return str(per_layer)
    full = heads[0][0] * (base_head_dim(config) or 0) == config.get("hidden_size")
    return uniform if full or uniform not in FULL_HEADS_ONLY else str(per_layer)


def gguf_blockers(plan: dict[str, Any], config: dict[str, Any]) -> list[str]:
    """Why llama.cpp (GGUF) cannot run the model."""
    model_type = plan.get("model_type")
    if model_type not in GGUF_ARCHS:
        return [f"GGUF export supports the families {', '.join(GGUF_ARCHS)}, not {model_type!r}"]
    out = structure_blockers(plan, base_head_dim(config))
    heads = head_counts(plan, config)
    shapes = list(zip(heads, (b["mlp_width"] for b in _blocks(plan))))
    if GGUF_ARCHS[model_type][1] is None and not _uniform(shapes):
        out.append(f"llama.cpp's per-layer-shape architecture (deci) has no per-head q/k norms, so a {model_type} "
                   "model needs the same heads and MLP width in every layer; compress with --schedule uniform")
    for i, ((n_h, n_kv), mlp) in enumerate(shapes):
        if n_h == 0 or n_kv == 0:
            out.append(f"layer {i} has no attention heads left, which llama.cpp's loader does not handle; "
                       "use a smaller budget or --schedule uniform")
            break
        if n_h % n_kv:
            out.append(f"layer {i} has {n_h} query heads for {n_kv} key/value heads (not a multiple)")
            break
        if mlp == 0:
            out.append(f"layer {i} has no MLP channels left: llama.cpp's deci graph drops the whole layer "
                       "then; use a smaller budget or --schedule uniform")
            break
    rope = config.get("rope_parameters") or config.get("rope_scaling") or {}
    rope_type = rope.get("rope_type") or rope.get("type") or "default"
    if rope_type not in ("default", "linear", "llama3"):
        out.append(f"RoPE scaling {rope_type!r} is not written to GGUF yet (default, linear and llama3 are)")
    return out


def export_targets(plan: dict[str, Any], config: dict[str, Any], plain: bool) -> dict[str, list[str]]:
    """``{"hf": blockers, "gguf": blockers}``; ``plain``: the directory already has a plain config."""
    return {"hf": [] if plain else plain_blockers(plan, config), "gguf": gguf_blockers(plan, config)}


def format_targets(targets: dict[str, list[str]], plain: bool) -> list[str]:
    """Lines for ``slimformer info``: where the model runs, and why not elsewhere."""
    if plain:
        lines = ["runs in         plain transformers (an ordinary config, no remote code)"]
    else:
        hf = targets["hf"]
        lines = ["runs in         transformers with trust_remote_code=True",
                 "                plain transformers: " + ("yes after slimformer export DIR --to hf --out DIR2"
                                                           if not hf else f"no: {hf[0]}")]
    gg = targets["gguf"]
    lines.append("                llama.cpp (GGUF): " + ("yes: slimformer export DIR --to gguf --out FILE.gguf"
                                                       if not gg else f"no: {gg[0]}"))
    return lines


__all__ = [
    "GGUF_ARCHS", "HEAD_DIM_CONFIGURABLE", "TARGETS", "base_head_counts", "base_head_dim", "export_targets", "format_targets",
    "gguf_arch", "gguf_blockers", "head_counts", "plain_blockers", "structure_blockers",
]
