"""Per-block importance scores from one forward pass over calibration data.

For block ``i`` with input ``x_in`` and output ``x_out`` (residual stream,
``[batch, seq, d]``), per token ``t``:

    cos_t = <x_in_t, x_out_t> / (|x_in_t| |x_out_t|)
    cosine_i = mean_t cos_t                  # over all calibration tokens
    BI_i     = 1 - cosine_i                  # Block Influence (ShortGPT / Dumitru et al.)

The reference code of layer-redundancy slicing (``metrics_BI.py``) *sums*
``1 - cos_t`` over tokens; we take the mean. The two differ by the constant
token count, so every ranking and the min-max normalised layer redundancy
``LR = 1 - minmax(BI)`` are identical, while the mean keeps BI in ``[0, 2]``
independent of the calibration size -- which the temperature of the ``global``
(softmax) schedule needs.

Each block runs exactly once per calibration batch, on the model as it is
(dense, before fusion: LayerNorm fusion centres the residual stream, which
would change the cosines of LayerNorm families).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from ..arch import ArchAdapter
from .dist import all_reduce_sum
from .runner import capture_block_inputs
from .source import BlockSource, blocks_or_memory

logger = logging.getLogger("slimformer.calib.scores")


@dataclass(frozen=True)
class LayerScores:
    """Per-block scores (one entry per decoder block).

    Attributes:
        bi: Block Influence ``1 - mean cos(x_in, x_out)``; high = the block changes
            the stream a lot (important).
        cosine: ``mean cos(x_in, x_out)`` over calibration tokens.
        tokens: number of calibration tokens averaged over.
    """

    bi: tuple[float, ...]
    cosine: tuple[float, ...]
    tokens: int

    def to_dict(self) -> dict[str, Any]:
        return {"bi": list(self.bi), "cosine": list(self.cosine), "tokens": self.tokens}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "LayerScores":
        cos = tuple(float(c) for c in data["cosine"])
        bi = tuple(float(b) for b in data.get("bi", [1.0 - c for c in cos]))
        return cls(bi, cos, int(data.get("tokens", 0)))


def _block_output(block: nn.Module, x: torch.Tensor, kwargs: dict[str, Any]) -> torch.Tensor:
    """Run a decoder block (HF layer or SlimBlock) on ``x: [b, t, d]``; returns ``[b, t, d]``."""
    out = block(x, **kwargs)
    return out[0] if isinstance(out, (tuple, list)) else out


@torch.no_grad()
def block_scores(
    model: nn.Module,
    adapter: ArchAdapter,
    input_ids: torch.Tensor,
    batch_size: int,
    device: torch.device,
    offload_activations: bool = False,
    progress: bool = True,
    *,
    blocks: BlockSource | None = None,
) -> LayerScores:
    """BI and cosine per block, running every block once per batch (model unchanged).

    Args:
        input_ids: calibration ids ``[N, T]``.
        batch_size: windows per forward.
        device: compute device of the block being run; activations are kept on
            CPU between blocks when ``offload_activations``.
        blocks: where the decoder blocks come from (default: in memory); read-only pass.
    """
    blocks = blocks_or_memory(blocks, model, adapter)
    inputs = capture_block_inputs(model, adapter, input_ids, batch_size, device, offload_activations, blocks=blocks)
    bi: list[float] = []
    cosine: list[float] = []
    tokens = 0
    for li in tqdm(range(blocks.n_layers), desc="block scores", unit="layer", disable=not progress):
        total = torch.zeros((), dtype=torch.float64)
        tokens = 0
        with blocks.block(li, device, write=False) as block:
            for b, (x, kw) in enumerate(zip(inputs.hidden, inputs.kwargs)):
                x = x.to(device)
                y = _block_output(block, x, kw)  # [b, t, d]
                cos = nn.functional.cosine_similarity(x.double(), y.double(), dim=-1)  # [b, t]
                total += cos.sum().cpu()
                tokens += cos.numel()
                inputs.hidden[b] = inputs.put(y)
        sums = all_reduce_sum(torch.tensor([float(total), float(tokens)], dtype=torch.float64))
        total, tokens = sums[0], int(sums[1])  # over every rank's calibration shard
        c = float(total / tokens)
        cosine.append(c)
        bi.append(1.0 - c)
        logger.debug("layer %d: cosine %.5f BI %.5f", li, c, 1.0 - c)
    return LayerScores(tuple(bi), tuple(cosine), tokens)
