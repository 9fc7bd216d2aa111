"""PruneNet's policy: channel scores from the weights, trained by REINFORCE on a spectral reward.

The state of layer ``l`` is its first FFN matrix ``W1: [I, d]`` (Llama ``gate_proj``,
OPT/Phi ``fc1``); row ``i`` belongs to intermediate channel ``i``. The policy maps each
row to a logit; a keep-set of ``k`` channels is drawn *without replacement* from the
Plackett-Luce distribution of those logits (Gumbel top-k). The reward of a keep-set
is ``-KS(sigma(W1), sigma(W1[S]))``: the two-sample Kolmogorov-Smirnov statistic between
the singular values of the full and the pruned matrix.

Choices (the paper and METHODS.md leave room):

* the policy is a two-layer MLP applied to every row (normalised by the matrix's RMS,
  so one policy serves all layers and any ``I``) plus the row's log-norm as one more
  input; the paper's ``sigmoid((W1 P^T + b) r)`` is a linear function of the row, which
  this contains. The norm feature matters: a linear score cannot express it, and
  with 20 episodes the policy otherwise barely beats random keep-sets on the spectral
  reward (stories260k, measured);
* reward ``-KS`` instead of the code's ``1 / KS``: bounded, defined at ``KS = 0``
  (identical spectra) and ordered the same way;
* REINFORCE uses the exact log-probability of the sampled *ordered* draw (Plackett-Luce),
  which is an unbiased score-function estimator for the keep-set's reward; the baseline of
  each of the ``samples`` draws is the mean reward of the others (leave-one-out);
* layer ``l``'s term is weighted ``gamma ** l`` as in the reference code.

The official code's algorithm itself is :mod:`.reference` (``variant="reference"``).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import torch
from torch import nn
from tqdm.auto import tqdm

from .spectra import gumbel_top_k, ks_distance, singular_values  # noqa: F401 (re-exported)

logger = logging.getLogger("slimformer.methods.prunenet")

POLICY_FORMAT = "slimformer-prunenet-policy"
POLICY_VERSION = 1


class Policy(nn.Module):
    """Per-channel logits from the rows of a first FFN matrix.

    ``forward(W: [I, d]) -> [I]``; rows are divided by the RMS of the whole matrix first.
    """

    def __init__(self, d: int, hidden: int = 64) -> None:
        super().__init__()
        self.d, self.hidden = int(d), int(hidden)
        self.net = nn.Sequential(nn.Linear(self.d + 1, self.hidden), nn.GELU(), nn.Linear(self.hidden, 1))

    def forward(self, W: torch.Tensor) -> torch.Tensor:
        if W.dim() != 2 or W.shape[1] != self.d:
            raise ValueError(f"policy for rows of width {self.d} got a matrix of shape {tuple(W.shape)}")
        x = W.float()
        x = x / x.pow(2).mean().sqrt().clamp_min(1e-12)  # [I, d], RMS 1
        log_norm = x.norm(dim=1, keepdim=True).clamp_min(1e-12).log()  # [I, 1]
        return self.net(torch.cat([x, log_norm], dim=1)).squeeze(-1)


def spectrum_reward(reference: torch.Tensor, W: torch.Tensor, keep: torch.Tensor) -> float:
    """Reward of keeping rows ``keep`` of ``W: [I, d]``: ``-KS(reference, sigma(W[keep]))``.

    ``reference`` is ``sigma(W)`` (computed once per layer).
    """
    return -ks_distance(reference, singular_values(W.index_select(0, keep.to(W.device))))


def plackett_luce_log_prob(logits: torch.Tensor, order: torch.Tensor) -> torch.Tensor:
    """``log P(order)`` of drawing ``order[0], order[1], ...`` without replacement; differentiable.

    ``P = prod_t exp(s_{o_t}) / sum_{j not yet drawn} exp(s_j)``.
    """
    s = logits.double()
    s = s - s.max().detach()
    e = s.exp()
    picked = e[order.to(s.device)]
    remaining = e.sum() - torch.cumsum(picked, 0) + picked  # mass left before each draw
    return (s[order.to(s.device)] - remaining.clamp_min(1e-300).log()).sum()


@dataclass
class TrainResult:
    """What :func:`train_policy` returns: the policy and the mean reward per episode."""

    policy: Policy
    rewards: list[float] = field(default_factory=list)
    seconds: float = 0.0


def train_policy(
    mats: Sequence[torch.Tensor],
    keep: Sequence[int],
    *,
    episodes: int = 20,
    lr: float = 1e-3,
    gamma: float = 0.99,
    hidden: int = 64,
    samples: int = 4,
    seed: int = 0,
    progress: bool = True,
) -> TrainResult:
    """Train one policy for all layers.

    Args:
        mats: first FFN matrices ``W1: [I_l, d]``, one per layer (not modified).
        keep: channels kept per layer while training (``k_l < I_l``).
    """
    import time

    if len(mats) != len(keep) or not mats:
        raise ValueError("train_policy needs one kept count per matrix (and at least one matrix)")
    for W, k in zip(mats, keep):
        if not 1 <= k < W.shape[0]:
            raise ValueError(f"kept count {k} must be in [1, {W.shape[0]}) to train on a matrix with {W.shape[0]} rows")
    t0 = time.perf_counter()
    torch.manual_seed(seed)
    policy = Policy(mats[0].shape[1], hidden).to(mats[0].device)
    opt = torch.optim.AdamW(policy.parameters(), lr=lr)
    gen = torch.Generator().manual_seed(seed)
    refs = [singular_values(W) for W in mats]
    history: list[float] = []
    bar = tqdm(range(episodes), desc="prunenet policy", disable=not progress, leave=False)
    for _ in bar:
        loss = torch.zeros((), dtype=torch.float64, device=mats[0].device)
        mean_reward = 0.0
        for layer, (W, k, ref) in enumerate(zip(mats, keep, refs)):
            logits = policy(W)  # [I]
            draws = [gumbel_top_k(logits, k, gen) for _ in range(samples)]
            r = torch.tensor([spectrum_reward(ref, W, d) for d in draws], dtype=torch.float64)
            baseline = (r.sum() - r) / (samples - 1)  # leave-one-out
            adv = (r - baseline).to(loss.device)
            logp = torch.stack([plackett_luce_log_prob(logits, d) for d in draws])
            loss = loss - (gamma ** layer) * (adv * logp).mean()
            mean_reward += float(r.mean()) / len(mats)
        opt.zero_grad()
        loss.backward()
        opt.step()
        history.append(mean_reward)
        bar.set_postfix(reward=f"{mean_reward:.4f}")
    policy.eval()
    return TrainResult(policy, history, time.perf_counter() - t0)


def save_policy(policy: nn.Module, path: str | Path, meta: dict[str, Any]) -> None:
    """Write ``path`` (safetensors weights) and ``path`` with suffix ``.json`` (config + ``meta``)."""
    from safetensors.torch import save_file

    path = Path(path)
    save_file({k: v.detach().cpu().contiguous() for k, v in policy.state_dict().items()}, str(path))
    path.with_suffix(".json").write_text(json.dumps(policy_config(policy, meta), indent=2) + "\n")


def policy_config(policy: nn.Module, meta: dict[str, Any]) -> dict[str, Any]:
    """The JSON written next to a policy's weights (a :class:`Policy` or a reference policy).

    ``variant`` says which: ``"library"`` (``hidden`` set) or ``"reference"`` (``intermediate``
    set: the official policy is tied to one FFN width). Files without it are library policies.
    """
    cfg: dict[str, Any] = {"format": POLICY_FORMAT, "version": POLICY_VERSION, "d": policy.d}
    if isinstance(policy, Policy):
        cfg.update(variant="library", hidden=policy.hidden)
    else:
        cfg.update(variant="reference", intermediate=policy.intermediate)
    return {**cfg, **meta}


def load_policy(path: str | Path, expect_d: int | None = None) -> tuple[nn.Module, dict[str, Any]]:
    """Read a policy written by :func:`save_policy`; check it fits rows of width ``expect_d``.

    Returns a :class:`Policy` or, for ``"variant": "reference"`` files, a
    :class:`~slimformer.methods.prunenet.reference.ReferencePolicy`.
    """
    from safetensors.torch import load_file

    path = Path(path)
    cfg_path = path.with_suffix(".json")
    if not path.is_file() or not cfg_path.is_file():
        raise FileNotFoundError(f"a PruneNet policy needs {path} and {cfg_path}")
    try:
        cfg = json.loads(cfg_path.read_text())
    except json.JSONDecodeError as exc:
        raise ValueError(f"{cfg_path} is not valid JSON ({exc}); the policy file is corrupt") from exc
    if cfg.get("format") != POLICY_FORMAT or cfg.get("version") != POLICY_VERSION:
        raise ValueError(f"{cfg_path} is not a slimformer PruneNet policy of version {POLICY_VERSION}")
    if expect_d is not None and int(cfg["d"]) != int(expect_d):
        raise ValueError(f"policy {path} was trained on rows of width {cfg['d']} (model hidden size), "
                         f"this model's is {expect_d}: train a new policy for it")
    policy: nn.Module
    if cfg.get("variant", "library") == "reference":
        from .reference import ReferencePolicy

        policy = ReferencePolicy(int(cfg["d"]), int(cfg["intermediate"]))
    else:
        policy = Policy(int(cfg["d"]), int(cfg["hidden"]))
    try:
        policy.load_state_dict(load_file(str(path)))
    except Exception as exc:  # safetensors raises several types for truncated/corrupt files
        raise ValueError(f"cannot read policy weights {path}: {exc}") from exc
    return policy.eval(), cfg
