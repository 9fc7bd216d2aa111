"""PruneNet as the official code does it (``variant="reference"``), next to the library's own training.

Read from LCS2-IIITD/PruneNet at commit 0b67c44 (``prunenet/SparsityPredictor.py``,
``prunenet/prunenet.py``, ``prunenet/prunenet_utils.py``); docs/prunenet.md lists every
difference from :mod:`.policy` with file and line. In short:

* policy: ``alpha = sigmoid((W1 P^T + b) r)`` with ``P: [I, d]``, ``b: [I]``, ``r: [I, 1]``
  learned (a logistic score linear in each row, tied to the width ``I`` it was built for),
  keep probabilities ``o = sigmoid(logit(u) + logit(alpha))`` with fresh ``u ~ U(0, 1)``
  on every call (a binary-concrete perturbation, temperature 1);
* keep-set: ``k`` rows drawn without replacement with probability proportional to ``o``
  (``torch.multinomial(o, k, replacement=False)``), also for the final pruning;
* reward of layer ``l``: ``1 / KS(sigma(W1), sigma(W1[S]))`` (``99999`` when ``KS = 0``),
  weighted ``gamma ** l``; no baseline;
* loss of layer ``l``: ``-reward_l * sum_{i in S} log o_i`` with ``o`` from a *second*
  forward pass (new noise), one AdamW step per layer;
* the policy of the episode with the highest total reward is kept.
"""

from __future__ import annotations

import copy
import logging
import time
from dataclasses import dataclass, field
from typing import Sequence

import torch
from torch import nn
from tqdm.auto import tqdm

from .spectra import gumbel_top_k, ks_distance, singular_values

logger = logging.getLogger("slimformer.methods.prunenet")

#: the official reward when the two spectra have KS distance 0 (``prunenet_utils.py``)
KS_ZERO_REWARD = 99999.0


