"""PruneNet: train (or load) a policy on the FFN weights, then prune FFN channels with it.

No calibration data is read in this path: the policy sees only ``W1`` of every layer,
and the rewrite is the shared structured-pruning path of FASP and the baselines
(:func:`slimformer.methods._shared.pruning.prune_structured`, MLP channels only, no restoration).
The final keep-set of each layer is the top-``k`` channels by the policy's logits, so a
trained policy prunes at any sparsity without retraining. With ``variant="reference"``
the policy is trained as the official code does (:mod:`.reference`) and the keep-set is
a random draw from its noisy keep probabilities, seeded by ``prune_seed``.
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any

import torch
from torch import nn

from ...arch import ArchAdapter, get_module
from ...core.structures import AttentionShape
from ...schedule import make_schedule
from .._shared.pruning import plan_counts, prune_structured
from ..base import Runtime
from .config import PruneNetConfig
from .policy import Policy, gumbel_top_k, load_policy, policy_config, train_policy
from .reference import ReferencePolicy, train_reference_policy

logger = logging.getLogger("slimformer.methods.prunenet")

POLICY_FILE = "policy.safetensors"


def first_ffn_matrix(block: nn.Module, adapter: ArchAdapter) -> torch.Tensor:
    """PruneNet's state of a block: ``W1: [I, d]`` (``gate`` when the MLP is gated, else ``up``/fc1)."""
    return get_module(block, adapter.gate or adapter.up).weight.detach()


class PolicyScorer:
    """Scores MLP channels by the policy's logits on ``W1`` (no activations)."""

    needs_activations = False

    def __init__(self, policy: Policy) -> None:
        self.policy = policy

    def attention(self, layer: int, block: nn.Module, adapter: ArchAdapter, shape: AttentionShape,
                  gram: torch.Tensor | None) -> torch.Tensor:
        return torch.zeros(shape.n_kv_heads, shape.v_head_dim)  # attention is never pruned (attention="none")

    @torch.no_grad()
    def mlp(self, layer: int, block: nn.Module, adapter: ArchAdapter, gram: torch.Tensor | None) -> torch.Tensor:
        W = first_ffn_matrix(block, adapter)
        return self.policy.to(W.device)(W).double()


class ReferenceScorer:
    """The official final selection: channels ranked by one draw without replacement from ``o``.

    ``mlp`` returns ``[I]`` scores ``I - rank`` of a full random order drawn with probability
    proportional to the noisy keep probabilities ``o`` (fresh noise per layer), so the
    top-``k`` by score is ``torch.multinomial(o, k, replacement=False)`` for every ``k``.
    """

    needs_activations = False

    def __init__(self, policy: ReferencePolicy, seed: int) -> None:
        self.policy = policy
        self.generator = torch.Generator().manual_seed(seed)

    def attention(self, layer: int, block: nn.Module, adapter: ArchAdapter, shape: AttentionShape,
                  gram: torch.Tensor | None) -> torch.Tensor:
        return torch.zeros(shape.n_kv_heads, shape.v_head_dim)  # attention is never pruned

    @torch.no_grad()
    def mlp(self, layer: int, block: nn.Module, adapter: ArchAdapter, gram: torch.Tensor | None) -> torch.Tensor:
        W = first_ffn_matrix(block, adapter)
        log_o = self.policy.to(W.device).log_keep_probs(W, self.generator)  # [I]
        order = gumbel_top_k(log_o, log_o.numel(), self.generator)  # [I], first drawn first
        scores = torch.empty(order.numel(), dtype=torch.float64)
        scores[order] = torch.arange(order.numel(), 0, -1, dtype=torch.float64)
        return scores


def _policy_files(policy: nn.Module, meta: dict[str, Any]) -> dict[str, bytes]:
    """``policy.safetensors`` and ``policy.json`` as bytes (written into the output directory on save)."""
    from safetensors.torch import save

    weights = save({k: v.detach().cpu().contiguous() for k, v in policy.state_dict().items()})
    return {POLICY_FILE: weights, "policy.json": (json.dumps(policy_config(policy, meta), indent=2) + "\n").encode()}


