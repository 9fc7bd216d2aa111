"""MoDeGPT's closed-form solves (methods/modegpt/solve.py) against their definitions."""

from __future__ import annotations

import pytest
import torch

from slimformer.core.structures import restore_columns
from slimformer.methods.modegpt.solve import (
    qk_group_scores,
    ridge_leverage_scores,
    rope_groups,
    select_qk_dims,
    vo_decompose,
)

F64 = torch.float64


def _data(t: int, n: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(t, n, generator=g, dtype=torch.float64) @ torch.randn(n, n, generator=g, dtype=torch.float64)


def test_ridge_leverage_scores_match_definition() -> None:
    X = _data(200, 12)
    X[:, 3] = 0.0  # a dead channel
    C = X.T @ X
    lam = 0.01 * C.diagonal().mean()
    expected = torch.diagonal(C @ torch.linalg.inv(C + lam * torch.eye(12, dtype=F64)))
    got = ridge_leverage_scores(C, 0.01)
    assert torch.allclose(got, expected, atol=1e-10)
    assert got[3].abs() < 1e-12 and bool((got >= -1e-12).all() and (got < 1).all())


def test_nystrom_restoration_is_least_squares_and_keep_all_is_exact() -> None:
    H = _data(300, 10, seed=1)
    W = torch.randn(6, 10, dtype=F64)  # down: [d, I]
    G = H.T @ H
    keep = torch.tensor([0, 2, 5, 7])
    W_new = restore_columns(W, G, keep, damping=0.0)
    lsq = torch.linalg.lstsq(H[:, keep], H @ W.T).solution.T
    assert torch.allclose(W_new, lsq, atol=1e-8)
    assert torch.allclose(restore_columns(W, G, torch.arange(10), 0.0), W, atol=1e-8)


def test_rope_groups_follow_rotate_half() -> None:
    assert rope_groups(8) == [[0, 4], [1, 5], [2, 6], [3, 7]]
    assert rope_groups(8, rotary_dim=4) == [[0, 2], [1, 3], [4], [5], [6], [7]]
    assert rope_groups(8, layout="interleaved") == [[0, 1], [2, 3], [4, 5], [6, 7]]
    assert rope_groups(8, rotary_dim=4, layout="interleaved") == [[0, 1], [2, 3], [4], [5], [6], [7]]
    with pytest.raises(ValueError):
        rope_groups(8, rotary_dim=3)


def test_pair_score_is_rope_invariant() -> None:
    """The pair score from pre-RoPE projections equals the one from post-RoPE ones."""
    from transformers import LlamaConfig
    from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding, apply_rotary_pos_emb

    hd, t = 16, 40
    cfg = LlamaConfig(hidden_size=64, num_attention_heads=4, head_dim=hd, max_position_embeddings=64)
    rope = LlamaRotaryEmbedding(cfg)
    q, k = torch.randn(1, 1, t, hd, dtype=F64), torch.randn(1, 1, t, hd, dtype=F64)
    cos, sin = rope(q.float(), torch.arange(t)[None])
    qr, kr = apply_rotary_pos_emb(q, k, cos.double(), sin.double())
    groups = rope_groups(hd)
    pre = qk_group_scores(q[0, :, :].pow(2).sum(1), k[0, 0].pow(2).sum(0), groups)
    post = qk_group_scores(qr[0, :, :].pow(2).sum(1), kr[0, 0].pow(2).sum(0), groups)
    assert torch.allclose(pre, post, rtol=1e-6)  # cos/sin come in float32
    assert not torch.allclose(q.pow(2).sum(2), qr.pow(2).sum(2))  # single dims do change under RoPE


def test_select_qk_dims_keeps_best_pairs_and_sums_gqa_queries() -> None:
    k_diag = torch.ones(8)
    q_a = torch.tensor([[9.0, 0, 0, 0, 9, 0, 0, 0], [0, 0, 4, 0, 0, 0, 4, 0]])  # two query heads share the key
    kept = select_qk_dims(q_a, k_diag, 4)
    assert kept.tolist() == [0, 2, 4, 6]  # pairs (0,4) and (2,6)
    assert select_qk_dims(q_a, k_diag, 8).tolist() == list(range(8))
    with pytest.raises(ValueError, match="whole RoPE pairs"):
        select_qk_dims(q_a, k_diag, 3)


@pytest.mark.parametrize("m", [5, 24])  # MHA (one query head, m = d) and a GQA group (stacked o blocks)
def test_vo_decomposition_error_is_the_tail_and_keep_all_is_exact(m: int) -> None:
    hd, t = 6, 500
    V = _data(t, hd, seed=2)  # value outputs v_t
    B = torch.randn(hd, m, dtype=F64)
    C_v = V.T @ V
    T, M, S = vo_decompose(C_v, B, hd)
    assert torch.allclose(V @ T @ M, V @ B, atol=1e-8)
    for k in (1, 3, 5):
        T, M, S = vo_decompose(C_v, B, k)
        err = (V @ B - V @ T @ M).pow(2).sum()
        assert torch.allclose(err, S[k:].pow(2).sum(), rtol=1e-8)
        # Eckart-Young: a random rank-k factorisation of the same form is never better
        P = torch.randn(hd, k, dtype=F64)
        Mo = torch.linalg.lstsq(V @ P, V @ B).solution
        assert (V @ B - V @ P @ Mo).pow(2).sum() >= err - 1e-8
        # balanced factors: the new values keep the dense values' mean per-channel second moment
        # (C_v sums over the t tokens; whitening alone would leave each new value ~1/sqrt(t))
        new = V @ T  # [t, k]
        assert torch.allclose(new.pow(2).mean(0), torch.full((k,), float(V.pow(2).mean()), dtype=F64), rtol=1e-6)
