"""PruneNet: train (or load) a policy on the FFN weights, then prune FFN channels with it.

No calibration data is read in this path: the policy sees only ``W1`` of every layer,
and the rewrite is the shared structured-pruning path of FASP and the baselines
(:func:`slimformer.methods._shared.pruning.prune_structured`, MLP channels only, no restoration).
The final keep-set of each layer is the top-``k`` channels by the policy's logits, so a
trained policy prunes at any sparsity without retraining.
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
from .policy import Policy, load_policy, policy_config, train_policy

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


def _policy_files(policy: Policy, meta: dict[str, Any]) -> dict[str, bytes]:
    """``policy.safetensors`` and ``policy.json`` as bytes (written into the output directory on save)."""
    from safetensors.torch import save

    weights = save({k: v.detach().cpu().contiguous() for k, v in policy.state_dict().items()})
    return {POLICY_FILE: weights, "policy.json": (json.dumps(policy_config(policy, meta), indent=2) + "\n").encode()}


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
        info = {"source": str(config.policy), "trained": False, "train_sparsity": meta.get("train_sparsity"),
                "seconds": round(time.perf_counter() - t0, 3), "rewards": meta.get("rewards")}
    else:
        train_sp = config.train_sparsity
        if train_sp is None:  # the sparsity being applied (solved from target_params when given)
            train_sp = plan_counts(model, adapter, config, make_schedule("uniform"), None).sparsity
        mats = [first_ffn_matrix(b, adapter) for b in layers]
        keep = [min(w.shape[0] - 1, max(1, int((1.0 - train_sp) * w.shape[0]))) for w in mats]
        res = train_policy(mats, keep, episodes=config.episodes, lr=config.lr, gamma=config.gamma,
                           hidden=config.policy_hidden, samples=config.samples, seed=config.prune_seed,
                           progress=runtime.progress)
        policy = res.policy
        info = {"source": "trained", "trained": True, "train_sparsity": train_sp, "episodes": config.episodes,
                "seconds": round(res.seconds, 3), "rewards": [round(r, 6) for r in res.rewards]}
        logger.info("PruneNet policy trained in %.1fs: mean reward %.4f -> %.4f",
                    res.seconds, res.rewards[0], res.rewards[-1])
    t0 = time.perf_counter()
    report = prune_structured(model, adapter, config, None, runtime, PolicyScorer(policy))
    info["prune_seconds"] = round(time.perf_counter() - t0, 3)
    meta = {"model_type": model.config.model_type, "train_sparsity": info["train_sparsity"],
            "rewards": info["rewards"]}
    report["policy"] = info
    report["_artifacts"] = _policy_files(policy, meta)
    return report
