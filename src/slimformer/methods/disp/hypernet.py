"""DISP-LLM's hypernetwork: per-block mask logits from a bi-GRU over the sequence of blocks.

Architecture (METHODS.md, "DISP-LLM"): fixed random inputs ``z ~ N(0, 1)`` of dimension
32 per mask kind and block (a buffer, never trained) -> bidirectional GRU over the L
blocks (hidden ``H`` per direction) -> LayerNorm(2H) -> GELU -> one bias-free linear
head per mask kind, giving each block's logits for its five masks.

Masks from logits ``a``:

* training (:meth:`HyperNet.sample`): soft ``s = sigmoid((a + g + 3) / tau)`` with one
  Gumbel sample ``g = -log(-log u)`` per channel, as the official code does (the textbook
  binary Concrete would use the logistic ``log u - log(1 - u)``, the difference of two
  Gumbels; with a single Gumbel, fresh masks keep everything with probability
  ``1 - exp(-e^3)``, so training starts from the dense model), hard ``h = [s > 0.5]``;
  the forward uses ``h`` and the backward the gradient of ``s`` (straight-through, exact
  0/1 values: :class:`StraightThroughRound`). The paper uses the ReinMax estimator
  instead, a second-order correction of the straight-through gradient; plain
  straight-through is simpler and was enough for the budgets tested here (docs/disp.md);
* export (:meth:`HyperNet.deterministic`): no noise, ``h = [a + 3 + offset > 0]`` with an
  optional global ``offset`` used to hit the parameter budget exactly.

The ``+3`` bias starts every mask almost fully on (``sigmoid(3/0.4) ~ 0.9994``).
"""

from __future__ import annotations

import logging
from typing import Any, Sequence

import torch
from torch import nn

from .masks import MASK_KINDS, BlockMasks

logger = logging.getLogger("slimformer.methods.disp")

#: dimension of the fixed random input per mask kind and block
INPUT_DIM = 32
#: logit shift that makes fresh masks keep (almost) everything
LOGIT_SHIFT = 3.0


class HyperNet(nn.Module):
    """Produces the five mask logits of every block.

    Args:
        n_layers: number of decoder blocks ``L``.
        sizes: length of each mask kind (``{"attn_in": d, ..., "mlp_mid": I, ...}``), the same in every block.
        hidden: GRU hidden size per direction ``H``.
        seed: seed of the fixed inputs and of the parameter initialisation.
    """

    def __init__(self, n_layers: int, sizes: dict[str, int], hidden: int = 64, seed: int = 0) -> None:
        super().__init__()
        missing = [k for k in MASK_KINDS if k not in sizes]
        if missing:
            raise ValueError(f"HyperNet needs sizes for {missing}")
        self.n_layers, self.sizes = int(n_layers), {k: int(sizes[k]) for k in MASK_KINDS}
        gen = torch.Generator().manual_seed(int(seed))
        # [L, 5 * 32] fixed inputs: one 32-d code per mask kind and block
        self.register_buffer("inputs", torch.randn(self.n_layers, len(MASK_KINDS) * INPUT_DIM, generator=gen))
        self.gru = nn.GRU(len(MASK_KINDS) * INPUT_DIM, hidden, batch_first=True, bidirectional=True)
        self.norm = nn.LayerNorm(2 * hidden)
        self.act = nn.GELU()
        self.heads = nn.ModuleDict({k: nn.Linear(2 * hidden, n, bias=False) for k, n in self.sizes.items()})
        with torch.no_grad():  # seeded init, independent of the global RNG
            for p in self.parameters():
                if p.dim() >= 2:
                    bound = 1.0 / p.shape[1] ** 0.5
                    p.copy_((torch.rand(p.shape, generator=gen) * 2 - 1) * bound)
                elif p is not self.norm.weight and p is not self.norm.bias:
                    p.copy_((torch.rand(p.shape, generator=gen) * 2 - 1) / hidden ** 0.5)

    def logits(self) -> dict[str, torch.Tensor]:
        """Per kind, ``[L, n_kind]`` mask logits (before the +3 shift)."""
        h, _ = self.gru(self.inputs.unsqueeze(0))  # [1, L, 2H]
        h = self.act(self.norm(h[0]))  # [L, 2H]
        return {k: head(h) for k, head in self.heads.items()}

    def sample(self, temperature: float, generator: torch.Generator | None = None) -> list[BlockMasks]:
        """Straight-through hard masks with Gumbel-sigmoid noise (values 0/1, gradients of the soft masks)."""
        out: dict[str, torch.Tensor] = {}
        for k, a in self.logits().items():
            u = torch.rand(a.shape, generator=generator).clamp(1e-10, 1 - 1e-7).to(a.device)
            gumbel = -torch.log(-torch.log(u))  # one Gumbel(0, 1) sample per channel (official code)
            soft = torch.sigmoid((a + gumbel + LOGIT_SHIFT) / temperature)
            out[k] = StraightThroughRound.apply(soft)
        return split_blocks(out, self.n_layers)

    @torch.no_grad()
    def deterministic(self, offset: float = 0.0, logits: dict[str, torch.Tensor] | None = None) -> list[BlockMasks]:
        """Noise-free hard masks ``[a + 3 + offset > 0]``; every mask keeps at least its top channel."""
        logits = self.logits() if logits is None else logits
        return split_blocks({k: hard_from_logits(a + LOGIT_SHIFT + offset) for k, a in logits.items()}, self.n_layers)


class StraightThroughRound(torch.autograd.Function):
    """Forward: exactly 0/1 (``s > 0.5``); backward: the identity (straight-through).

    (``h + s - s.detach()`` would give the same gradient but values only 0/1 up to rounding,
    and the parameter count of the training masks must be an exact integer.)
    """

    @staticmethod
    def forward(ctx: Any, soft: torch.Tensor) -> torch.Tensor:
        return (soft > 0.5).to(soft.dtype)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:
        return grad


def hard_from_logits(a: torch.Tensor) -> torch.Tensor:
    """``[L, n]`` 0/1 masks ``a > 0``, with each row's arg-max kept (no sublayer loses all its channels)."""
    hard = (a > 0).to(a.dtype)
    top = a.argmax(dim=1)
    hard[torch.arange(a.shape[0]), top] = 1.0
    return hard


def split_blocks(per_kind: dict[str, torch.Tensor], n_layers: int) -> list[BlockMasks]:
    """``{kind: [L, n]}`` -> one :class:`BlockMasks` per block."""
    return [BlockMasks(**{k: per_kind[k][i] for k in MASK_KINDS}) for i in range(n_layers)]


def uniform_sizes(sizes: Sequence[dict[str, int]]) -> dict[str, int]:
    """The common mask sizes of all blocks; ValueError if blocks differ (the heads are shared across blocks)."""
    first = dict(sizes[0])
    for i, s in enumerate(sizes):
        if dict(s) != first:
            raise ValueError(f"DISP's hypernetwork needs equal block shapes; block {i} has {s}, block 0 {first}")
    return first