def _train(mats: list[torch.Tensor], keep: list[int], config: PruneNetConfig,
           progress: bool) -> tuple[nn.Module, dict[str, Any]]:
    """Train the policy of ``config.variant`` on ``W1: [I, d]`` per layer; ``(policy, report info)``."""
    info: dict[str, Any] = {"source": "trained", "trained": True, "episodes": config.episodes}
    if config.variant == "reference":
        ref = train_reference_policy(mats, keep, episodes=config.episodes, lr=config.lr, gamma=config.gamma,
                                     seed=config.prune_seed, progress=progress)
        info.update(seconds=round(ref.seconds, 3), rewards=[round(r, 6) for r in ref.rewards],
                    best_episode=ref.best_episode)
        return ref.policy, info
    res = train_policy(mats, keep, episodes=config.episodes, lr=config.lr, gamma=config.gamma,
                       hidden=config.policy_hidden, samples=config.samples, seed=config.prune_seed, progress=progress)
    info.update(seconds=round(res.seconds, 3), rewards=[round(r, 6) for r in res.rewards])
    return res.policy, info


def apply_prunenet(model: nn.Module, adapter: ArchAdapter, config: PruneNetConfig, calib_ids: torch.Tensor | None,
                   runtime: Runtime) -> dict[str, Any]:
    """Prune FFN channels with a trained (or loaded) PruneNet policy, in place.

    Report fields: those of :func:`prune_structured`, plus ``policy`` (trained or loaded,
    training sparsity, seconds, reward per episode) and the policy files for the output directory.
    """
    if calib_ids is not None:
        raise ValueError("prunenet is calibration-free: do not pass calibration data (--calib)")
    layers = adapter.get_layers(model)
    d = first_ffn_matrix(layers[0], adapter).shape[1]
    info: dict[str, Any]
    if config.policy is not None:
        t0 = time.perf_counter()
        policy, meta = load_policy(config.policy, expect_d=d)
        if meta.get("variant", "library") != config.variant:
            raise ValueError(f"policy {config.policy} was trained with variant {meta.get('variant', 'library')!r}, "
                             f"not {config.variant!r}: pass --variant {meta.get('variant', 'library')}")
        info = {"source": str(config.policy), "trained": False, "train_sparsity": meta.get("train_sparsity"),
                "seconds": round(time.perf_counter() - t0, 3), "rewards": meta.get("rewards")}
    else:
        train_sp = config.train_sparsity
        if train_sp is None:  # the sparsity being applied (solved from target_params when given)
            train_sp = plan_counts(model, adapter, config, make_schedule("uniform"), None).sparsity
        mats = [first_ffn_matrix(b, adapter) for b in layers]
        keep = [min(w.shape[0] - 1, max(1, int((1.0 - train_sp) * w.shape[0]))) for w in mats]
        policy, info = _train(mats, keep, config, runtime.progress)
        info["train_sparsity"] = train_sp
        logger.info("PruneNet policy (%s) trained in %.1fs: mean reward %.4f -> %.4f", config.variant,
                    info["seconds"], info["rewards"][0], info["rewards"][-1])
    t0 = time.perf_counter()
    scorer = PolicyScorer(policy) if config.variant == "library" else ReferenceScorer(policy, config.prune_seed)
    report = prune_structured(model, adapter, config, None, runtime, scorer)
    info["prune_seconds"] = round(time.perf_counter() - t0, 3)
    info["variant"] = config.variant
    meta = {"model_type": model.config.model_type, "train_sparsity": info["train_sparsity"],
            "rewards": info["rewards"]}
    if "best_episode" in info:
        meta["best_episode"] = info["best_episode"]
    report["policy"] = info
    report["_artifacts"] = _policy_files(policy, meta)
    return report
