"""DISP-LLM's hypernetworks: mask logits from a bi-GRU, and the masks drawn from them.

Two architectures (METHODS.md, "DISP-LLM"; ``DISPConfig.variant``):

* :class:`HyperNet` (``variant="library"``): fixed random inputs ``z ~ N(0, 1)`` of
  dimension 32 per mask kind and block (a buffer, never trained) -> bidirectional GRU over
  the L blocks (hidden ``H`` per direction) -> LayerNorm(2H) -> GELU -> one bias-free
  linear head per mask *kind*, shared by all blocks (5 heads);
* :class:`MaskSeqHyperNet` (``variant="reference"``, as the official
  ``pruning/hypernetwork.py``): one 32-d random input per *mask* -> bidirectional GRU over
  the 5L masks (block-major, :data:`~.masks.MASK_KINDS` order within a block) ->
  LayerNorm(2H) -> GELU -> one bias-free linear head per mask (5L heads). The official
  training loop sets ``requires_grad`` on every hypernetwork parameter, the inputs
  included, so here the inputs are a trained parameter too.

Masks from logits ``a``:

* training (:meth:`HyperNet.sample`): soft ``s = sigmoid((a + g + 3) / tau)`` with one
  Gumbel sample ``g = -log(-log u)`` per channel, as the official code does (the textbook
  binary Concrete would use the logistic ``log u - log(1 - u)``, the difference of two
  Gumbels; with a single Gumbel, fresh masks keep everything with probability
  ``1 - exp(-e^3)``, so training starts from the dense model), hard ``h = [s > 0.5]``;
  the forward uses ``h`` and the backward the gradient of ``s`` (straight-through, exact
  0/1 values: :class:`StraightThroughRound`). The paper uses the ReinMax estimator
  instead, a second-order correction of the straight-through gradient: optional
  (``reinmax=True``, :func:`reinmax_binary`);
* soft (:meth:`HyperNetBase.soft_masks`): the Gumbel-sigmoid ``s`` itself, in (0, 1) -
  what the reference variant feeds the LM loss (its budget term takes hard masks from a
  separate draw);
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


def _seeded_init(module: nn.Module, gen: torch.Generator, hidden: int, skip: Sequence[nn.Parameter]) -> None:
    """Uniform init of every parameter from ``gen`` (independent of the global RNG); ``skip`` keeps its values.

    Matrices ``[out, in]``: U(-1/sqrt(in), 1/sqrt(in)); vectors: U(-1/sqrt(hidden), 1/sqrt(hidden)).
    """
    skipped = {id(p) for p in skip}
    with torch.no_grad():
        for p in module.parameters():
            if id(p) in skipped:
                continue
            if p.dim() >= 2:
                bound = 1.0 / p.shape[1] ** 0.5
                p.copy_((torch.rand(p.shape, generator=gen) * 2 - 1) * bound)
            else:
                p.copy_((torch.rand(p.shape, generator=gen) * 2 - 1) / hidden ** 0.5)


class HyperNetBase(nn.Module):
    """What both hypernetworks share: masks from the ``[L, n]`` logits of each kind.

    Subclasses set ``n_layers`` and implement :meth:`logits`.
    """

    n_layers: int

    def _set_shape(self, n_layers: int, sizes: dict[str, int], seed: int) -> torch.Generator:
        """Check and store ``n_layers`` and the per-kind ``sizes``; the seeded generator for the parameters."""
        missing = [k for k in MASK_KINDS if k not in sizes]
        if missing:
            raise ValueError(f"{type(self).__name__} needs sizes for {missing}")
        self.n_layers, self.sizes = int(n_layers), {k: int(sizes[k]) for k in MASK_KINDS}
        return torch.Generator().manual_seed(int(seed))

    def logits(self) -> dict[str, torch.Tensor]:  # pragma: no cover - abstract
        """Per kind, ``[L, n_kind]`` mask logits (before the +3 shift)."""
        raise NotImplementedError

    def soft_masks(self, logits: dict[str, torch.Tensor], temperature: float,
                   generator: torch.Generator | None = None) -> list[BlockMasks]:
        """Gumbel-sigmoid masks ``sigmoid((a + g + 3) / tau)`` in (0, 1), one fresh Gumbel sample per channel."""
        return split_blocks({k: gumbel_sigmoid(a, temperature, generator) for k, a in logits.items()}, self.n_layers)

    def hard_masks(self, logits: dict[str, torch.Tensor], temperature: float,
                   generator: torch.Generator | None = None, reinmax: bool = False) -> list[BlockMasks]:
        """Exactly 0/1 training masks with a surrogate gradient.

        Straight-through (default): ``[s > 0.5]`` of a fresh Gumbel-sigmoid ``s``, gradient of ``s``.
        ReinMax (``reinmax=True``): :func:`reinmax_binary` on the tempered keep logit ``(a + 3) / tau``.
        """
        out: dict[str, torch.Tensor] = {}
        for k, a in logits.items():
            if reinmax:
                u = torch.rand(a.shape, generator=generator).clamp(1e-10, 1 - 1e-7).to(a.device)
                out[k] = reinmax_binary((a + LOGIT_SHIFT) / temperature, u)
            else:
                out[k] = StraightThroughRound.apply(gumbel_sigmoid(a, temperature, generator))
        return split_blocks(out, self.n_layers)

    def sample(self, temperature: float, generator: torch.Generator | None = None,
               reinmax: bool = False) -> list[BlockMasks]:
        """Hard training masks (values 0/1, gradients of the soft masks) from fresh logits."""
        return self.hard_masks(self.logits(), temperature, generator, reinmax)

    @torch.no_grad()
    def deterministic(self, offset: float = 0.0, logits: dict[str, torch.Tensor] | None = None) -> list[BlockMasks]:
        """Noise-free hard masks ``[a + 3 + offset > 0]``; every mask keeps at least its top channel."""
        logits = self.logits() if logits is None else logits
        return split_blocks({k: hard_from_logits(a + LOGIT_SHIFT + offset) for k, a in logits.items()}, self.n_layers)


class HyperNet(HyperNetBase):
    """The library variant: one GRU step per block, one head per mask kind shared by all blocks.

    Args:
        n_layers: number of decoder blocks ``L``.
        sizes: length of each mask kind (``{"attn_in": d, ..., "mlp_mid": I, ...}``), the same in every block.
        hidden: GRU hidden size per direction ``H``.
        seed: seed of the fixed inputs and of the parameter initialisation.
    """

    def __init__(self, n_layers: int, sizes: dict[str, int], hidden: int = 64, seed: int = 0) -> None:
        super().__init__()
        gen = self._set_shape(n_layers, sizes, seed)
        # [L, 5 * 32] fixed inputs: one 32-d code per mask kind and block
        self.register_buffer("inputs", torch.randn(self.n_layers, len(MASK_KINDS) * INPUT_DIM, generator=gen))
        self.gru = nn.GRU(len(MASK_KINDS) * INPUT_DIM, hidden, batch_first=True, bidirectional=True)
        self.norm = nn.LayerNorm(2 * hidden)
        self.act = nn.GELU()
        self.heads = nn.ModuleDict({k: nn.Linear(2 * hidden, n, bias=False) for k, n in self.sizes.items()})
        _seeded_init(self, gen, hidden, skip=[self.norm.weight, self.norm.bias])

    def logits(self) -> dict[str, torch.Tensor]:
        """Per kind, ``[L, n_kind]`` mask logits (before the +3 shift)."""
        h, _ = self.gru(self.inputs.unsqueeze(0))  # [1, L, 2H]
        h = self.act(self.norm(h[0]))  # [L, 2H]
        return {k: head(h) for k, head in self.heads.items()}


class MaskSeqHyperNet(HyperNetBase):
    """The reference variant (official code): one GRU step and one linear head per mask.

    The GRU reads a sequence of ``5L`` steps (block 0's ``attn_in, attn_out, mlp_in,
    mlp_mid, mlp_out``, then block 1's, ...); step ``i``'s output feeds head ``i`` only.

    Args:
        n_layers: number of decoder blocks ``L``.
        sizes: length of each mask kind, the same in every block (the logits are stacked per kind).
        hidden: GRU hidden size per direction ``H`` (official: 64, i.e. ``2 * 32``).
        seed: seed of the inputs and of the parameter initialisation.

    Attributes:
        inputs: ``[5L, 32]`` N(0, 1) inputs, trained (the official loop enables their gradient).
        heads: ``5L`` bias-free ``Linear(2H, n)``, block-major.
    """

    def __init__(self, n_layers: int, sizes: dict[str, int], hidden: int = 64, seed: int = 0) -> None:
        super().__init__()
        gen = self._set_shape(n_layers, sizes, seed)
        n_masks = self.n_layers * len(MASK_KINDS)
        self.inputs = nn.Parameter(torch.randn(n_masks, INPUT_DIM, generator=gen))  # [5L, 32]
        self.gru = nn.GRU(INPUT_DIM, hidden, batch_first=True, bidirectional=True)
        self.norm = nn.LayerNorm(2 * hidden)
        self.act = nn.GELU()
        self.heads = nn.ModuleList([nn.Linear(2 * hidden, self.sizes[k], bias=False)
                                    for _ in range(self.n_layers) for k in MASK_KINDS])
        _seeded_init(self, gen, hidden, skip=[self.inputs, self.norm.weight, self.norm.bias])

    def logits(self) -> dict[str, torch.Tensor]:
        """Per kind, ``[L, n_kind]`` mask logits (before the +3 shift); row ``b`` from head ``5b + kind``."""
        h, _ = self.gru(self.inputs.unsqueeze(0))  # [1, 5L, 2H]
        h = self.act(self.norm(h[0]))  # [5L, 2H]
        per_mask = [head(h[i]) for i, head in enumerate(self.heads)]  # 5L tensors [n]
        nk = len(MASK_KINDS)
        return {k: torch.stack(per_mask[j::nk]) for j, k in enumerate(MASK_KINDS)}


def build_hypernet(variant: str, n_layers: int, sizes: dict[str, int], hidden: int = 64,
                   seed: int = 0) -> HyperNetBase:
    """The hypernetwork of ``variant`` (``"library"``: :class:`HyperNet`, ``"reference"``: :class:`MaskSeqHyperNet`)."""
    if variant == "library":
        return HyperNet(n_layers, sizes, hidden, seed)
    if variant == "reference":
        return MaskSeqHyperNet(n_layers, sizes, hidden, seed)
    raise ValueError(f"variant must be one of library, reference, got {variant!r}")


def gumbel_sigmoid(a: torch.Tensor, temperature: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """``sigmoid((a + g + 3) / tau)``, one Gumbel(0, 1) sample ``g`` per entry (official code); shape of ``a``."""
    u = torch.rand(a.shape, generator=generator).clamp(1e-10, 1 - 1e-7).to(a.device)
    gumbel = -torch.log(-torch.log(u))
    return torch.sigmoid((a + gumbel + LOGIT_SHIFT) / temperature)


def reinmax_binary(theta: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """Exact 0/1 sample ``D ~ Bernoulli(sigmoid(theta))`` with the ReinMax gradient (Liu et al., NeurIPS 2023).

    ReinMax for two classes with logits ``(theta, 0)``: ``pi0 = sigmoid(theta)``,
    ``pi1 = (D + pi0) / 2`` with the gradient of a softmax at ``pi1`` (``pi1 (1 - pi1)``),
    ``pi2 = 2 pi1 - pi0 / 2``; the output is ``D + pi2 - pi2.detach()`` (exactly ``D`` in the
    forward, ``d pi2 / d theta`` in the backward - a second-order correction of straight-through).

    Args:
        theta: keep logits, any shape.
        u: uniform(0, 1) noise of the same shape (``D = [u < pi0]``).
    """
    pi0 = torch.sigmoid(theta)
    hard = (u < pi0.detach()).to(theta.dtype)
    pi1 = (hard + pi0.detach()) / 2
    pi1 = pi1 + (pi1 * (1 - pi1)) * (theta - theta.detach())  # value pi1, gradient pi1 (1 - pi1)
    pi2 = 2 * pi1 - 0.5 * pi0
    return hard + (pi2 - pi2.detach())


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
