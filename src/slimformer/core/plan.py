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
from .fuse import norm_eps

FORMAT_VERSION = 1


@dataclass
class BlockPlan:
    """Widths of one decoder block.

    ``d_in``: residual width entering the block; ``d_mid``: between attention and
    MLP (``None`` for parallel blocks); ``d_out``: leaving the block. ``q_out``,
    ``k_out``, ``v_out``: output widths of the projections (heads x head dim);
    ``mlp_width``: MLP intermediate width.
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

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "ShapePlan":
        data = dict(data)
        data["blocks"] = [BlockPlan(**b) for b in data.get("blocks", [])]
        return cls(**data)

    def widths_table(self) -> list[dict[str, Any]]:
        """One row per block: the widths a user wants to see."""
        return [
            {"layer": i, "d_in": b.d_in, "d_mid": b.d_mid, "d_out": b.d_out, "mlp": b.mlp_width}
            for i, b in enumerate(self.blocks)
        ]


def plan_from_model(model: nn.Module, adapter: ArchAdapter) -> ShapePlan:
    """Read the plan off a model in slim form (shapes of its actual weights)."""
    blocks = []
    for block in adapter.get_layers(model):
        q, k, v = (get_module(block, p) for p in adapter.attn_readers)
        o, down = get_module(block, adapter.o), get_module(block, adapter.down)
        up = get_module(block, adapter.up)
        d_mid = None if adapter.parallel else o.out_features
        blocks.append(
            BlockPlan(
                d_in=q.in_features,
                d_mid=d_mid,
                d_out=down.out_features,
                attn_shortcut=getattr(block, "attn_shortcut", None) is not None,
                mlp_shortcut=getattr(block, "mlp_shortcut", None) is not None,
                q_out=q.out_features,
                k_out=k.out_features,
                v_out=v.out_features,
                mlp_width=up.out_features,
            )
        )
    head = get_module(model, adapter.head)
    emb = get_module(model, adapter.embed)
    first = adapter.get_layers(model)[0]
    return ShapePlan(
        architecture=type(model).__name__,
        norm_eps=norm_eps(get_module(first, adapter.attn_norm)),
        paths=adapter_paths(adapter),
        model_type=model.config.model_type,
        full_width=model.config.hidden_size,
        embed_width=emb.embedding_dim,
        head_width=head.in_features,
        head_bias=head.bias is not None,
        layout=adapter.block_layout(model.config),
        blocks=blocks,
    )


def adapter_paths(adapter: ArchAdapter) -> dict[str, str | None]:
    """The adapter's module paths, stored in the plan so loaders need no family code."""
    keys = ("layers", "embed", "pos_embed", "final_norm", "head", "q", "k", "v", "o", "gate", "up", "down")
    return {k: getattr(adapter, k) for k in keys}
