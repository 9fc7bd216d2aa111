"""Layer-at-a-time execution on cached block inputs.

Only the block being processed needs to sit on the compute device; the cached
activations may stay on CPU (``offload_activations``) or, for an offloaded model
(:mod:`slimformer.calib.offload`), in files. Every layer loop gets its blocks from a
:class:`~slimformer.calib.source.BlockSource` (``with blocks.block(li, device)``),
which for an offloaded model loads the block from the checkpoint and writes it out
afterwards; the source also says where activations are stashed. Inputs of block 0 and the
keyword arguments every block receives (attention mask, rotary tables, position
ids) are captured by running the model's own forward up to the first block, so
architecture-specific pre-processing is always the installed transformers'.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from ..arch import ArchAdapter, set_module
from .source import BlockSource, blocks_or_memory, model_device
from .stash import ActivationStash

logger = logging.getLogger("slimformer.calib.runner")


class _StopForward(Exception):
    """Raised by the catcher once block 0's inputs are recorded."""


class _Catcher(nn.Module):
    """Stands in for block 0: records its input and keyword arguments (positional ones named by
    ``positional``, :attr:`slimformer.arch.ArchAdapter.block_args`), then stops the forward."""

    def __init__(self, positional: tuple[str, ...] = ()) -> None:
        super().__init__()
        self.records: list[tuple[torch.Tensor, dict[str, Any]]] = []
        self.positional = positional

    def forward(self, hidden_states: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        if len(args) > len(self.positional):
            raise TypeError("decoder blocks are expected to be called with keyword arguments")
        self.records.append((hidden_states, {**dict(zip(self.positional, args)), **kwargs}))
        raise _StopForward


@dataclass
class BlockInputs:
    """Cached inputs of the current block, per calibration batch.

    Attributes:
        hidden: per batch ``[batch, seq, width]`` residual stream entering the block
            (a tensor, or a :class:`~slimformer.calib.stash.DiskTensor`: use ``.to(device)``).
        kwargs: per batch keyword arguments for the block (on the compute device).
        stash: where activations wait between uses; store with :meth:`put`.
    """

    hidden: list[Any] = field(default_factory=list)
    kwargs: list[dict[str, Any]] = field(default_factory=list)
    stash: ActivationStash = field(default_factory=lambda: ActivationStash("cpu", torch.device("cpu")))

    def __len__(self) -> int:
        return len(self.hidden)

    def put(self, t: torch.Tensor) -> Any:
        """Park ``t`` (any cached activation, not only block inputs) until it is needed again."""
        return self.stash.put(t)


def batches(input_ids: torch.Tensor, batch_size: int) -> list[torch.Tensor]:
    """Split ``input_ids: [N, T]`` into ``[<=batch_size, T]`` chunks."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    return list(torch.split(input_ids, batch_size, dim=0))


@torch.no_grad()
def capture_block_inputs(
    model: nn.Module,
    adapter: ArchAdapter,
    input_ids: torch.Tensor,
    batch_size: int,
    device: torch.device,
    offload_activations: bool,
    *,
    blocks: BlockSource | None = None,
) -> BlockInputs:
    """Run the model's pre-block forward (embeddings, rotary tables, masks) per batch.

    Returns block 0's inputs ``[b, T, d]`` per batch and the block kwargs, stashed where
    ``blocks`` (default: the in-memory source) keeps activations. The decoder blocks are
    detached while this runs, so only the embeddings etc. are moved to ``device`` (and
    back afterwards).
    """
    layers = adapter.get_layers(model)
    home = model_device(model)
    catcher = _Catcher(adapter.block_args)
    set_module(model, adapter.layers, nn.ModuleList([catcher]))
    try:
        model.to(device)
        for chunk in batches(input_ids, batch_size):
            try:
                model(input_ids=chunk.to(device), use_cache=False)
            except _StopForward:
                pass
    finally:
        set_module(model, adapter.layers, layers)
        if home != device:
            model.to(home)
    out = BlockInputs(stash=blocks_or_memory(blocks, model, adapter).stash(device, offload_activations))
    for hidden, kwargs in catcher.records:
        out.hidden.append(out.put(hidden))
        out.kwargs.append(kwargs)
    return out
