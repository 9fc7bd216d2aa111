"""Layer-at-a-time execution on cached block inputs.

Only the block being processed needs to sit on the compute device; the cached
activations may stay on CPU (``offload_activations``). Inputs of block 0 and the
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

logger = logging.getLogger("slimformer.calib.runner")


class _StopForward(Exception):
    """Raised by the catcher once block 0's inputs are recorded."""


class _Catcher(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.records: list[tuple[torch.Tensor, dict[str, Any]]] = []

    def forward(self, hidden_states: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        if args:
            raise TypeError("decoder blocks are expected to be called with keyword arguments")
        self.records.append((hidden_states, kwargs))
        raise _StopForward


@dataclass
class BlockInputs:
    """Cached inputs of the current block, per calibration batch.

    Attributes:
        hidden: per batch ``[batch, seq, width]`` residual stream entering the block.
        kwargs: per batch keyword arguments for the block (on the compute device).
        storage: device where ``hidden`` is kept between uses.
    """

    hidden: list[torch.Tensor] = field(default_factory=list)
    kwargs: list[dict[str, Any]] = field(default_factory=list)
    storage: torch.device = field(default_factory=lambda: torch.device("cpu"))

    def __len__(self) -> int:
        return len(self.hidden)


def model_device(model: nn.Module) -> torch.device:
    """Device of the model's first parameter."""
    return next(model.parameters()).device


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
) -> BlockInputs:
    """Run the model's pre-block forward (embeddings, rotary tables, masks) per batch.

    Returns block 0's inputs ``[b, T, d]`` per batch and the block kwargs. The
    decoder blocks are detached while this runs, so only the embeddings etc. are
    moved to ``device`` (and back afterwards).
    """
    layers = adapter.get_layers(model)
    home = model_device(model)
    catcher = _Catcher()
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
    storage = torch.device("cpu") if offload_activations else device
    out = BlockInputs(storage=storage)
    for hidden, kwargs in catcher.records:
        out.hidden.append(hidden.to(storage))
        out.kwargs.append(kwargs)
    return out