class ReferencePolicy(nn.Module):
    """The official ``SparsityPredictor``: a score per row of ``W1: [I, d]``, for one width ``I``.

    ``forward(W: [I, d]) -> [I]`` is ``logit(alpha) = (W P^T + b) r``; :meth:`log_keep_probs`
    adds the binary-concrete noise. Parameters are initialised in the official order and
    way: ``P, b`` as ``nn.Linear(d, I)``, then ``r ~ U(0, 1)`` (global torch RNG).
    """

    def __init__(self, d: int, intermediate: int) -> None:
        super().__init__()
        self.d, self.intermediate = int(d), int(intermediate)
        self.proj = nn.Linear(self.d, self.intermediate, bias=True)  # [I, d] weight, [I] bias
        self.row_scores = nn.Parameter(torch.rand(self.intermediate, 1))  # [I, 1]

    def forward(self, W: torch.Tensor) -> torch.Tensor:
        if W.dim() != 2 or tuple(W.shape) != (self.intermediate, self.d):
            raise ValueError(f"reference policy for a [{self.intermediate}, {self.d}] matrix got shape "
                             f"{tuple(W.shape)} (the official policy is tied to the FFN width it was trained on)")
        return (self.proj(W.float()) @ self.row_scores).squeeze(-1)  # [I, I] @ [I, 1] -> [I]

    def log_keep_probs(self, W: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """``log o: [I]``, ``o = sigmoid(logit(u) + logit(alpha))``, ``u ~ U(0, 1)`` drawn here.

        ``logit(alpha)`` is the pre-sigmoid score itself (the official code takes
        ``log(alpha) - log(1 - alpha)``, equal but infinite once ``alpha`` rounds to 0 or 1).
        """
        s = self(W)  # [I]
        u = torch.rand(s.shape, generator=generator, dtype=torch.float64).clamp(1e-12, 1 - 1e-12)
        noise = (u.log() - (-u).log1p()).to(s.device, s.dtype)  # logit(u)
        return nn.functional.logsigmoid(noise + s)


def inverse_ks_reward(reference: torch.Tensor, W: torch.Tensor, keep: torch.Tensor) -> float:
    """Official reward of keeping rows ``keep`` of ``W: [I, d]``: ``1 / KS(reference, sigma(W[keep]))``.

    ``reference`` is ``sigma(W)``; :data:`KS_ZERO_REWARD` when the spectra agree exactly.
    """
    ks = ks_distance(reference, singular_values(W.index_select(0, keep.to(W.device))))
    return KS_ZERO_REWARD if ks == 0 else 1.0 / ks


def draw_keep_set(log_o: torch.Tensor, k: int, generator: torch.Generator) -> torch.Tensor:
    """``k`` rows drawn without replacement with probability proportional to ``o`` (sorted ``[k]``).

    Same distribution as ``torch.multinomial(o, k, replacement=False)`` (successive draws
    proportional to the remaining ``o``), computed from ``log o`` with Gumbel keys so rows
    whose ``o`` underflows to 0 cannot break it.
    """
    return gumbel_top_k(log_o, k, generator).sort().values


def reference_log_prob(log_o: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """The official REINFORCE log-probability of a keep-set: ``sum_{i in keep} log o_i`` (a scalar).

    Not the probability of the draw: it ignores the without-replacement normalisation and
    the rows left out (``prunenet.py``: ``torch.gather(torch.log(o), 0, action).sum()``).
    """
    return log_o.gather(0, keep.to(log_o.device)).sum()


@dataclass
class ReferenceTrainResult:
    """What :func:`train_reference_policy` returns: the best episode's policy.

    ``rewards``: mean (undiscounted) reward per layer of every episode; ``best_episode``:
    index of the highest one, whose policy ``policy`` is.
    """

    policy: ReferencePolicy
    rewards: list[float] = field(default_factory=list)
    best_episode: int = 0
    seconds: float = 0.0


def _episode(policy: ReferencePolicy, opt: torch.optim.Optimizer, mats: Sequence[torch.Tensor],
             keep: Sequence[int], refs: Sequence[torch.Tensor], gamma: float,
             gen: torch.Generator) -> list[float]:
    """One official episode: draw a keep-set per layer, then one policy step per layer. Returns the rewards."""
    actions, rewards = [], []
    for W, k, ref in zip(mats, keep, refs):
        with torch.no_grad():
            action = draw_keep_set(policy.log_keep_probs(W, gen), k, gen)
        actions.append(action)
        rewards.append(inverse_ks_reward(ref, W, action))
    for layer, (W, action) in enumerate(zip(mats, actions)):
        log_o = policy.log_keep_probs(W, gen)  # fresh noise, as the official second forward pass
        loss = -(gamma ** layer) * rewards[layer] * reference_log_prob(log_o, action)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return rewards


def train_reference_policy(
    mats: Sequence[torch.Tensor],
    keep: Sequence[int],
    *,
    episodes: int = 20,
    lr: float = 1e-3,
    gamma: float = 0.99,
    seed: int = 0,
    progress: bool = True,
) -> ReferenceTrainResult:
    """Train the official policy on the first FFN matrices ``W1: [I, d]`` (all the same shape).

    Args:
        mats: one ``W1`` per layer (not modified).
        keep: rows kept per layer while training (``1 <= k_l < I``).
    """
    if len(mats) != len(keep) or not mats:
        raise ValueError("train_reference_policy needs one kept count per matrix (and at least one matrix)")
    shapes = {tuple(W.shape) for W in mats}
    if len(shapes) != 1:
        raise ValueError(f"the reference policy needs every layer's W1 to have one shape, got {sorted(shapes)}")
    for W, k in zip(mats, keep):
        if not 1 <= k < W.shape[0]:
            raise ValueError(f"kept count {k} must be in [1, {W.shape[0]}) to train on a matrix with {W.shape[0]} rows")
    t0 = time.perf_counter()
    torch.manual_seed(seed)
    I, d = mats[0].shape
    policy = ReferencePolicy(d, I).to(mats[0].device)
    opt = torch.optim.AdamW(policy.parameters(), lr=lr)
    gen = torch.Generator().manual_seed(seed)
    refs = [singular_values(W) for W in mats]
    history: list[float] = []
    best_state, best_episode, best_total = copy.deepcopy(policy.state_dict()), 0, float("-inf")
    bar = tqdm(range(episodes), desc="prunenet policy (reference)", disable=not progress, leave=False)
    for episode in bar:
        rewards = _episode(policy, opt, mats, keep, refs, gamma, gen)
        total = sum(rewards)
        history.append(total / len(rewards))
        if total > best_total:  # official: best_score starts at 0; rewards are > 0, so the same
            best_total, best_episode = total, episode
            best_state = copy.deepcopy(policy.state_dict())
        bar.set_postfix(reward=f"{history[-1]:.4f}")
    policy.load_state_dict(best_state)
    policy.eval()
    logger.debug("reference policy: best episode %d of %d (mean reward %.4f)", best_episode, episodes,
                 history[best_episode])
    return ReferenceTrainResult(policy, history, best_episode, time.perf_counter() - t0)


__all__ = ["KS_ZERO_REWARD", "ReferencePolicy", "ReferenceTrainResult", "draw_keep_set", "inverse_ks_reward",
           "reference_log_prob", "train_reference_policy"]
