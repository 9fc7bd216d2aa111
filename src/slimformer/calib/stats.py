"""Streaming statistics of activations, accumulated in float64."""

from __future__ import annotations

import torch
import torch.distributed as dist


class Covariance:
    """Running ``C = sum_t x_t x_t^T`` over tokens (uncentred, as SliceGPT uses).

    ``update(x)`` takes ``x: [..., d]`` in any dtype/device; the sum is kept in
    float64 on ``x``'s device. Under ``torch.distributed`` call
    :meth:`all_reduce` before reading, so every rank sees the global sum.
    ``compute_dtype`` is the dtype of each batch's ``x^T x`` product (float64 by
    default; float32 is several times faster for wide activations, and the sum over
    batches stays float64).
    """

    def __init__(self, d: int, compute_dtype: torch.dtype = torch.float64) -> None:
        self.d = d
        self.compute_dtype = compute_dtype
        self.sum: torch.Tensor | None = None  # [d, d] float64
        self.count = 0

    @torch.no_grad()
    def update(self, x: torch.Tensor) -> None:
        x2 = x.reshape(-1, x.shape[-1]).to(self.compute_dtype)  # [tokens, d]
        if x2.shape[-1] != self.d:
            raise ValueError(f"expected width {self.d}, got {x2.shape[-1]}")
        xtx = (x2.T @ x2).double()
        self.sum = xtx if self.sum is None else self.sum + xtx.to(self.sum.device)
        self.count += x2.shape[0]

    def all_reduce(self) -> None:
        if dist.is_available() and dist.is_initialized() and self.sum is not None:
            dist.all_reduce(self.sum)
            n = torch.tensor([self.count], dtype=torch.float64, device=self.sum.device)
            dist.all_reduce(n)
            self.count = int(n.item())

    def value(self) -> torch.Tensor:
        if self.sum is None:
            raise RuntimeError("covariance read before any update")
        return self.sum


def pca_basis(cov: torch.Tensor, damping: float, overwrite: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Eigenvectors of ``cov + damping * mean(diag(cov)) * I``, eigenvalues descending.

    Args:
        cov: ``[d, d]`` symmetric PSD matrix (float64).
        damping: relative ridge (SliceGPT code: 0.01).
        overwrite: damp ``cov`` in place instead of a copy (saves one ``[d, d]``
            float64 matrix; ``cov`` is then garbage).
    Returns:
        ``(eigvals [d], Q [d, d])`` in float64, columns of Q sorted by descending
        eigenvalue. The eigenvalues are those of the *damped* matrix.
    """
    C = cov if (overwrite and cov.dtype == torch.float64) else cov.double().clone()
    if damping > 0:
        diag = C.diagonal()
        diag.add_(damping * diag.mean())
    vals, vecs = torch.linalg.eigh(C)  # ascending
    del C
    return vals.flip(0), vecs.flip(1)
