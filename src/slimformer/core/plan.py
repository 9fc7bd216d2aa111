"""ShapePlan: the per-layer shape of a compressed model (its saved "shape").

A compressed model = base architecture config + ShapePlan + weights. The plan is
plain JSON (stored in ``config.json`` under ``"slimformer"``) and is read off the
model itself, so it can never disagree with the weights it describes.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from torch import nn

from ..arch import ArchAdapter, get_module
from ..runtime.modeling_slimformer import CHANNEL_SETS, SlimRMSNormProject
from .fuse import is_slim, norm_eps

#: Version of the saved ``"slimformer"`` config section (the loader accepts
#: ``runtime.plan_schema.SUPPORTED_FORMAT_VERSIONS``). 1: the SliceGPT-era plan (widths,
#: shortcuts, paths, layout). 2: the same required fields plus optional ones a v2 writer may
#: set: per-block head shapes (``n_heads``, ``n_kv_heads``, ``head_dim``, ``qk_head_dim``,
#: ``v_head_dim``), ``qk_index`` (MoDeGPT q/k channels), residual channel sets
#: (``attn_in_index``, ``attn_out_index``, ``mlp_in_index``, ``mlp_out_index``; DISP),
#: plan ``fused=false`` and ``tied_head``, and the section's ``weights_sha256``. Late v1
#: writers already wrote these optional fields, so a v1 section is read with the same rules.
#: 3: adds the optional plan field ``head_proj`` (keep-tied SliceGPT,
#: :class:`~slimformer.runtime.modeling_slimformer.SlimRMSNormProject`: the final norm is
#: followed by a linear ``[head_width -> embed_width]`` and the head, tied to the embedding,
#: reads ``embed_width``); plans without it (every v1/v2 plan) load as before.
#: Frozen fixtures of each version: ``tests/fixtures/format_v<N>/`` (never regenerated).
FORMAT_VERSION = 3


@dataclass
class BlockPlan:
    """Widths of one decoder block.

    ``d_in``: residual width entering the block; ``d_mid``: between attention and
    MLP (``None`` for parallel blocks); ``d_out``: leaving the block. ``q_out``,
    ``k_out``, ``v_out``: output widths of the projections (heads x head dim);
    ``mlp_width``: MLP intermediate width.

    Attention heads (added in format 1 with defaults, so older plans still load;
    ``None`` = the base config's shapes): ``n_heads`` query heads and ``n_kv_heads``
    key/value heads of this layer, ``head_dim`` the head dim the attention code
    reshapes with (the base config's), ``qk_head_dim`` the q/k channels kept per
    head (== ``head_dim`` until a method cuts q/k) and ``v_head_dim`` the value
    channels kept per head (``<= head_dim``; see
    :class:`slimformer.runtime.modeling_slimformer.HeadPadOutLinear`); ``qk_index`` the kept
    q/k channel positions per kv head when ``qk_head_dim < head_dim`` (MoDeGPT; see
    :class:`slimformer.runtime.modeling_slimformer.HeadScatterOutLinear`).

    Residual channel subsets (DISP-LLM; defaults ``None`` = the whole residual stream, so
    older plans still load): the block keeps the original HF modules and a full-width
    residual stream (``d_in == d_mid == d_out == full_width``), but attention reads only
    channels ``attn_in_index`` (q, k, v) and writes only ``attn_out_index`` (o); the MLP
    reads ``mlp_in_index`` (gate/up, fc1) and writes ``mlp_out_index`` (down, fc2). Each is
    a sorted list of distinct positions in ``[0, full_width)`` (see
    :class:`slimformer.runtime.modeling_slimformer.GatherInLinear` / ``ScatterOutLinear``).
    """

    d_in: int
    d_mid: int | None
    d_out: int
    attn_shortcut: bool
    mlp_shortcut: bool
    q_out: int
    k_out: int
    v_out: int
    mlp_width: int
    n_heads: int | None = None
    n_kv_heads: int | None = None
    head_dim: int | None = None
    qk_head_dim: int | None = None
    v_head_dim: int | None = None
    qk_index: list[list[int]] | None = None
    attn_in_index: list[int] | None = None
    attn_out_index: list[int] | None = None
    mlp_in_index: list[int] | None = None
    mlp_out_index: list[int] | None = None


@dataclass
class ShapePlan:
    """The shape of a whole compressed model."""

    model_type: str
    full_width: int
    embed_width: int
    head_width: int
    head_bias: bool
    layout: dict[str, Any]
    architecture: str
    norm_eps: float
    paths: dict[str, str | None]
    blocks: list[BlockPlan] = field(default_factory=list)
    format_version: int = FORMAT_VERSION
    fused: bool = True  # blocks are SlimBlocks with folded norms; False = original HF blocks (index pruning)
    tied_head: bool = False  # the head shares the embedding tensor (stored once)
    #: format 3: the final norm maps ``head_width -> embed_width`` (keep-tied SliceGPT); ``head_width``
    #: is then the residual width at the final norm and the head reads ``embed_width``
    head_proj: bool = False
    #: fused projections held as parts (Phi-3): ``[{"path": "self_attn.qkv_proj", "parts": [...]}, ...]``
    unfused: list[dict[str, Any]] | None = None
    #: GPT-2's Conv1D modules, stored as nn.Linear (block-level paths)
    conv1d: list[str] | None = None

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        for key in ("unfused", "conv1d"):
            if not data[key]:
                del data[key]  # plans of families without them are unchanged
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "ShapePlan":
        data = dict(data)
        data["blocks"] = [BlockPlan(**b) for b in data.get("blocks", [])]
        return cls(**data)

    def widths_table(self) -> list[dict[str, Any]]:
        """One row per block: the widths a user wants to see."""
        return [
            {"layer": i, "d_in": b.d_in, "d_mid": b.d_mid, "d_out": b.d_out, "mlp": b.mlp_width,
             **({"heads": b.n_heads, "kv_heads": b.n_kv_heads, "v_head_dim": b.v_head_dim}
                if b.n_heads is not None else {}),
             **({name.removesuffix("_index"): self.full_width if getattr(b, name) is None else len(getattr(b, name))
                 for name in CHANNEL_SETS} if any(getattr(b, n) is not None for n in CHANNEL_SETS) else {})}
            for i, b in enumerate(self.blocks)
        ]


def config_head_dim(config: Any) -> int:
    """Head dim the attention code of the base config reshapes q/k/v with."""
    return int(getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads)


def plan_from_model(model: nn.Module, adapter: ArchAdapter) -> ShapePlan:
    """Read the plan off a model (slim form or original blocks; shapes of its actual weights)."""
    blocks = []
    hd = config_head_dim(model.config)
    for block in adapter.get_layers(model):
        q, k, v = (get_module(block, p) for p in adapter.attn_readers)
        o, down = get_module(block, adapter.o), get_module(block, adapter.down)
        up = get_module(block, adapter.up)
        d_mid = None if adapter.parallel else int(getattr(o, "residual_width", o.out_features))
        v_hd = int(getattr(v, "kept_dim", hd))
        kv_index = getattr(k, "index", None)  # HeadScatterOutLinear: kept q/k channels per kv head
        qk_hd = hd if kv_index is None else int(kv_index.shape[1])
        blocks.append(
            BlockPlan(
                d_in=int(getattr(q, "residual_width", q.in_features)),
                d_mid=d_mid,
                d_out=int(getattr(down, "residual_width", down.out_features)),
                attn_shortcut=getattr(block, "attn_shortcut", None) is not None,
                mlp_shortcut=getattr(block, "mlp_shortcut", None) is not None,
                q_out=q.out_features,
                k_out=k.out_features,
                v_out=v.out_features,
                mlp_width=up.out_features,
                n_heads=q.out_features // qk_hd,
                n_kv_heads=k.out_features // qk_hd,
                head_dim=hd,
                qk_head_dim=qk_hd,
                v_head_dim=v_hd,
                qk_index=None if kv_index is None else kv_index.tolist(),
                **channel_sets(block, adapter),
            )
        )
    head = get_module(model, adapter.head)
    emb = get_module(model, adapter.embed)
    first = adapter.get_layers(model)[0]
    final_norm = get_module(model, adapter.final_norm)
    head_proj = isinstance(final_norm, SlimRMSNormProject)
    return ShapePlan(
        conv1d=list(adapter.conv1d) or None,
        head_proj=head_proj,
        fused=is_slim(model, adapter),
        tied_head=head.weight is emb.weight,
        architecture=type(model).__name__,
        norm_eps=norm_eps(get_module(first, next(n for n in (adapter.attn_norm, adapter.mlp_norm,
                                                               *adapter.post_norms) if n)), adapter.norm_eps),
        paths=adapter_paths(adapter),
        model_type=model.config.model_type,
        full_width=model.config.hidden_size,
        embed_width=emb.embedding_dim,
        head_width=final_norm.width if head_proj else head.in_features,
        head_bias=head.bias is not None,
        layout=adapter.block_layout(model.config),
        blocks=blocks,
        unfused=unfused_specs(first, adapter),
    )


def unfused_specs(block: nn.Module, adapter: ArchAdapter) -> list[dict[str, Any]] | None:
    """The plan's ``unfused``: fused projections held as parts, 3-D experts held as an ExpertList."""
    specs: list[dict[str, Any]] = [{"path": path, "parts": list(parts)} for path, parts in adapter.unfuse]
    for spec in specs:
        if spec["path"] in adapter.interleaved_qkv:
            spec["head_dim"] = int(get_module(block, spec["path"]).head_dim)
    if adapter.experts is not None:
        specs.append({"path": adapter.moe_block, "experts": int(get_module(block, adapter.experts).num_experts)})
    return specs or None


def channel_sets(block: nn.Module, adapter: ArchAdapter) -> dict[str, list[int] | None]:
    """The residual channel subsets of one block (plan fields), read off its gather/scatter linears.

    Raises ValueError when linears that must share a subset (q, k, v; gate, up) disagree.
    """
    out: dict[str, list[int] | None] = {}
    for name, (keys, gather) in CHANNEL_SETS.items():
        attr = "in_index" if gather else "out_index"
        found = []
        for key in keys:
            path = getattr(adapter, key)
            if path is not None:
                idx = getattr(get_module(block, path), attr, None)
                found.append(None if idx is None else idx.tolist())
        if any(f != found[0] for f in found):
            raise ValueError(f"{', '.join(k for k in keys if getattr(adapter, k))} must read the same residual "
                             f"channels ({name}); they differ")
        out[name] = found[0]
    return out


def adapter_paths(adapter: ArchAdapter) -> dict[str, str | None]:
    """The adapter's module paths, stored in the plan so loaders need no family code."""
    keys = ("layers", "embed", "pos_embed", "final_norm", "head", "q", "k", "v", "o", "gate", "up", "down")
    return {k: getattr(adapter, k) for k in keys}
