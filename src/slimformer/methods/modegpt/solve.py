"""MoDeGPT's three module decompositions as closed-form solves on calibration statistics.

MoDeGPT (Lin et al., ICLR 2025, arXiv 2408.09632) compresses each matrix pair of a block
so that the module's *output* on the calibration data is reconstructed. Everything
here works on float64 second-moment matrices gathered in one pass; nothing here touches
a model (the rewrite lives in ``apply.py``). Conventions: torch weight orientation
``W: [out, in]``; Gram ``G = sum_t x_t x_t^T`` of a layer's inputs.

Type I (MLP, Nystrom): channel ``j`` of the MLP intermediate ``h`` gets the ridge
leverage score ``[C (C + lam I)^-1]_jj`` with ``C = G_h``; the top-``k`` are kept and the
down projection is refitted by least squares on the kept channels (FASP's
:func:`~slimformer.core.structures.restore_columns`, the same closed form
``W_D' = W_D C[:, S] C[S, S]^-1``).

Type II (query-key, CR): the attention score of a query head with its key head is
``q^T k = sum_j q_j k_j``. Keeping a set ``S`` of head dims for both gives the
column-row (CR) approximation; the score of dim ``j`` is ``||Q_j|| ||K_j||`` (norms over
calibration tokens, i.e. ``sqrt(C_Q[j, j] C_K[j, j])``; ``||C^{1/2} e_j|| = sqrt(C_jj)``).
RoPE rotates dims ``(j, j + r/2)`` together (HF ``rotate_half``, ``r`` the rotary dims),
so those pairs are kept or dropped together. Choice: a pair's score is
``sqrt((C_Q[j,j] + C_Q[j',j']) (C_K[j,j] + C_K[j',j']))``, which is *invariant under
RoPE* (the rotation preserves ``q_j^2 + q_j'^2`` token by token), so pre-RoPE
projections give exactly the post-RoPE score the paper asks for. GQA rule: a kv head's
dims serve every query head of its group, so its pair score is the sum of the pair
scores of those query heads with that key head.

Type III (value-output, SVD): for one kv head with value outputs ``v_t = W_V x_t``
(``[hd]``, Gram ``C_v``) and the o-projection blocks of its query heads stacked as
``B = [W_O^1 | ... | W_O^r]^T`` (``[hd, r d]``), minimise
``sum_t ||v_t^T B - v_t^T T M||^2`` over rank-``k`` factors. With ``C_v = R^T R``
(Cholesky) and ``R B = U S V^T``, the optimum keeps the top ``k``: new values
``v' = T^T v`` with ``T = R^-1 U_k`` (``[hd, k]``) and new o blocks ``M = U_k^T R B``;
the squared error is the sum of the dropped ``S_i^2`` (Eckart-Young). This is the
paper's SVD of ``C^{1/2} W_V W_O`` written on the value Gram, so it needs no
``C^{-1/2}`` of the (much larger) input Gram, and for GQA it solves all query heads of
the group jointly (MHA is ``r = 1``).
"""

from __future__ import annotations

import torch


def _sym_damped(C: torch.Tensor, damping: float) -> torch.Tensor:
    C = 0.5 * (C.double() + C.double().T)
    if damping > 0:
        C = C + damping * C.diagonal().mean().clamp_min(1e-300) * torch.eye(C.shape[0], dtype=C.dtype, device=C.device)
    return C


def ridge_leverage_scores(C: torch.Tensor, ridge: float) -> torch.Tensor:
    """``diag(C (C + lam I)^-1)`` with ``lam = ridge * mean(diag C)``; ``C: [n, n]`` -> ``[n]``.

    Every score lies in ``[0, 1)``; dead channels (zero rows) score 0.
    """
    C = 0.5 * (C.double() + C.double().T)
    lam = ridge * C.diagonal().mean().clamp_min(1e-300)
    evals, evecs = torch.linalg.eigh(C)
    evals = evals.clamp_min(0)
    w = evals / (evals + lam)  # [n]
    return (evecs.pow(2) * w).sum(1)  # diag(V diag(w) V^T)


