"""Where the layer-at-a-time passes get their decoder blocks from: a :class:`BlockSource`.

Every pass (block inputs, block scores, rotate-and-slice, the prune pass, MoDeGPT) walks the
blocks in order and asks its source for one block at a time::

    with blocks.block(li, device, write=True) as block:   # block li on ``device``
        ...                                                # compress it in place

Two sources:

* :class:`InMemoryBlocks` (the default): the model is in memory; block ``li`` moves to the
  compute device for the ``with`` and back to the model's device afterwards.
* :class:`slimformer.calib.offload.LayerStore` (``--offload``): the block's parameters are
  read from the checkpoint for the ``with`` and afterwards written to the block's output
  shard (``write=True``: the block was compressed) or dropped (``write=False``: a read-only
  pass such as block scores).

Two more things depend on the source, so the passes ask it rather than the model:

* :meth:`BlockSource.stash`: where cached activations wait between blocks;
* :meth:`BlockSource.fuse_norms`: put the model into slim form (norm fusion,
  :func:`slimformer.core.fuse.fuse`). In memory every block is fused at once; an offloaded
  source fuses the global tensors now and each block right after it is loaded.

Methods receive their source as :attr:`slimformer.methods.base.Runtime.blocks`; the API
builds it (:func:`slimformer.api.compress`).
"""

from __future__ import annotations

import logging
from contextlib import contextmanager
from typing import ContextManager, Iterator

import torch
from torch import nn

from ..arch import ArchAdapter
from .stash import ActivationStash

logger = logging.getLogger("slimformer.calib.source")


def model_device(model: nn.Module) -> torch.device:
    """Device of the model's first parameter."""
    return next(model.parameters()).device


class BlockSource:
    """One decoder block at a time for the layer loops (see the module docstring).

    Attributes:
        model: the model whose blocks this source hands out.
        adapter: its architecture adapter.
        offloaded: True when the blocks are not in memory between uses (then passes that
            need every block at once, or rebuild the model, cannot run).
        activations: an offloaded source's activation storage (``"cpu"`` or ``"disk"``),
            else ``None``.
    """

    offloaded: bool = False
    activations: str | None = None

    def __init__(self, model: nn.Module, adapter: ArchAdapter) -> None:
        self.model, self.adapter = model, adapter

    @property
    def n_layers(self) -> int:
        """Number of decoder blocks."""
        return len(self.adapter.get_layers(self.model))

    def block(self, li: int, device: torch.device, write: bool = True) -> ContextManager[nn.Module]:
        """Context manager: decoder block ``li`` on ``device`` for the duration of the ``with``.

        ``write``: the block is modified (an offloaded source writes it out afterwards, once;
        nothing is written when the ``with`` body raises).
        """
        raise NotImplementedError

    def stash(self, device: torch.device, offload_activations: bool) -> ActivationStash:
        """Storage for cached activations of blocks computed on ``device``."""
        raise NotImplementedError

    def fuse_norms(self) -> None:
        """Bring the model into slim form (norm fusion); idempotent."""
        raise NotImplementedError


class InMemoryBlocks(BlockSource):
    """Blocks of a model that is entirely in memory: moved to the compute device and back."""

    @contextmanager
    def block(self, li: int, device: torch.device, write: bool = True) -> Iterator[nn.Module]:
        layers = self.adapter.get_layers(self.model)
        if any(p.device.type == "meta" for p in layers[li].parameters()):
            raise ValueError(f"decoder block {li} has no weights (meta device): an offloaded model needs its "
                             "LayerStore as the block source (slimformer.api.compress finds it)")
        home = model_device(self.model)
        block = layers[li].to(device)
        try:
            yield block
        finally:
            layers[li] = layers[li].to(home)

    def stash(self, device: torch.device, offload_activations: bool) -> ActivationStash:
        return ActivationStash("cpu" if offload_activations else "device", device)

    def fuse_norms(self) -> None:
        from ..core.fuse import fuse

        fuse(self.model, self.adapter)


def blocks_or_memory(blocks: BlockSource | None, model: nn.Module, adapter: ArchAdapter) -> BlockSource:
    """``blocks``, or an :class:`InMemoryBlocks` source of ``model`` when ``None``."""
    return blocks if blocks is not None else InMemoryBlocks(model, adapter)


__all__ = ["BlockSource", "InMemoryBlocks", "blocks_or_memory", "model_device"]
