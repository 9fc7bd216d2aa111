"""The transport step of DOTResize: from activation statistics to an orthonormal basis.

Notation (one point of the residual stream, ``n`` = width, ``k`` = kept width):

* ``C: [n, n]`` uncentred second moment of the activations over calibration
  tokens, ``C = sum_t x_t x_t^T`` (float64). Neuron ``i`` is described by its
  activation vector over tokens ``X[:, i]``; every quantity below needs only
  ``C`` (``|X_i - X_j|^2 = C_ii + C_jj - 2 C_ij``), so the statistics stream
  exactly over *all* calibration tokens in ``O(n^2)`` memory and no token is
  stored or subsampled.
* targets ``J`` (``k`` indices): the neurons the others are merged into.
* cost ``M: [n, k]``, ``M_ij`` = activation distance between source neuron ``i``
  and target ``J_j`` (divided by its maximum so the regularisation is scale-free):
  l2, squared l2 or ``1 - rho_ij`` (correlation, :func:`correlation_distance`).
* plan ``P: [n, k]`` >= 0 with ``P 1 = a`` (source marginal, uniform ``1/n``) and
  ``P^T 1 = b`` (target marginal), minimising ``<P, M> - reg * H(P)`` (own
  log-domain Sinkhorn in torch, on the model's device; checked against POT in the
  tests) or ``<P, M>`` (``reg = 0``: exact, POT's network simplex).
  ``transport="mass-preserving"`` (:func:`mass_preserving_plan`) instead fixes
  ``P[J_j, j] = a[J_j]`` (every kept neuron keeps its whole mass on itself) and
  transports only the ``n - k`` dropped neurons onto the targets.
* merge map ``T = P diag(1 / b)``: merged neuron ``j`` is the ``P``-weighted
  average of the source neurons sent to it, ``y = x T``.
* ``T = Q R`` (thin QR, ``R`` with positive diagonal): ``Q: [n, k]`` has
  orthonormal columns and is the basis the residual stream is expressed in.

Why only ``Q`` reaches the model: the stream carries ``u = x Q`` (an orthonormal
change of basis commutes with the weightless RMS norm, SliceGPT Thm 1), the merged
neurons are ``y = u R`` and the next layer reads them through the
pseudo-inverse ``T^+ = R^{-1} Q^T``: ``y T^+ = u Q^T``. ``R`` is folded into the
readers and cancels exactly, so the compressed model depends only on
``span(T)``; the column normalisation of the plan (``diag(1/b)``) therefore does
not change the result either. For the MLP channels (``where="mlp"``) no norm
sits in between and ``T`` itself is used (readers ``T^T W``, writer ``W (T^+)^T``,
:func:`slimformer.core.shrink.merge_mlp_channels`); there its normalisation matters.
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass

import torch

# torch-free vocabularies (the config and the CLI use them)
from ...validate import COSTS, TARGET_INITS, TARGET_MARGINALS, TRANSPORTS

logger = logging.getLogger("slimformer.methods.dotresize.ot")


def _ot():
    try:
        import ot  # POT: Python Optimal Transport
    except ImportError as exc:  # pragma: no cover - POT is a core dependency
        raise ImportError("DOTResize needs POT (Python Optimal Transport): pip install pot") from exc
    return ot


def correlation_distance(cov: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """``1 - rho_ij`` between every neuron ``i`` and every target ``J_j``: ``[n, k]`` float64 in ``[0, 2]``.

    ``rho_ij = C_ij / sqrt(C_ii C_jj)`` is the correlation of the two neurons' activation
    vectors over the calibration tokens as ``cov`` describes them: on the uncentred second
    moment ``X^T X`` (what the calibration pass streams) it is their cosine similarity
    (the *uncentred* correlation); on the centred one ``(X - mean)^T (X - mean)``
    (:func:`centred_second_moment`) it is exactly Pearson's ``r``. It does not change when
    a neuron is multiplied by a positive number (a negative one flips its sign: merging
    anti-correlated neurons with positive averaging weights cancels them, so they are far
    apart). A neuron that never fires (``C_ii = 0``) has correlation 0 with every other
    neuron (distance 1) and distance 0 to itself.
    """
    C = cov.double()
    J = torch.as_tensor(targets, device=C.device)
    norms = torch.diagonal(C).clamp_min(0.0).sqrt()  # [n]
    denom = norms[:, None] * norms[J][None, :]  # [n, k]
    rho = torch.where(denom > 0, C[:, J] / denom.clamp_min(torch.finfo(C.dtype).tiny), torch.zeros_like(denom))
    M = 1.0 - rho.clamp(-1.0, 1.0)  # [n, k]
    M[J, torch.arange(J.numel(), device=C.device)] = 0.0  # every neuron is at distance 0 from itself
    return M


def centred_second_moment(cov: torch.Tensor, mean: torch.Tensor, tokens: int) -> torch.Tensor:
    """``(X - 1 mean^T)^T (X - 1 mean^T) = X^T X - N mean mean^T``: ``[n, n]`` float64.

    Args:
        cov: ``[n, n]`` uncentred second moment ``X^T X`` over ``N = tokens`` rows.
        mean: ``[n]`` per-neuron mean activation over the same tokens.
    With it, ``cost="correlation"`` is ``1 - Pearson r``; the calibration pass streams only
    ``X^T X`` (no means), so the method itself uses the uncentred correlation.
    """
    m = mean.double().to(cov.device)
    return cov.double() - float(tokens) * torch.outer(m, m)


def pairwise_cost(cov: torch.Tensor, targets: torch.Tensor, cost: str = "l2") -> torch.Tensor:
    """Activation distance between every neuron and every target.

    Args:
        cov: ``[n, n]`` second moment ``X^T X`` (float64).
        targets: ``[k]`` target neuron indices.
        cost: ``"l2"`` (``|X_i - X_j|``), ``"sqeuclidean"`` (``|X_i - X_j|^2``) or
            ``"correlation"`` (``1 - rho_ij``, :func:`correlation_distance`: scale-free,
            so a loud and a quiet neuron with the same pattern are close).
    Returns:
        ``M: [n, k]`` float64, >= 0, divided by its maximum (all zeros stay zeros), so
        the entropic regularisation is relative to the largest cost for every ``cost``.
    """
    if cost not in COSTS:
        raise ValueError(f"unknown cost {cost!r}; available: {', '.join(COSTS)}")
    C = cov.double()
    if cost == "correlation":
        M = correlation_distance(C, targets)
    else:
        diag = torch.diagonal(C)
        sq = (diag[:, None] + diag[targets][None, :] - 2.0 * C[:, targets]).clamp_min(0.0)  # [n, k]
        M = sq.sqrt() if cost == "l2" else sq
    top = M.max()
    return M / top if top > 0 else M


def select_targets(cov: torch.Tensor, k: int, init: str = "norm", seed: int = 0) -> torch.Tensor:
    """Indices ``[k]`` of the neurons the others are merged into.

    * ``"norm"``: the ``k`` neurons with the largest activation norm ``sqrt(C_ii)``
      (ties by index);
    * ``"spread"``: greedy farthest point in activation (l2) distance, starting
      from the largest-norm neuron; each next target is the neuron farthest from
      the chosen ones (ties: larger norm), so two identical neurons are never both
      targets while a distinct neuron is left to be merged;
    * ``"random"``: ``k`` distinct neurons drawn with ``seed``.
    """
    C = cov.double()
    n = C.shape[0]
    if not 1 <= k <= n:
        raise ValueError(f"kept width k={k} must be in [1, {n}]")
    norms = torch.diagonal(C)  # squared activation norms [n]
    if init == "norm":
        return torch.argsort(-norms, stable=True)[:k]
    if init == "random":
        g = torch.Generator().manual_seed(int(seed))
        return torch.randperm(n, generator=g)[:k].sort().values.to(C.device)
    if init == "spread":
        # l2 distance of every neuron to neuron j, one column at a time (no [n, n] matrix)
        def dist_to(j: int) -> torch.Tensor:
            return (norms + norms[j] - 2.0 * C[:, j]).clamp_min(0.0).sqrt()

        first = int(torch.argmax(norms))
        chosen = [first]
        nearest = dist_to(first)  # distance of each neuron to its nearest chosen target
        taken = torch.zeros(n, dtype=torch.bool, device=C.device)
        taken[first] = True
        scale = float(norms.max()) if float(norms.max()) > 0 else 1.0
        for _ in range(k - 1):
            # lexicographic (distance, norm): the norm term only breaks exact ties
            key = nearest + 1e-12 * norms / scale
            key[taken] = -1.0
            j = int(torch.argmax(key))
            chosen.append(j)
            taken[j] = True
            nearest = torch.minimum(nearest, dist_to(j))
        return torch.tensor(chosen, dtype=torch.long, device=C.device)
    raise ValueError(f"unknown targets init {init!r}; available: {', '.join(TARGET_INITS)}")


def target_marginal(M: torch.Tensor, kind: str = "uniform") -> torch.Tensor:
    """Target weights ``b: [k]`` summing to 1.

    ``"uniform"``: ``1/k`` (balanced merging: every target absorbs ``n/k`` sources);
    ``"nearest"``: the share of source neurons whose nearest target is ``j``
    (every target is its own nearest, so ``b_j >= 1/n``); with a small
    regularisation the plan then approaches a hard nearest-target assignment.
    """
    n, k = M.shape
    if kind == "uniform":
        return torch.full((k,), 1.0 / k, dtype=torch.float64, device=M.device)
    if kind == "nearest":
        counts = torch.bincount(torch.argmin(M, dim=1), minlength=k).double().to(M.device)
        return counts / n
    raise ValueError(f"unknown target marginal {kind!r}; available: {', '.join(TARGET_MARGINALS)}")


@dataclass
class TransportResult:
    """A solved transport problem.

    Attributes:
        plan: ``P: [n, k]`` (float64), row sums ``a``, column sums ``b`` (mass-preserving:
            ``a[J] + a(D) b``, see :func:`mass_preserving_plan`).
        iterations: Sinkhorn iterations used (0 for the exact solver).
        marginal_error: ``max(|P 1 - a|_1, |P^T 1 - b|_1)`` of the returned plan (against
            the column sums above).
        cost: transport cost ``<P, M>``.
    """

    plan: torch.Tensor
    iterations: int
    marginal_error: float
    cost: float


def sinkhorn_log(
    M: torch.Tensor, a: torch.Tensor, b: torch.Tensor, reg: float, max_iter: int = 1000, tol: float = 1e-9
) -> tuple[torch.Tensor, int, float]:
    """Entropic OT ``min <P, M> - reg H(P)`` s.t. ``P 1 = a, P^T 1 = b`` by log-domain Sinkhorn.

    Dual potentials ``f: [n]``, ``g: [k]``; ``P = exp((f_i + g_j - M_ij) / reg)``.
    Each iteration makes the rows and then the columns exact; it stops when the
    row violation ``|P 1 - a|_1`` (checked every 10 iterations) is below ``tol``.
    Stable for small ``reg`` (no ``exp(-M/reg)`` underflow). Runs on ``M``'s device.

    Returns ``(P [n, k], iterations, row violation)``.
    """
    log_a, log_b = a.log(), b.log()
    f = torch.zeros_like(a)
    g = torch.zeros_like(b)
    err = float("inf")
    it = 0
    for it in range(1, max_iter + 1):
        f = reg * (log_a - torch.logsumexp((g[None, :] - M) / reg, dim=1))
        g = reg * (log_b - torch.logsumexp((f[:, None] - M) / reg, dim=0))
        if it % 10 == 0 or it == max_iter:
            P = torch.exp((f[:, None] + g[None, :] - M) / reg)
            err = float((P.sum(1) - a).abs().sum())
            if err < tol:
                break
    P = torch.exp((f[:, None] + g[None, :] - M) / reg)
    return P, it, err


def solve_transport(
    M: torch.Tensor,
    a: torch.Tensor,
    b: torch.Tensor,
    reg: float,
    max_iter: int = 1000,
    tol: float = 1e-9,
) -> TransportResult:
    """Entropic (``reg > 0``: :func:`sinkhorn_log`) or exact (``reg == 0``: POT's network simplex) OT.

    Args:
        M: cost ``[n, k]``; a: ``[n]``, b: ``[k]`` marginals (each summing to 1).
        reg: entropic regularisation (relative to ``max(M) = 1``).
        max_iter: Sinkhorn iterations (the exact solver gets ``max(1e5, 100 max_iter)``).
        tol: Sinkhorn stops when the marginal violation is below ``tol``.
    """
    M, a, b = M.double(), a.double().to(M.device), b.double().to(M.device)
    if reg < 0:
        raise ValueError(f"entropic regularisation must be >= 0, got {reg}")
    if reg == 0:
        ot = _ot()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            plan = ot.emd(a, b, M, numItermax=max(100000, 100 * max_iter))
        for w in caught:
            logger.warning("POT: %s", w.message)
        plan = torch.as_tensor(plan, dtype=torch.float64, device=M.device)
        iterations = 0
    else:
        plan, iterations, _ = sinkhorn_log(M, a, b, float(reg), max_iter, tol)
    if not torch.isfinite(plan).all():
        raise FloatingPointError(
            f"transport plan is not finite (reg={reg}); use a larger entropic_reg or the exact solver (0)"
        )
    err = max(float((plan.sum(1) - a).abs().sum()), float((plan.sum(0) - b).abs().sum()))
    return TransportResult(plan, iterations, err, float((plan * M).sum()))


def mass_preserving_plan(
    M: torch.Tensor,
    a: torch.Tensor,
    targets: torch.Tensor,
    b: torch.Tensor,
    reg: float,
    max_iter: int = 1000,
    tol: float = 1e-9,
) -> TransportResult:
    """Plan ``P: [n, k]`` in which every kept neuron keeps its own mass and only the dropped ones move.

    Args:
        M: cost ``[n, k]`` (row ``J_j`` is target ``j`` itself, ``M[J_j, j] = 0``).
        a: ``[n]`` source marginal (sums to 1); targets: ``[k]`` kept indices ``J``.
        b: ``[k]`` target marginal (sums to 1, > 0): the shape of the targets' extra capacity.
        reg, max_iter, tol: as for :func:`solve_transport`.

    With ``D`` the ``n - k`` dropped neurons and ``m = a(D) = sum_{i in D} a_i`` their mass:

    * ``P[J_j, j] = a[J_j]`` and ``P[J_j, j'] = 0`` for ``j' != j`` -- each kept neuron's whole
      share stays on itself (the balanced plan only guarantees ``P[J_j, j] <= a[J_j]``);
    * ``P[D] = m * P_D`` with ``P_D`` the (entropic or exact) plan from the dropped neurons
      (marginal ``a[D] / m``) to the targets (marginal ``b``), cost ``M[D]``;
    * so rows sum to ``a`` and columns to ``a[J] + m b``.

    In the merge map ``T = P diag(1 / P^T 1)`` the kept neuron's weight in its own merged
    neuron is ``T[J_j, j] = a[J_j] / (a[J_j] + m b_j)``; for uniform ``a`` and ``b`` that is
    exactly ``k/n``, the *upper bound* of the balanced plan's ``T[J_j, j]``, and (uniform
    ``a``) it is the largest weight of column ``j``: ``T[i, j] <= a_i / (a[J_j] + m b_j) =
    T[J_j, j]`` for every source ``i``. The rows ``J`` of ``T`` form a positive diagonal, so
    ``T`` always has rank ``k``.
    With ``k = n`` nothing is dropped and ``P = diag(a)`` (no solver call, exact for any ``reg``).
    """
    M, a, b = M.double(), a.double().to(M.device), b.double().to(M.device)
    n, k = M.shape
    J = torch.as_tensor(targets, device=M.device)
    cols = torch.arange(k, device=M.device)
    keep = torch.zeros(n, dtype=torch.bool, device=M.device)
    keep[J] = True
    D = torch.nonzero(~keep).squeeze(1)  # [n - k]
    P = torch.zeros(n, k, dtype=torch.float64, device=M.device)
    P[J, cols] = a[J]
    mass = float(a[D].sum()) if D.numel() else 0.0
    iterations = 0
    if D.numel() and mass > 0:
        sub = solve_transport(M[D], a[D] / mass, b, reg, max_iter, tol)
        P[D] = mass * sub.plan
        iterations = sub.iterations
    col = a[J] + mass * b
    err = max(float((P.sum(1) - a).abs().sum()), float((P.sum(0) - col).abs().sum()))
    return TransportResult(P, iterations, err, float((P * M).sum()))


def self_weights(T: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """``[k]``: ``T[J_j, j]``, each kept neuron's averaging weight in its own merged neuron."""
    J = torch.as_tensor(targets, device=T.device)
    return T[J, torch.arange(T.shape[1], device=T.device)]


def merge_map(plan: torch.Tensor) -> torch.Tensor:
    """``T = P diag(1 / P^T 1)``: column ``j`` holds the averaging weights of merged neuron ``j``."""
    col = plan.sum(0)
    if bool((col <= 0).any()):
        raise ValueError("a target receives no mass: the transport plan has an empty column")
    return plan / col[None, :]


def orthonormal_factor(T: torch.Tensor, rank_tol: float = 1e-8) -> torch.Tensor:
    """``Q`` of the thin QR ``T = Q R`` with ``diag(R) > 0``: ``[n, k]`` orthonormal columns.

    Raises ValueError when ``T`` is (numerically) rank-deficient: then ``span(T)``
    has fewer than ``k`` dimensions and ``Q`` would contain arbitrary directions.
    """
    s = torch.linalg.svdvals(T)
    if s.numel() == 0 or float(s[-1]) <= rank_tol * float(s[0]):
        ratio = float(s[-1] / s[0]) if s.numel() and float(s[0]) > 0 else 0.0
        raise ValueError(
            f"the merge map [{T.shape[0]} x {T.shape[1]}] is rank-deficient (smallest/largest singular value "
            f"{ratio:.2e}): two targets have (nearly) identical activations or the entropic regularisation is "
            "too large for these activations; lower entropic_reg or use targets='spread'"
        )
    Q, R = torch.linalg.qr(T)
    signs = torch.sign(torch.diagonal(R))
    signs[signs == 0] = 1.0
    return Q * signs[None, :]


@dataclass
class MergeBasis:
    """Result of :func:`dot_basis` at one residual point."""

    Q: torch.Tensor  # [n, k] orthonormal factor of T
    T: torch.Tensor  # [n, k] merge map (averaging weights per merged neuron)
    targets: torch.Tensor  # [k]
    transport: TransportResult


def dot_basis(
    cov: torch.Tensor,
    k: int,
    *,
    reg: float,
    cost: str = "l2",
    targets: str = "norm",
    marginal: str = "uniform",
    max_iter: int = 1000,
    tol: float = 1e-9,
    seed: int = 0,
    transport: str = "balanced",
) -> MergeBasis:
    """The whole transport step: targets, cost, plan, merge map, orthonormal factor.

    Args:
        cov: ``[n, n]`` uncentred second moment of the activations (float64).
        k: kept width.
        transport: ``"balanced"`` (every neuron, kept or not, is transported with
            marginals ``a``, ``b``: :func:`solve_transport`) or ``"mass-preserving"``
            (kept neurons stay on themselves, only the dropped ones are transported,
            the targets' extra capacity shaped like ``b``: :func:`mass_preserving_plan`).
    Returns:
        :class:`MergeBasis` with ``Q: [n, k]`` (float64, orthonormal columns).
    """
    if transport not in TRANSPORTS:
        raise ValueError(f"unknown transport {transport!r}; available: {', '.join(TRANSPORTS)}")
    C = cov.double()
    n = C.shape[0]
    J = select_targets(C, k, targets, seed).to(C.device)
    M = pairwise_cost(C, J, cost)  # [n, k]
    a = torch.full((n,), 1.0 / n, dtype=torch.float64, device=C.device)
    b = target_marginal(M, marginal)
    if transport == "mass-preserving":
        result = mass_preserving_plan(M, a, J, b, reg, max_iter, tol)
    else:
        result = solve_transport(M, a, b, reg, max_iter, tol)
    T = merge_map(result.plan)
    return MergeBasis(orthonormal_factor(T), T, J, result)


__all__ = [
    "COSTS",
    "MergeBasis",
    "TARGET_INITS",
    "TARGET_MARGINALS",
    "TRANSPORTS",
    "TransportResult",
    "centred_second_moment",
    "correlation_distance",
    "dot_basis",
    "mass_preserving_plan",
    "merge_map",
    "orthonormal_factor",
    "pairwise_cost",
    "select_targets",
    "self_weights",
    "sinkhorn_log",
    "solve_transport",
    "target_marginal",
]