def rope_groups(head_dim: int, rotary_dim: int | None = None, layout: str = "half") -> list[list[int]]:
    """Dims of one head that must be kept together: RoPE pairs, then each non-rotary dim alone.

    ``layout="half"`` (HF ``rotate_half``): pairs ``(j, j + r/2)`` for ``j < r/2``;
    ``"interleaved"`` (Cohere, GLM, ERNIE-4.5, GPT-J): pairs ``(2j, 2j + 1)``."""
    r = head_dim if rotary_dim is None else int(rotary_dim)
    if r % 2 or not 0 <= r <= head_dim:
        raise ValueError(f"rotary dims {r} must be even and at most head_dim {head_dim}")
    if layout == "interleaved":
        pairs = [[2 * j, 2 * j + 1] for j in range(r // 2)]
    elif layout == "half":
        pairs = [[j, j + r // 2] for j in range(r // 2)]
    else:
        raise ValueError(f"unknown RoPE layout {layout!r}; known: half, interleaved")
    return pairs + [[j] for j in range(r, head_dim)]


def qk_group_scores(q_diag: torch.Tensor, k_diag: torch.Tensor, groups: list[list[int]]) -> torch.Tensor:
    """Score of every dim group of one kv head.

    Args:
        q_diag: ``[n_rep, hd]`` per-dim sums of squares of the query heads served by the kv head.
        k_diag: ``[hd]`` per-dim sums of squares of the key head.
        groups: from :func:`rope_groups`.
    Returns:
        ``[len(groups)]``: ``sum_q sqrt(sum_{j in g} Q_qj * sum_{j in g} K_j)``.
    """
    q_diag, k_diag = q_diag.double(), k_diag.double()
    out = torch.empty(len(groups), dtype=torch.float64)
    for i, g in enumerate(groups):
        qs = q_diag[:, g].sum(1)  # [n_rep]
        out[i] = (qs * k_diag[g].sum()).clamp_min(0).sqrt().sum()
    return out


def select_qk_dims(q_diag: torch.Tensor, k_diag: torch.Tensor, keep_dims: int,
                   rotary_dim: int | None = None, layout: str = "half") -> torch.Tensor:
    """Kept head dims (ascending) of one kv head: best whole groups until ``keep_dims`` dims.

    ``keep_dims`` must be reachable with whole groups (even when all dims are rotary).
    """
    hd = k_diag.shape[0]
    groups = rope_groups(hd, rotary_dim, layout)
    scores = qk_group_scores(q_diag, k_diag, groups)
    order = torch.argsort(-scores, stable=True).tolist()
    kept: list[int] = []
    for gi in order:
        if len(kept) + len(groups[gi]) <= keep_dims:
            kept += groups[gi]
        if len(kept) == keep_dims:
            break
    if len(kept) != keep_dims:
        raise ValueError(f"cannot keep exactly {keep_dims} of {hd} head dims with whole RoPE pairs")
    return torch.tensor(sorted(kept), dtype=torch.long)


def vo_decompose(C_v: torch.Tensor, B: torch.Tensor, k: int, damping: float = 0.0
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Type III for one kv head.

    Args:
        C_v: ``[hd, hd]`` Gram of the head's value outputs.
        B: ``[hd, m]`` the o-projection rows this head's values feed (all its query heads).
        k: kept value dims.
        damping: relative ridge on ``C_v`` (makes the Cholesky factor exist).
    Returns:
        ``T: [hd, k]`` (new values ``v' = T^T v``), ``M: [k, m]`` (new o rows) and the
        singular values ``[min(hd, m)]`` of ``R B`` (dropped energy = sum of the tail squared).

    Scale: ``R^-1 U_k`` alone whitens the new values against ``C_v``, a Gram *summed* over
    the N calibration tokens, so each kept value would be ~1/sqrt(N) per token and the o
    rows ~sqrt(N) times too large (181x at 128 x 256 tokens): the same product, but
    ill-scaled weights (a fine-tune's Adam steps on v blow up; fp16 headroom shrinks). The
    factors are balanced by ``c = sqrt(trace(C_v) / hd)``, ``T c`` and ``M / c`` (the
    product ``T M`` is unchanged), so the new values keep the dense values' mean
    per-channel scale.
    """
    hd = C_v.shape[0]
    if not 1 <= k <= hd:
        raise ValueError(f"cannot keep {k} of {hd} value dims")
    C = _sym_damped(C_v, damping)
    R = torch.linalg.cholesky(C).T  # upper, C = R^T R
    U, S, _ = torch.linalg.svd(R @ B.double(), full_matrices=False)
    Uk = U[:, :k]
    T = torch.linalg.solve_triangular(R, Uk, upper=True)  # R^-1 U_k
    M = Uk.T @ R @ B.double()
    scale = float(torch.diagonal(C_v).double().sum().clamp_min(0) / hd) ** 0.5
    if scale > 0:  # balance: v' = (T c)^T v has the dense values' mean per-channel second moment
        T, M = T * scale, M / scale
    return T, M, S
