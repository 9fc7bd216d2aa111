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
from ..runtime.modeling_slimformer import (ExpertList, FusedLinear, as_plain_linear, conv1d_to_linear, split_experts,
                                           split_linear)

logger = logging.getLogger("slimformer.core.projections")


def split_projections(model: nn.Module, adapter: ArchAdapter, layers: Any = None) -> int:
    """Hold every fused projection of ``model`` (or of the given ``layers``) as parts, in place.

    Returns the number of linears split (0 when already split or the family fuses nothing)."""
    if not adapter.unfuse and adapter.experts is None and not adapter.conv1d and not adapter.as_linear:
        return 0
    sizes = adapter.split_sizes(model.config) if adapter.split_sizes is not None else {}
    count = 0
    for block in adapter.get_layers(model) if layers is None else layers:
        for path in adapter.as_linear:  # Falcon's FalconLinear -> nn.Linear (same parameters)
            as_plain_linear(block, path)
        for path in adapter.conv1d:  # GPT-2's Conv1D -> nn.Linear first (the parts are linears)
            if not isinstance(block.get_submodule(path), (nn.Linear, FusedLinear)):
                conv1d_to_linear(block, path)
                count += 1
        for path, parts in adapter.unfuse:
            if not isinstance(block.get_submodule(path), FusedLinear):
                split_linear(block, path, list(parts), list(sizes[path]), interleave_head_dim(model.config, adapter, path))
                count += 1
        if adapter.experts is not None and not isinstance(block.get_submodule(adapter.experts), ExpertList):
            split_experts(block, adapter.moe_block)
            count += 1
    if count:
        logger.info("%s: holding %d fused projections as their parts", adapter.name, count)
    return count


def interleave_head_dim(config: Any, adapter: ArchAdapter, path: str) -> int | None:
    """The head dim of a fused projection whose rows are grouped per head (GPT-NeoX), else ``None``."""
    if path not in adapter.interleaved_qkv:
        return None
    return int(getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads)


def fuse_state(state: dict[str, torch.Tensor], adapter: ArchAdapter, n_layers: int,
               config: Any = None) -> dict[str, torch.Tensor]:
    """The state dict with each split projection's parts concatenated back into the original key
    (``...qkv_proj.q_proj.weight`` + ``k_proj`` + ``v_proj`` -> ``...qkv_proj.weight``) and each
    ExpertList stacked back into the family's 3-D ``gate_up_proj`` / ``down_proj`` tensors."""
    if not adapter.unfuse and adapter.experts is None and not adapter.conv1d:
        return state
    out = dict(state)
    if adapter.experts is not None:
        for i in range(n_layers):
            _stack_experts(out, f"{adapter.layers}.{i}.{adapter.experts}")
    for i in range(n_layers):
        for path, parts in adapter.unfuse:
            base = f"{adapter.layers}.{i}.{path}"
            hd = interleave_head_dim(config, adapter, path)
            for kind in ("weight", "bias"):
                keys = [f"{base}.{part}.{kind}" for part in parts]
                if all(k in out for k in keys):
                    tensors = [out.pop(k) for k in keys]
                    if hd is not None:  # rows grouped per head / kv group again: [groups, rows of each part, ...]
                        heads = tensors[-1].shape[0] // hd
                        tensors = [torch.cat([t.unflatten(0, (heads, -1)) for t in tensors], 1).flatten(0, 1)]
                    out[f"{base}.{kind}"] = torch.cat(tensors, dim=0)
                elif any(k in out for k in keys):
                    raise ValueError(f"{base}: some parts have a {kind} and some do not; cannot fuse them back")
        for path in adapter.conv1d:  # GPT-2: back to Conv1D's [in, out] orientation
            key = f"{adapter.layers}.{i}.{path}.weight"
            out[key] = out[key].T.contiguous()
    return out


def _stack_experts(state: dict[str, torch.Tensor], base: str) -> None:
    """``base.{e}.{gate,up,down}_proj.weight`` -> ``base.gate_up_proj [E, 2I, d]``, ``base.down_proj [E, d, I]``."""
    n = 0
    while f"{base}.{n}.down_proj.weight" in state:
        n += 1
    if n == 0:
        return
    gate_up = [torch.cat([state.pop(f"{base}.{e}.gate_proj.weight"), state.pop(f"{base}.{e}.up_proj.weight")])
               for e in range(n)]
    down = [state.pop(f"{base}.{e}.down_proj.weight") for e in range(n)]
    if len({t.shape for t in gate_up}) != 1 or len({t.shape for t in down}) != 1:
        raise ValueError(f"{base}: experts of different widths cannot be stacked into one tensor")
    state[f"{base}.gate_up_proj"] = torch.stack(gate_up)
    state[f"{base}.down_proj"] = torch.stack(down)


__all__ = ["fuse_state", "split_projections"]
