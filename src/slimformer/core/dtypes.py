"""The one dtype-name -> torch dtype converter (the names live torch-free in :data:`slimformer.validate.DTYPE_NAMES`)."""

from __future__ import annotations

import torch

from ..validate import DTYPE_NAMES


def to_torch_dtype(dtype: str | torch.dtype, allowed: tuple[str, ...] = DTYPE_NAMES, context: str = "") -> torch.dtype:
    """The torch dtype of ``dtype``: a name (``"bfloat16"``, ``"torch.float16"``) or a torch dtype (returned as is).

    Args:
        allowed: the names accepted (default :data:`~slimformer.validate.DTYPE_NAMES`).
        context: appended to the error message (``" for offloaded compression"``).

    Raises:
        ValueError: a name not in ``allowed``.
    """
    if isinstance(dtype, torch.dtype):
        return dtype
    name = str(dtype).replace("torch.", "")
    if name not in allowed:
        raise ValueError(f"unsupported dtype {name!r}{context}; use {', '.join(allowed)}")
    return getattr(torch, name)


__all__ = ["to_torch_dtype"]
