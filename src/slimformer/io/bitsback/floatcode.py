"""Lossless entropy coding of floating-point tensors on an ANS stack (``constriction``).

Why ANS: bits-back needs a *stack* coder — the encoder decodes a rotation from
the bits already on the stack and the decoder gives them back by encoding it
again, which only works when decoding and encoding are exact inverses on a LIFO
state. ``constriction``'s ``AnsCoder`` is such a coder, vectorised and exact;
arithmetic/range coders (queues) are not.

A float's bit pattern is split into ``sign + exponent`` (the *head*, coded with a
per-tensor categorical model whose counts are stored in the file header) and the
mantissa (coded as uniform chunks of at most 16 bits: trained weights' mantissas
are close to uniform). Non-float tensors are coded as uniform bytes.

Every function pushes/pops on a caller-owned ``AnsCoder``; *push* and *pop* of
the same tensor are exact inverses.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

# dtype name -> (unsigned view dtype, total bits, mantissa bits)
FLOAT_LAYOUT: dict[str, tuple[torch.dtype, int, int]] = {
    "float32": (torch.int32, 32, 23),
    "float16": (torch.int16, 16, 10),
    "bfloat16": (torch.int16, 16, 7),
    "float64": (torch.int64, 64, 52),
}
CHUNK_BITS = 16


def _models() -> Any:
    import constriction

    return constriction.stream.model


def dtype_name(t: torch.Tensor) -> str:
    return str(t.dtype).replace("torch.", "")


def _bits(t: torch.Tensor) -> np.ndarray:
    """Bit patterns of a float tensor as unsigned integers ``[numel]`` (uint64)."""
    view, nbits, _ = FLOAT_LAYOUT[dtype_name(t)]
    raw = t.detach().contiguous().reshape(-1).view(view).numpy().astype(np.int64)
    return (raw & ((1 << nbits) - 1) if nbits < 64 else raw).astype(np.uint64)


def _from_bits(bits: np.ndarray, dtype: str, shape: list[int]) -> torch.Tensor:
    view, nbits, _ = FLOAT_LAYOUT[dtype]
    signed = bits.astype(np.uint64).view(np.int64) if nbits == 64 else bits.astype(np.int64)
    if nbits < 64:
        signed = np.where(signed >= (1 << (nbits - 1)), signed - (1 << nbits), signed)
    np_view = {torch.int32: np.int32, torch.int16: np.int16, torch.int64: np.int64}[view]
    t = torch.from_numpy(signed.astype(np_view).copy()).view(getattr(torch, dtype))
    return t.reshape(shape)


def _chunks(mant_bits: int) -> list[tuple[int, int]]:
    """(shift, width) of the mantissa chunks, lowest first."""
    out, shift = [], 0
    while shift < mant_bits:
        w = min(CHUNK_BITS, mant_bits - shift)
        out.append((shift, w))
        shift += w
    return out


def head_histogram(t: torch.Tensor) -> list[list[int]]:
    """``[[head_value, count], ...]`` of a float tensor (the model stored in the header)."""
    _, _, mb = FLOAT_LAYOUT[dtype_name(t)]
    heads, counts = np.unique(_bits(t) >> np.uint64(mb), return_counts=True)
    return [[int(h), int(c)] for h, c in zip(heads, counts)]


def _uniform(width: int) -> Any:
    return _models().Uniform(2**width)  # width >= 1 (mantissa chunks)


def _categorical(hist: list[list[int]]) -> tuple[Any, np.ndarray]:
    values = np.array([h for h, _ in hist], dtype=np.uint64)
    counts = np.array([c for _, c in hist], dtype=np.float64)
    return _models().Categorical(counts / counts.sum(), perfect=False), values


def push_tensor(coder: Any, t: torch.Tensor, hist: list[list[int]] | None) -> None:
    """Encode tensor ``t`` (any shape) onto ``coder``; floats need their ``head_histogram``."""
    name = dtype_name(t)
    if name not in FLOAT_LAYOUT:
        data = np.frombuffer(t.detach().contiguous().numpy().tobytes(), dtype=np.uint8).astype(np.int32)
        if data.size:
            coder.encode_reverse(data, _models().Uniform(256))
        return
    if t.numel() == 0:
        return
    _, _, mb = FLOAT_LAYOUT[name]
    bits = _bits(t)
    for shift, w in reversed(_chunks(mb)):  # popped lowest chunk last
        part = ((bits >> np.uint64(shift)) & np.uint64((1 << w) - 1)).astype(np.int32)
        coder.encode_reverse(part, _uniform(w))
    if len(hist or []) > 1:  # a single head value is known from the header alone
        model, values = _categorical(hist or [])
        idx = np.searchsorted(values, bits >> np.uint64(mb)).astype(np.int32)
        coder.encode_reverse(idx, model)


def pop_tensor(coder: Any, dtype: str, shape: list[int], hist: list[list[int]] | None) -> torch.Tensor:
    """Inverse of :func:`push_tensor`."""
    n = int(np.prod(shape)) if shape else 1
    if dtype not in FLOAT_LAYOUT:
        tdt = getattr(torch, dtype)
        nbytes = n * torch.empty((), dtype=tdt).element_size()
        data = coder.decode(_models().Uniform(256), nbytes).astype(np.uint8) if nbytes else np.zeros(0, np.uint8)
        if not n:
            return torch.empty(shape, dtype=tdt)
        return torch.frombuffer(bytearray(data.tobytes()), dtype=tdt).reshape(shape).clone()
    if n == 0:
        return torch.empty(shape, dtype=getattr(torch, dtype))
    _, _, mb = FLOAT_LAYOUT[dtype]
    if not hist:
        raise ValueError("a float tensor needs its head histogram")
    if len(hist) == 1:
        bits = np.full(n, hist[0][0], dtype=np.uint64) << np.uint64(mb)
    else:
        model, values = _categorical(hist)
        bits = values[coder.decode(model, n)] << np.uint64(mb)
    for shift, w in _chunks(mb):
        part = coder.decode(_uniform(w), n).astype(np.uint64)
        bits |= part << np.uint64(shift)
    return _from_bits(bits, dtype, shape)
