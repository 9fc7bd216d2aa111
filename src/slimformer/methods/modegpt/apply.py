"""MoDeGPT: plan per-layer fractions, then compress every block's three modules in order.

Per block (inputs cached from the already compressed blocks, one forward per sublayer):

1. attention input ``n = norm_a(x)``: the Gram ``G_x`` of ``[n, 1]`` (``[d+1, d+1]``, the 1
   carries biases) is all Type II and III need, because every q/k/v output is linear in it:
   ``C_v = W~_v G_x W~_v^T`` with ``W~ = [W | b]``;
2. Type III (vo) then Type II (qk) rewrite the attention (solves in :mod:`.solve`);
3. the compressed attention runs once: ``h = x + Attn'(n)`` (sequential) and the MLP runs once
   on ``norm_m(h)`` with a hook gathering ``G_h`` of the down-projection input (cached);
4. Type I (mlp) keeps the top ridge-leverage channels and refits down by least squares;
   the block output ``h + down'(a[:, S])`` feeds the next block.
Parallel blocks (Phi-2) read one ``n`` for both sublayers.

The model keeps its Hugging Face blocks (no norm fusion, ``fused: false`` in the plan):
MLP width is an ordinary linear shape; value heads shrink through the runtime's
head-padding linears and q/k head dims through
:class:`~slimformer.runtime.modeling_slimformer.HeadScatterOutLinear` (kept RoPE channels
scattered back to their positions, so the installed attention code runs unchanged).

Choices the paper leaves open (METHODS.md), recorded here: ridge ``1e-2 * mean(diag C)``;
pair score ``sqrt((C_Q[j,j]+C_Q[j',j']) (C_K[j,j]+C_K[j',j']))`` summed over a kv head's query
heads (RoPE-invariant, see :mod:`.solve`); one fraction per layer for all three modules
(global softmax allocation on BI, temperature 0.15, cap 0.8); the kept q/k dims are
``2 * round((1 - f) hd / 2)`` when all dims are rotary (whole pairs), value dims
``round((1 - f) hd)``, MLP channels ``round((1 - f) I)`` (nearest for every schedule), each
at least 1 group.
Qwen3's per-head q/k norms act on the head dim: ``qk`` is refused there.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Sequence

import torch
from torch import nn
from tqdm.auto import tqdm

from ...arch import ArchAdapter, get_module
from ...calib.prune_pass import gram_capture_hook, block_view
from ...calib.runner import BlockInputs, capture_block_inputs
from ...calib.scores import block_scores
from ...calib.stats import Covariance
from ...core.fuse import is_slim
from ...core.params import count_params
from ...core.plan import config_head_dim
from ...core.shrink import keep_outputs
from ...core.structures import (
    BlockKeep,
    LayerCounts,
    attention_shape,
    prune_block,
    pruned_param_count,
    restore_columns,
    top_k,
)
from ...runtime.modeling_slimformer import attn_relative, set_attention_heads, set_qk_dims
from ...schedule import Schedule, solve_budget, width_from_fraction
from .._shared.pruning import PrunePlan
from ..base import Runtime
from .config import MoDeGPTConfig
from .solve import ridge_leverage_scores, select_qk_dims, vo_decompose

logger = logging.getLogger("slimformer.methods.modegpt")


@dataclass(frozen=True)
class ModuleCounts:
    """Kept sizes of one layer: MLP channels, q/k dims per head, value dims per head."""

    mlp: int
    qk: int
    v: int


def rotary_dim(config: Any, adapter: ArchAdapter, head_dim: int) -> int:
    """Channels of a head RoPE rotates (0 without RoPE)."""
    if not adapter.rope:
        return 0
    factor = getattr(config, "partial_rotary_factor", None)
    if factor is None:
        factor = (getattr(config, "rope_parameters", None) or {}).get("partial_rotary_factor", 1.0)
    return int(head_dim * float(factor))


def _row(lin: nn.Linear) -> int:
    return lin.in_features + (1 if lin.bias is not None else 0)


def layer_counts(block: nn.Module, adapter: ArchAdapter, config: Any, f: float, modules: frozenset[str],
                 rounding: str) -> ModuleCounts:
    hd = config_head_dim(config)
    I = get_module(block, adapter.down).in_features
    mlp = max(1, width_from_fraction(f, I, 1, rounding)) if "mlp" in modules else I
    v = max(1, width_from_fraction(f, hd, 1, rounding)) if "vo" in modules else hd
    qk = hd
    if "qk" in modules:
        rot = rotary_dim(config, adapter, hd)
        if rot == hd:  # whole RoPE pairs only
            qk = 2 * max(1, width_from_fraction(f, hd // 2, 1, rounding))
        else:
            qk = max(1, width_from_fraction(f, hd, 1, rounding))
    return ModuleCounts(mlp, qk, v)


def _qk_removed(block: nn.Module, adapter: ArchAdapter, config: Any, qk: int) -> int:
    shape = attention_shape(block, adapter, config)
    q, k = get_module(block, adapter.q), get_module(block, adapter.k)
    return shape.n_kv_heads * (shape.head_dim - qk) * (shape.n_rep * _row(q) + _row(k))


def plan_counts(model: nn.Module, adapter: ArchAdapter, config: MoDeGPTConfig, schedule: Schedule,
                scores: Sequence[float] | None) -> PrunePlan:
    """Per-layer kept sizes from ``config.sparsity`` or, by bisection, ``config.target_params``."""
    layers = adapter.get_layers(model)
    before = count_params(model)
    mods = config.module_set

    def build(sp: float) -> PrunePlan:
        fs = schedule.fractions(sp, len(layers), scores)
        # nearest, not SliceGPT's floor: q/k dims move in RoPE pairs, and flooring a small head dim
        # (hd 8 -> pairs of 4) would cut q/k far deeper than the fraction asks
        counts = tuple(layer_counts(b, adapter, model.config, f, mods, "nearest") for b, f in zip(layers, fs))
        after = pruned_param_count(model, adapter, [LayerCounts(c.mlp, c.v) for c in counts])
        after -= sum(_qk_removed(b, adapter, model.config, c.qk) for b, c in zip(layers, counts))
        return PrunePlan(sp, tuple(fs), counts, after, before)  # counts: ModuleCounts per layer

    return solve_budget(build, sparsity=config.sparsity, target_params=config.target_params,
                        lo=schedule.min_sparsity(), label="MoDeGPT")


# ----- the three rewrites ---------------------------------------------------------------------


def _augmented(lin: nn.Linear, rows: torch.Tensor) -> torch.Tensor:
    """``[W | b]`` of the given output rows, float64: ``[len(rows), in + 1]``."""
    W = lin.weight.detach().index_select(0, rows.to(lin.weight.device)).double()
    b = lin.bias.detach().index_select(0, rows.to(lin.weight.device)).double() if lin.bias is not None \
        else torch.zeros(W.shape[0], dtype=torch.float64, device=W.device)
    return torch.cat([W, b[:, None]], dim=1)


@torch.no_grad()
def compress_vo(block: nn.Module, adapter: ArchAdapter, config: Any, G_x: torch.Tensor, k: int,
                damping: float) -> list[float]:
    """Type III on every kv head: new value rows ``T^T W_v``, new o columns ``M^T``; returns the
    relative dropped energy per kv head."""
    shape = attention_shape(block, adapter, config)
    hd, n_rep = shape.head_dim, shape.n_rep
    v, o = get_module(block, adapter.v), get_module(block, adapter.o)
    G = G_x.to(v.weight.device)
    new_v, new_vb, new_o, errors = [], [], [None] * shape.n_heads, []
    Wo = o.weight.detach().double()  # [d_out, n_heads * hd]
    for g in range(shape.n_kv_heads):
        rows = torch.arange(g * hd, (g + 1) * hd)
        Wv = _augmented(v, rows)  # [hd, d+1]
        C_v = Wv @ G @ Wv.T  # [hd, hd]
        heads = range(g * n_rep, (g + 1) * n_rep)
        B = torch.cat([Wo[:, h * hd:(h + 1) * hd].T for h in heads], dim=1)  # [hd, n_rep * d_out]
        T, M, S = vo_decompose(C_v, B, k, damping)
        total = float(S.pow(2).sum())
        errors.append(float(S[k:].pow(2).sum()) / total if total > 0 else 0.0)
        new_v.append(T.T @ Wv[:, :-1])  # [k, d]
        new_vb.append(T.T @ Wv[:, -1])  # [k]
        for j, h in enumerate(heads):
            new_o[h] = M[:, j * Wo.shape[0]:(j + 1) * Wo.shape[0]].T  # [d_out, k]
    _replace(v, torch.cat(new_v), torch.cat(new_vb) if v.bias is not None else None)
    _replace(o, torch.cat(new_o, dim=1), o.bias)  # type: ignore[arg-type]
    attn = get_module(block, adapter.attn)
    set_attention_heads(attn, attn_relative(adapter.v, adapter.attn), attn_relative(adapter.o, adapter.attn),
                        shape.n_heads, hd, k)
    return errors


def _replace(lin: nn.Linear, W: torch.Tensor, b: torch.Tensor | None) -> None:
    dtype = lin.weight.dtype
    lin.weight = nn.Parameter(W.to(dtype).contiguous(), requires_grad=False)
    if b is not None:
        lin.bias = nn.Parameter(b.to(dtype).contiguous(), requires_grad=False)
    lin.out_features, lin.in_features = W.shape


@torch.no_grad()
def compress_qk(block: nn.Module, adapter: ArchAdapter, config: Any, G_x: torch.Tensor, k: int) -> torch.Tensor:
    """Type II: keep ``k`` q/k dims per kv head (whole RoPE pairs); returns ``[n_kv, k]`` positions."""
    shape = attention_shape(block, adapter, config)
    hd, n_rep = shape.head_dim, shape.n_rep
    q, kproj = get_module(block, adapter.q), get_module(block, adapter.k)
    G = G_x.to(q.weight.device)
    rot = rotary_dim(config, adapter, hd)

    def diag(lin: nn.Linear, rows: torch.Tensor) -> torch.Tensor:
        W = _augmented(lin, rows)
        return ((W @ G) * W).sum(1)  # per-row sum of squares over the calibration tokens

    keep = []
    for g in range(shape.n_kv_heads):
        k_diag = diag(kproj, torch.arange(g * hd, (g + 1) * hd))
        q_diag = torch.stack([diag(q, torch.arange(h * hd, (h + 1) * hd)) for h in range(g * n_rep, (g + 1) * n_rep)])
        keep.append(select_qk_dims(q_diag.cpu(), k_diag.cpu(), k, rot, adapter.rope_layout))  # rot 0: dims alone
    kv_index = torch.stack(keep)  # [n_kv, k]
    q_rows = torch.cat([h * hd + kv_index[h // n_rep] for h in range(shape.n_heads)])
    k_rows = torch.cat([g * hd + kv_index[g] for g in range(shape.n_kv_heads)])
    keep_outputs(q, q_rows)
    keep_outputs(kproj, k_rows)
    attn = get_module(block, adapter.attn)
    set_qk_dims(attn, attn_relative(adapter.q, adapter.attn), attn_relative(adapter.k, adapter.attn), hd,
                kv_index, n_rep)
    return kv_index


@torch.no_grad()
def compress_mlp(block: nn.Module, adapter: ArchAdapter, config: Any, G_h: torch.Tensor, k: int, ridge: float,
                 damping: float) -> torch.Tensor:
    """Type I: keep the ``k`` channels of highest ridge leverage; refit down. Returns the kept channels."""
    scores = ridge_leverage_scores(G_h, ridge)
    keep = top_k(scores, k).cpu()
    down = get_module(block, adapter.down)
    W = restore_columns(down.weight.detach(), G_h.to(down.weight.device), keep, damping)
    prune_block(block, adapter, config, BlockKeep(mlp=keep, down_weight=W))
    return keep


# ----- the layer-by-layer pass ---------------------------------------------------------------


def _with_ones(x: torch.Tensor) -> torch.Tensor:
    """``[.., d] -> [.., d + 1]``: the input with a ones column (the biases' input)."""
    return torch.cat([x, torch.ones_like(x[..., :1])], dim=-1)


class _Compressor:
    def __init__(self, model: nn.Module, adapter: ArchAdapter, config: MoDeGPTConfig, counts: Sequence[ModuleCounts],
                 device: torch.device) -> None:
        self.model, self.adapter, self.config, self.counts, self.device = model, adapter, config, counts, device
        self.hd = config_head_dim(model.config)
        self.report: list[dict[str, Any]] = []

    def attention(self, li: int, block: nn.Module, G_x: torch.Tensor) -> dict[str, Any]:
        c, mods, cfg = self.counts[li], self.config.module_set, self.model.config
        rec: dict[str, Any] = {}
        if "vo" in mods and c.v < self.hd:
            rec["vo_dropped_energy"] = [round(e, 6) for e in
                                        compress_vo(block, self.adapter, cfg, G_x, c.v, self.config.damping)]
        if "qk" in mods and c.qk < self.hd:
            compress_qk(block, self.adapter, cfg, G_x, c.qk)
        return rec

    def mlp(self, li: int, block: nn.Module, G_h: torch.Tensor) -> torch.Tensor | None:
        c = self.counts[li]
        down = get_module(block, self.adapter.down)
        if "mlp" not in self.config.module_set or c.mlp >= down.in_features:
            return None
        return compress_mlp(block, self.adapter, self.model.config, G_h, c.mlp, self.config.ridge,
                            self.config.damping)

    def block(self, li: int, block: nn.Module, inp: BlockInputs) -> None:
        ad, dev = self.adapter, self.device
        view = block_view(block, ad, self.model.config)
        d = get_module(block, ad.q).in_features
        acc_x = Covariance(d + 1)
        for x in inp.hidden:
            acc_x.update(_with_ones(view.attn_in(x.to(dev))))  # what q/k/v read, with a ones column
        acc_x.all_reduce()
        rec = self.attention(li, block, acc_x.value())
        down = get_module(block, ad.down)
        acc_h, cache = Covariance(down.in_features), []
        handle = down.register_forward_pre_hook(gram_capture_hook(acc_h, cache, inp.put))
        mids = []
        try:
            for b, (x, kw) in enumerate(zip(inp.hidden, inp.kwargs)):
                x = x.to(dev)
                n = view.attn_in(x)
                h = x + view.attn_out(view._attn(n, kw))  # [b, t, d]
                view._mlp(view.mlp_in(x if ad.parallel else h))
                mids.append(inp.put(h))
        finally:
            handle.remove()
        acc_h.all_reduce()
        keep = self.mlp(li, block, acc_h.value())
        down = get_module(block, ad.down)
        for b, h in enumerate(mids):
            act = cache[b].to(dev)
            if keep is not None:
                act = act.index_select(-1, keep.to(dev))
            inp.hidden[b] = inp.put(h.to(dev) + view.mlp_out(down(act)))  # [b, t, d_out]
            cache[b] = None  # type: ignore[call-overload]
        rec["kept"] = vars(self.counts[li])
        self.report.append(rec)


def _check(model: nn.Module, adapter: ArchAdapter, config: MoDeGPTConfig) -> None:
    if is_slim(model, adapter):
        raise ValueError("modegpt needs the original Hugging Face blocks; the model was already rotated/sliced")
    reason = adapter.refusal(config.touches(), "modegpt")
    if reason is not None:
        raise ValueError(reason)
    for block in adapter.get_layers(model):
        for path in (adapter.q, adapter.k, adapter.v, adapter.o):
            if type(get_module(block, path)) is not nn.Linear:
                raise ValueError("modegpt: the attention was already pruned (head-reshaping linears); "
                                 "start from the dense model")


def apply_modegpt(model: nn.Module, adapter: ArchAdapter, config: MoDeGPTConfig, calib_ids: torch.Tensor,
                  runtime: Runtime) -> dict[str, Any]:
    """MoDeGPT (Lin et al., 2025), in place. Returns report fields (schedule, fractions, kept sizes)."""
    _check(model, adapter, config)
    schedule = config.make_schedule()
    blocks = runtime.block_source(model, adapter)
    bi = None
    if schedule.needs_scores:
        bi = block_scores(model, adapter, calib_ids, runtime.batch_size, runtime.device,
                          runtime.offload_activations, runtime.progress, blocks=blocks).bi
    plan = plan_counts(model, adapter, config, schedule, bi)
    inputs = capture_block_inputs(model, adapter, calib_ids, runtime.batch_size, runtime.device,
                                  runtime.offload_activations, blocks=blocks)
    comp = _Compressor(model, adapter, config, plan.counts, runtime.device)
    with torch.no_grad():
        for li in tqdm(range(blocks.n_layers), desc="modegpt", unit="layer", disable=not runtime.progress):
            with blocks.block(li, runtime.device) as block:
                comp.block(li, block, inputs)
    report = plan.report_fields(model, schedule.name, config.target_params, logger)
    report["modules"] = comp.report
    if bi is not None:
        report["scores"] = {"bi": [float(x) for x in bi]}
    return report
