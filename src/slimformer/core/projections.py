"""Fused projections (Phi-3's ``qkv_proj`` / ``gate_up_proj``) held as their parts, and back.

:func:`split_projections` turns every fused linear an adapter lists in ``unfuse`` into a
:class:`~slimformer.runtime.modeling_slimformer.FusedLinear` of separate linears (exact: the
family's forward splits the concatenated output again), so methods prune and rotate q, k, v and
gate, up like any other family. :func:`fuse_state` writes the original fused tensors for a plain
save.
"""

from __future__ import annotations

import logging
from typing import Any

import torch
from torch import nn

from ..arch import ArchAdapter
from ..runtime.modeling_slimformer import FusedLinear, split_linear

logger = logging.getLogger("slimformer.core.projections")


def split_projections(model: nn.Module, adapter: ArchAdapter, layers: Any = None) -> int:
    """Hold every fused projection of ``model`` (or of the given ``layers``) as parts, in place.

    Returns the number of linears split (0 when already split or the family fuses nothing)."""
    if not adapter.unfuse:
        return 0
    sizes = adapter.split_sizes(model.config) if adapter.split_sizes is not None else {}
    count = 0
    for block in adapter.get_layers(model) if layers is None else layers:
        for path, parts in adapter.unfuse:
            if not isinstance(block.get_submodule(path), FusedLinear):
                split_linear(block, path, list(parts), list(sizes[path]))
                count += 1
    if count:
        logger.info("%s: holding %d fused projections as their parts", adapter.name, count)
    return count


def fuse_state(state: dict[str, torch.Tensor], adapter: ArchAdapter, n_layers: int) -> dict[str, torch.Tensor]:
    """The state dict with each split projection's parts concatenated back into the original key
    (``...qkv_proj.q_proj.weight`` + ``k_proj`` + ``v_proj`` -> ``...qkv_proj.weight``)."""
    if not adapter.unfuse:
        return state
    out = dict(state)
    for i in range(n_layers):
        for path, parts in adapter.unfuse:
            base = f"{adapter.layers}.{i}.{path}"
            for kind in ("weight", "bias"):
                keys = [f"{base}.{part}.{kind}" for part in parts]
                if all(k in out for k in keys):
                    out[f"{base}.{kind}"] = torch.cat([out.pop(k) for k in keys], dim=0)
                elif any(k in out for k in keys):
                    raise ValueError(f"{base}: some parts have a {kind} and some do not; cannot fuse them back")
    return out


__all__ = ["fuse_state", "split_projections"]
