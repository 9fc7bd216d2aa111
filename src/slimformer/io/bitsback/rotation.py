"""Discretised rotations, their Haar prior, canonicalisation and recovery.

A rotation ``R: [k, k]`` (orthogonal, det ±1) is written as a product of
Householder reflections ``R = H_0 H_1 ... H_{k-2} D``: ``H_j`` acts on dims
``j..k-1`` and swaps ``e_j`` with a unit vector ``u_j`` (length ``n = k - j``);
``D = diag(1, ..., 1, ±1)``. Each ``u_j`` is given by hyperspherical angles
``phi_0..phi_{n-3}`` in ``[0, pi]`` and ``phi_{n-2}`` in ``(-pi, pi]``. Under the
Haar measure on O(k) these angles are independent, with density proportional to
``sin(phi_i) ** (n - 2 - i)`` (the last one uniform), so the prior used to draw a
rotation from the bit stream factorises into one-dimensional models.

Angles are discretised to bins of width ``pi / 2**bits``; a bin index is split
into a *coarse* symbol (Haar probability of the coarse bin) and a uniform *fine*
symbol, so the coder never needs a model with more than ``2**COARSE_BITS`` entries.

Recovery (decoder side): given ``R_hat`` (the rotation re-computed from stored,
rounded weights), the angles of column ``j`` are estimated, snapped to bin
centres (or replaced by a stored correction), and the *exact* reflection built
from the snapped angles is applied before moving to column ``j + 1``, so errors
do not accumulate. The encoder runs the very same procedure on the very same
numbers and stores a correction for every angle whose estimate is not safely
inside its bin (more than a quarter bin from the centre).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

COARSE_BITS = 10
MIN_BITS, MAX_BITS = 4, 25  # a bin index (< 2**26) must fit two 13-bit correction symbols


@dataclass(frozen=True)
class AngleLayout:
    """Where the ``m = k(k-1)/2`` angles of a ``k x k`` rotation live.

    For column ``j`` (``n = k - j`` >= 2) the angles are ``phi_0..phi_{n-2}``; the
    flat index of angle ``i`` of column ``j`` is ``offsets[j] + i``.
    """

    k: int

    @property
    def m(self) -> int:
        return self.k * (self.k - 1) // 2

    def offsets(self) -> np.ndarray:
        n = self.k - np.arange(self.k - 1)  # [k-1]: vector lengths
        return np.concatenate([[0], np.cumsum(n - 1)])[:-1]

    def powers(self) -> np.ndarray:
        """Per flat angle: the Haar exponent ``p`` (``-1`` marks a full-range, uniform angle)."""
        out = np.empty(self.m, dtype=np.int64)
        for j, off in enumerate(self.offsets()):
            n = self.k - j
            out[off : off + n - 2] = n - 2 - np.arange(n - 2)
            out[off + n - 2] = -1
        return out


@dataclass(frozen=True)
class Quantiser:
    """Bins of width ``pi / 2**bits``: ``2**bits`` on ``[0, pi]``, ``2**(bits+1)`` on ``(-pi, pi]``."""

    bits: int

    @property
    def width(self) -> float:
        return np.pi / 2.0**self.bits

    @property
    def fine_bits(self) -> int:
        return max(0, self.bits - COARSE_BITS)

    def n_bins(self, full: np.ndarray) -> np.ndarray:
        return np.where(full, 2 ** (self.bits + 1), 2**self.bits)

    def centre(self, bins: np.ndarray, full: np.ndarray) -> np.ndarray:
        lo = np.where(full, -np.pi, 0.0)
        return lo + (bins.astype(np.float64) + 0.5) * self.width

    def nearest(self, phi: np.ndarray, full: np.ndarray) -> np.ndarray:
        lo = np.where(full, -np.pi, 0.0)
        b = np.floor((phi - lo) / self.width).astype(np.int64)
        return np.clip(b, 0, self.n_bins(full) - 1)


def sphere_angles(u: np.ndarray) -> np.ndarray:
    """Hyperspherical angles ``[n-1]`` of a vector ``u: [n]`` (n >= 2; normalised first)."""
    u = u / np.linalg.norm(u)
    tail = np.sqrt(np.cumsum((u * u)[::-1])[::-1])  # tail[i] = ||u[i:]||
    phi = np.empty(len(u) - 1)
    phi[:-1] = np.arctan2(tail[1:-1], u[:-2])
    phi[-1] = np.arctan2(u[-1], u[-2])
    return phi


def sphere_point(phi: np.ndarray) -> np.ndarray:
    """Unit vector ``[n]`` with hyperspherical angles ``phi: [n-1]``."""
    s = np.concatenate([[1.0], np.cumprod(np.sin(phi[:-1]))])  # [n-1] running products
    u = np.empty(len(phi) + 1)
    u[:-2] = s[:-1] * np.cos(phi[:-1])
    u[-2] = s[-1] * np.cos(phi[-1])
    u[-1] = s[-1] * np.sin(phi[-1])
    return u


def reflect_rows(X: np.ndarray, u: np.ndarray, phi0: float) -> None:
    """``X <- H X`` in place, ``H`` the reflection swapping ``e_0`` and unit ``u`` (X: [n, c]).

    ``v = u - e_0`` with ``v_0 = -2 sin^2(phi0 / 2)`` computed without cancellation.
    """
    v = u.copy()
    v[0] = -2.0 * np.sin(phi0 / 2.0) ** 2
    vv = float(v @ v)
    if vv == 0.0:
        return
    X -= np.outer(v, (2.0 / vv) * (v @ X))


def rotation_from_angles(phi: np.ndarray, negative: bool, k: int) -> np.ndarray:
    """``R = H_0 ... H_{k-2} D: [k, k]`` from the flat angles ``phi: [m]``."""
    R = np.eye(k)
    if negative:
        R[k - 1, k - 1] = -1.0
    offs = AngleLayout(k).offsets()
    for j in range(k - 2, -1, -1):
        n = k - j
        a = phi[offs[j] : offs[j] + n - 1]
        reflect_rows(R[j:, j:], sphere_point(a), a[0])  # rows >= j of columns < j stay zero
    return R


Snap = Callable[[int, np.ndarray], np.ndarray]


def recover(R_hat: np.ndarray, snap: Snap) -> tuple[np.ndarray, bool]:
    """Peel ``R_hat: [k, k]`` column by column; returns (snapped flat angles, det < 0).

    ``snap(j, estimates)`` maps the estimated angles of column ``j`` to the exact
    angles used to continue (bin centres or corrections).
    """
    k = R_hat.shape[0]
    M = np.array(R_hat, dtype=np.float64, copy=True)
    offs = AngleLayout(k).offsets()
    out = np.empty(AngleLayout(k).m)
    for j in range(k - 1):
        a = snap(j, sphere_angles(M[j:, j]))
        out[offs[j] : offs[j] + len(a)] = a
        reflect_rows(M[j:, j:], sphere_point(a), a[0])
    return out, bool(M[k - 1, k - 1] < 0)


# ----- canonical form -------------------------------------------------------------


def reference_rows(M: np.ndarray, rtol: float = 1e-7) -> np.ndarray | None:
    """Indices of ``k`` well-conditioned rows of ``M: [N, k]``, or None if its rank is < k.

    Greedy pivoted Gram-Schmidt: repeatedly take the row with the largest
    component orthogonal to the rows already taken. The choice depends only on
    rotation-invariant quantities, and it is stored in the header anyway, so the
    decoder never recomputes it.
    """
    N, k = M.shape
    if N < k:
        return None
    X = np.array(M, dtype=np.float64, copy=True)
    norms = np.einsum("ij,ij->i", X, X)
    floor = (rtol**2) * float(norms.max(initial=0.0))
    chosen: list[int] = []
    for _ in range(k):
        i = int(np.argmax(norms))
        if norms[i] <= floor or norms[i] <= 0.0:
            return None
        qv = X[i] / np.sqrt(norms[i])
        chosen.append(i)
        X -= np.outer(X @ qv, qv)
        norms = np.einsum("ij,ij->i", X, X)
        norms[chosen] = -1.0
    return np.sort(np.array(chosen, dtype=np.int64))


def canonicaliser(A: np.ndarray) -> np.ndarray:
    """``P: [k, k]`` orthogonal with ``A @ P`` lower triangular, positive diagonal (A: [k, k]).

    Equivariant: ``canonicaliser(A @ R) == R.T @ canonicaliser(A)`` (exact arithmetic).
    """
    Q, Rt = np.linalg.qr(A.T)
    s = np.sign(np.diag(Rt))
    s[s == 0] = 1.0
    return Q * s[None, :]


def rotation_of(A_rotated: np.ndarray) -> np.ndarray:
    """The rotation ``R`` such that ``A_rotated = L @ R`` with ``L`` canonical (decoder side)."""
    return canonicaliser(A_rotated).T


# ----- priors ----------------------------------------------------------------------


def coarse_probabilities(p: int, q: Quantiser) -> np.ndarray:
    """Haar probabilities of the coarse bins of an angle with density ``sin^p`` on [0, pi]."""
    c = min(q.bits, COARSE_BITS)
    centres = (np.arange(2**c) + 0.5) * (np.pi / 2**c)
    logp = p * np.log(np.sin(centres))
    w = np.exp(logp - logp.max())
    w = np.maximum(w / w.sum(), 1e-12)
    return w / w.sum()


CORRECTION_BITS = 4 * 13  # a stored correction: index and value, two 13-bit symbols each


def choose_bits(L: np.ndarray, dtype_round: Callable[[np.ndarray], np.ndarray], seed: int = 0) -> int:
    """Bin resolution for a group with canonical reference block ``L: [k, k]``.

    One trial: a Haar-random rotation is applied, rounded to the storage dtype
    and recovered; the angle errors seen there predict, for each resolution, how
    many angles will need a correction (error above a quarter bin). The
    resolution with the largest expected net gain (``m * bits`` minus the
    corrections' cost) wins.
    """
    k = L.shape[0]
    rng = np.random.default_rng(seed)
    G = rng.standard_normal((k, k))
    Q, Rr = np.linalg.qr(G)
    R = Q * np.sign(np.diag(Rr))[None, :]
    truth, _ = recover(R, lambda j, a: a)
    R = rotation_from_angles(truth, bool(np.linalg.det(R) < 0), k)
    R_hat = rotation_of(dtype_round(L @ R))
    offs = AngleLayout(k).offsets()
    errs: list[float] = []

    def snap(j: int, est: np.ndarray) -> np.ndarray:
        t = truth[offs[j] : offs[j] + len(est)]
        d = np.abs(np.angle(np.exp(1j * (est - t))))
        errs.append(d)
        return t

    recover(R_hat, snap)
    err = np.concatenate(errs)
    m = len(err)

    def net(bits: int) -> float:
        return m * bits - CORRECTION_BITS * float(np.sum(err > np.pi / 2.0**bits / 4))

    return max(range(MIN_BITS, MAX_BITS + 1), key=net)
