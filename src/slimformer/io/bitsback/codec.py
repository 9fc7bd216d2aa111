"""Bits-back packing of a saved model directory into one file, and unpacking it.

Stack layout (top = decoded first)::

    [chunk 0 | corrections 0] [chunk 1 | corrections 1] ... [tail tensors] [other files] <- bottom

Encoder (groups in reverse decode order): *pop* a rotation ``R_g`` from the bits
already on the stack (bits-back: those bits belong to later chunks and the
other files), store every tensor of group ``g`` in the basis ``P_g R_g``
(``P_g``: canonical basis, reference block lower triangular), simulate the
decoder's recovery of ``R_g`` from the stored numbers, push the corrections it
needs, push the chunk. Decoder: pop chunk ``g`` and its corrections, recover
``R_g`` exactly, *push* it back — the stack is then what the encoder had before
popping, i.e. the next chunk's bits.

What is guaranteed (see docs/bitsback.md):
* every byte of every non-weight file is restored exactly (sha256-checked), except the
  ``weights_sha256`` of ``config.json``, re-recorded for the unpacked weight files;
* the unpacked weights are exactly (bit for bit, sha256-checked) the tensors the
  packer stored: the original tensors multiplied by the group rotations in
  float64 and rounded once to the stored dtype. They compute the same function
  as the original weights up to that one rounding (fp32: logits agree to ~1e-6
  relative); tensors outside any rotation group are bit-exact originals;
* decoding is deterministic: the packer runs the decoder's recovery on the
  stored numbers and stores a correction for every angle whose estimate is
  more than a quarter bin from its bin centre, so a decoding machine whose
  float64 arithmetic differs slightly (another BLAS) still lands in the same
  bins unless its error exceeds a quarter bin (~5e-8 rad at the usual 24-bit
  bins, vs ~1e-13 for float64 rounding differences). Any mismatch would be
  caught by the sha256 of the decoded weights: never a silent wrong result;
* before the file is written, the packer runs the model with the original and
  with the stored weights on a probe (``verify``) and refuses to write when the
  logits differ by more than rounding.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import lzma
import math
import os
import struct
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch
from tqdm.auto import tqdm

from ...runtime.modeling_slimformer import WEIGHTS_INDEX_NAME, SlimformerFormatError, weight_files
from ...validate import require_dir
from . import floatcode as fc
from .groups import Group, Member, rotation_groups
from .rotation import (
    COARSE_BITS,
    AngleLayout,
    Quantiser,
    canonicaliser,
    choose_bits,
    coarse_probabilities,
    recover,
    reference_rows,
    rotation_from_angles,
    rotation_of,
)

logger = logging.getLogger("slimformer.io.bitsback")

MAGIC = b"SLIMBB\r\n"
PACK_FORMAT_VERSION = 1
SUPPORTED_PACK_VERSIONS = (1,)
_PREFIX = struct.Struct("<8sIQ")  # magic, version, header length
_VALUE_BITS = 13  # corrections store indices/bins as two 13-bit symbols


class PackFormatError(SlimformerFormatError):
    """A pack file is not one, is truncated or corrupted, or has an unsupported version."""


@dataclass
class PackStats:
    """Sizes and timings of one pack (bits are exact stack sizes, not estimates)."""

    file_bytes: int
    payload_bits: int
    header_bytes: int
    meta_bits: int
    n_weights: int
    weight_bytes_raw: int
    bitsback_bits: int = 0
    correction_bits: int = 0
    seconds: float = 0.0
    groups: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@contextlib.contextmanager
def _one_blas_thread() -> Iterator[None]:
    """Small dense linear algebra: one BLAS thread is fastest and avoids oversubscription."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # pragma: no cover - optional
        yield
        return
    with threadpool_limits(1):
        yield


def _models() -> Any:
    import constriction

    return constriction.stream.model


def _new_coder(words: np.ndarray | None = None) -> Any:
    import constriction

    stack = constriction.stream.stack
    return stack.AnsCoder() if words is None else stack.AnsCoder(words)


# ----- rotation symbols on the stack -------------------------------------------------


def _angle_models(k: int, q: Quantiser) -> list[tuple[np.ndarray, Any]]:
    """(flat angle indices, coarse model) in pop order: Haar exponents ascending, then full-range."""
    powers = AngleLayout(k).powers()
    c = min(q.bits, COARSE_BITS)
    out = []
    for p in np.unique(powers[powers >= 0]):
        out.append((np.flatnonzero(powers == p), _models().Categorical(coarse_probabilities(int(p), q), perfect=False)))
    out.append((np.flatnonzero(powers < 0), _models().Uniform(2 ** (c + 1))))
    return out


def pop_rotation(coder: Any, k: int, q: Quantiser) -> tuple[np.ndarray, bool]:
    """Decode a rotation (flat bins ``[m]``, det < 0) from ``coder``: the bits-back step."""
    negative = bool(coder.decode(_models().Uniform(2), 1)[0])
    bins = np.empty(AngleLayout(k).m, dtype=np.int64)
    f = q.fine_bits
    for idx, model in _angle_models(k, q):
        coarse = coder.decode(model, len(idx)).astype(np.int64)
        fine = coder.decode(_models().Uniform(2**f), len(idx)).astype(np.int64) if f else 0
        bins[idx] = coarse * 2**f + fine
    return bins, negative


def push_rotation(coder: Any, k: int, q: Quantiser, bins: np.ndarray, negative: bool) -> None:
    """Inverse of :func:`pop_rotation` (the decoder returns the borrowed bits)."""
    f = q.fine_bits
    for idx, model in reversed(_angle_models(k, q)):
        b = bins[idx]
        if f:
            coder.encode_reverse((b % 2**f).astype(np.int32), _models().Uniform(2**f))
        coder.encode_reverse((b // 2**f).astype(np.int32), model)
    coder.encode_reverse(np.array([int(negative)], dtype=np.int32), _models().Uniform(2))


def _split(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return (values >> _VALUE_BITS).astype(np.int32), (values & (2**_VALUE_BITS - 1)).astype(np.int32)


def push_corrections(coder: Any, corr: dict[int, int]) -> None:
    """Sparse corrections ``{flat angle index (m = sign): true value}``."""
    u = _models().Uniform(2**_VALUE_BITS)
    keys = np.array(sorted(corr), dtype=np.int64)
    vals = np.array([corr[i] for i in sorted(corr)], dtype=np.int64)
    for arr in (vals, keys):
        hi, lo = _split(arr)
        coder.encode_reverse(lo, u)
        coder.encode_reverse(hi, u)
    hi, lo = _split(np.array([len(keys)], dtype=np.int64))
    coder.encode_reverse(lo, u)
    coder.encode_reverse(hi, u)


def pop_corrections(coder: Any) -> dict[int, int]:
    u = _models().Uniform(2**_VALUE_BITS)

    def read(n: int) -> np.ndarray:
        hi = coder.decode(u, n).astype(np.int64)
        return (hi << _VALUE_BITS) | coder.decode(u, n).astype(np.int64)

    n = int(read(1)[0])
    keys = read(n)
    vals = read(n)
    return {int(a): int(b) for a, b in zip(keys, vals)}


def _full_mask(k: int) -> np.ndarray:
    return AngleLayout(k).powers() < 0


def recover_bins(A_stored: np.ndarray, q: Quantiser, corr: dict[int, int]) -> tuple[np.ndarray, bool]:
    """Decoder: bins of the rotation in the stored reference block ``A_stored: [k, k]``."""
    k = A_stored.shape[0]
    offs, full = AngleLayout(k).offsets(), _full_mask(k)
    bins = np.empty(AngleLayout(k).m, dtype=np.int64)

    def snap(j: int, est: np.ndarray) -> np.ndarray:
        sl = slice(offs[j], offs[j] + len(est))
        b = q.nearest(est, full[sl])
        for t in range(len(est)):
            if offs[j] + t in corr:
                b[t] = corr[offs[j] + t]
        bins[sl] = b
        return q.centre(b, full[sl])

    _, negative = recover(rotation_of(A_stored), snap)
    if AngleLayout(k).m in corr:
        negative = bool(corr[AngleLayout(k).m])
    return bins, negative


def needed_corrections(A_stored: np.ndarray, q: Quantiser, bins: np.ndarray, negative: bool) -> dict[int, int]:
    """Encoder: run the decoder's recovery on the stored numbers; correct every unsafe angle."""
    k = A_stored.shape[0]
    offs, full = AngleLayout(k).offsets(), _full_mask(k)
    corr: dict[int, int] = {}

    def snap(j: int, est: np.ndarray) -> np.ndarray:
        sl = slice(offs[j], offs[j] + len(est))
        true, fl = bins[sl], full[sl]
        centre = q.centre(true, fl)
        dist = np.abs(np.angle(np.exp(1j * (est - centre))))
        bad = (q.nearest(est, fl) != true) | (dist > q.width / 4)
        for t in np.flatnonzero(bad):
            corr[int(offs[j] + t)] = int(true[t])
        return centre

    _, neg_est = recover(rotation_of(A_stored), snap)
    if neg_est != negative:
        corr[AngleLayout(k).m] = int(negative)
    return corr


# ----- tensors of a group --------------------------------------------------------------


def _rows(t: torch.Tensor, axis: int) -> np.ndarray:
    """The tensor as rows over the residual axis: ``[n_rows, k]`` float64."""
    x = t.detach().to(torch.float64).numpy()
    if x.ndim == 1:
        return x[None, :]
    return x if axis == 1 else x.T


def group_matrix(state: dict[str, torch.Tensor], members: list[Member]) -> np.ndarray:
    """All member tensors stacked as rows over the residual axis: ``[N, k]`` float64."""
    return np.concatenate([_rows(state[m.name], m.axis) for m in members], axis=0)


def _rotate(t: torch.Tensor, left: np.ndarray | None, right: np.ndarray | None) -> torch.Tensor:
    """``left.T @ t @ right`` in float64, rounded once to ``t``'s dtype (1-D: ``left.T @ t``)."""
    x = torch.from_numpy(t.detach().to(torch.float64).numpy())
    if x.dim() == 1:
        y = torch.from_numpy(left.T) @ x if left is not None else x
    else:
        y = x
        if left is not None:
            y = torch.from_numpy(left.T) @ y
        if right is not None:
            y = y @ torch.from_numpy(right)
    return y.to(t.dtype).contiguous()


def _dtype_round(dtype: torch.dtype):
    return lambda a: torch.from_numpy(np.ascontiguousarray(a)).to(dtype).to(torch.float64).numpy()


# ----- container -------------------------------------------------------------------------


def _weights_digest(names: list[str], state: dict[str, torch.Tensor]) -> str:
    h = hashlib.sha256()
    for n in names:
        t = state[n].contiguous()
        h.update(f"{n}|{fc.dtype_name(t)}|{list(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def _meta_files(src: Path, weights: list[str]) -> list[Path]:
    skip = {Path(w).name for w in weights} | {WEIGHTS_INDEX_NAME}
    files = []
    for p in sorted(src.iterdir()):
        if p.name in skip:
            continue
        if p.is_dir():
            raise ValueError(f"{p} is a subdirectory: pack supports flat model directories only")
        files.append(p)
    return files


def _load_state(src: Path) -> tuple[dict[str, torch.Tensor], list[str]]:
    from safetensors.torch import load_file

    files = weight_files(str(src))
    state: dict[str, torch.Tensor] = {}
    for f in files:
        try:
            state.update(load_file(f))
        except Exception as exc:
            raise SlimformerFormatError(f"cannot read {f}: {exc} (file truncated or corrupt?)") from exc
    return state, files


@dataclass
class _GroupPlan:
    group: Group
    ref: np.ndarray
    P: np.ndarray
    bits: int
    dtype: torch.dtype


def _plan_group(g: Group, state: dict[str, torch.Tensor]) -> _GroupPlan | None:
    """Canonical basis and bin resolution of a group, or None when it cannot be used."""
    dtypes = {state[m.name].dtype for m in g.members}
    floats = (torch.float32, torch.float16, torch.bfloat16, torch.float64)
    if g.k < 2 or len(dtypes) != 1 or next(iter(dtypes)) not in floats:
        return None
    M = group_matrix(state, g.members)
    ref = reference_rows(M)
    if ref is None:
        return None
    P = canonicaliser(M[ref])
    dtype = next(iter(dtypes))
    bits = choose_bits(M[ref] @ P, _dtype_round(dtype))
    return _GroupPlan(g, ref, P, bits, dtype)


def pack(src: str | os.PathLike, out: str | os.PathLike, bitsback: bool = True, progress: bool = True,
         overwrite: bool = False, verify: bool = True) -> PackStats:
    """Pack a saved model directory into one file (bits-back over its rotation groups).

    Args:
        src: a model directory (slimformer output or any HF safetensors model).
        out: the pack file to write (atomically).
        bitsback: ``False`` stores every tensor as it is (the plain entropy-coder baseline).
        overwrite: replace an existing ``out`` file (refused otherwise).
        verify: before writing, run the model with the original and with the stored
            (rotated) weights on a probe and refuse to write if the logits differ by
            more than rounding (a safety net against an unsupported structure).
    Returns:
        :class:`PackStats` (sizes in bits, time).
    """
    t0 = time.perf_counter()
    src = require_dir(src)
    if not (src / "config.json").is_file():
        raise FileNotFoundError(f"{src} has no config.json: not a Hugging Face model directory")
    from ..outputs import check_free_space, check_output_file

    check_output_file(out, overwrite, inputs=(src,), magic=MAGIC, what="pack file")
    # the pack file is smaller than the raw files it codes
    check_free_space(out, sum(p.stat().st_size for p in src.iterdir() if p.is_file()), "the pack file")
    state, files = _load_state(src)
    names = list(state)
    meta = {p.name: p.read_bytes() for p in _meta_files(src, files)}
    meta_blob = lzma.compress(b"".join(meta.values()), preset=9 | lzma.PRESET_EXTREME)
    from ..format import read_section

    shapes = {n: tuple(t.shape) for n, t in state.items()}
    groups = rotation_groups(read_section(src), shapes) if bitsback else []
    if bitsback and not groups:
        logger.warning("%s exposes no rotational symmetry (not a rotated slimformer model): "
                       "packing without bits-back, no gain over the plain entropy coder", src)
    with _one_blas_thread():
        plans = [p for g in tqdm(groups, desc="canonicalise", unit="group", disable=not progress)
                 if (p := _plan_group(g, state)) is not None]
        return _encode(src, out, state, names, meta, meta_blob, plans, t0, progress, verify)


def _chunk_of(plans: list[_GroupPlan]) -> dict[str, int]:
    """Tensor name -> decode index of the chunk storing it (shortcuts: the earliest group)."""
    chunk: dict[str, int] = {}
    for gi, p in enumerate(plans):
        for m in p.group.members:
            chunk[m.name] = gi
        for name, _ in p.group.shortcuts:
            chunk[name] = min(chunk.get(name, gi), gi)
    return chunk


def _encode(src: Path, out: str | os.PathLike, state: dict[str, torch.Tensor], names: list[str],
            meta: dict[str, bytes], meta_blob: bytes, plans: list[_GroupPlan], t0: float, progress: bool,
            verify: bool) -> PackStats:
    chunk = _chunk_of(plans)
    chunks: list[list[str]] = [sorted(n for n in names if chunk.get(n) == gi) for gi in range(len(plans))]
    tail = [n for n in names if n not in chunk]
    stored: dict[str, torch.Tensor] = {n: state[n] for n in tail}
    hists: dict[str, Any] = {}
    coder = _new_coder()
    coder.encode_reverse(np.frombuffer(meta_blob, dtype=np.uint8).astype(np.int32), _models().Uniform(256))
    meta_bits = coder.num_bits()
    _push_chunk(coder, tail, stored, hists)
    T: dict[int, np.ndarray] = {}  # decode index -> P_g @ R_g
    side: dict[str, dict[str, np.ndarray]] = {}
    group_info: list[dict[str, Any]] = []
    bb_total = corr_total = 0
    for gi in tqdm(range(len(plans) - 1, -1, -1), desc="pack", unit="group", disable=not progress):
        p = plans[gi]
        q = Quantiser(p.bits)
        before = coder.num_bits()
        bins, negative = pop_rotation(coder, p.group.k, q)
        borrowed = before - coder.num_bits()
        R = rotation_from_angles(q.centre(bins, _full_mask(p.group.k)), negative, p.group.k)
        T[gi] = p.P @ R
        for m in p.group.members:
            stored[m.name] = _rotate(state[m.name], T[gi], None) if m.axis == 0 else _rotate(state[m.name], None, T[gi])
        for name, s in p.group.shortcuts:
            side.setdefault(name, {})[s] = T[gi]
        for name in chunks[gi]:
            if name in side:  # shortcut [k_out, k_in]: T_out.T @ W @ T_in (identity for a plain side)
                stored[name] = _rotate(state[name], side[name].get("out"), side[name].get("in"))
        A = group_matrix(stored, p.group.members)[p.ref]
        corr = needed_corrections(A, q, bins, negative)
        mark = coder.num_bits()
        push_corrections(coder, corr)
        corr_bits = coder.num_bits() - mark
        _push_chunk(coder, chunks[gi], stored, hists)
        bb_total += borrowed
        corr_total += corr_bits
        group_info.append({"points": p.group.points, "k": p.group.k, "bits": p.bits, "borrowed_bits": borrowed,
                           "corrections": len(corr), "correction_bits": corr_bits, "rows": int(sum(
                               _rows(state[m.name], m.axis).shape[0] for m in p.group.members))})
    words = coder.get_compressed()
    header = {
        "format_version": PACK_FORMAT_VERSION,
        "tensors": [{"name": n, "dtype": fc.dtype_name(state[n]), "shape": list(state[n].shape),
                     "hist": hists.get(n)} for n in names],
        "tail": tail,
        "groups": [{"points": p.group.points, "k": p.group.k, "bits": p.bits, "ref": p.ref.tolist(),
                    "members": [[m.name, m.axis] for m in p.group.members], "chunk": chunks[gi]}
                   for gi, p in enumerate(plans)],
        "files": [{"name": name, "size": len(content), "sha256": hashlib.sha256(content).hexdigest()}
                  for name, content in meta.items()],
        "meta_blob_bytes": len(meta_blob),
        "weights_sha256": _weights_digest(names, stored),
        "slimformer_version": _version(),
    }
    data = _container(header, words)
    if verify and plans:
        check_same_function(src, stored)
    from ..outputs import write_bytes_atomic

    write_bytes_atomic(out, data, what="the pack file")
    n_weights = sum(t.numel() for t in state.values())
    stats = PackStats(
        file_bytes=len(data), payload_bits=32 * len(words), header_bytes=len(data) - 4 * len(words),
        meta_bits=meta_bits, n_weights=n_weights,
        weight_bytes_raw=sum(t.numel() * t.element_size() for t in state.values()),
        bitsback_bits=bb_total, correction_bits=corr_total, seconds=time.perf_counter() - t0,
        groups=list(reversed(group_info)),
    )
    logger.info("packed %s -> %s: %d bytes (%d bits borrowed back, %d correction bits)",
                src, out, len(data), bb_total, corr_total)
    return stats


VERIFY_TOL = {torch.float32: 1e-4, torch.float64: 1e-10, torch.float16: 0.1, torch.bfloat16: 0.1}


@torch.no_grad()
def check_same_function(src: Path, stored: dict[str, torch.Tensor]) -> float:
    """Relative logit difference between the model in ``src`` and the same model with ``stored`` weights.

    Raises ``RuntimeError`` above rounding level (``VERIFY_TOL`` of the weight dtype): rounding once
    gives ~1e-6 in fp32, a wrong rotation gives O(1).
    """
    from ..format import load_model

    model, _ = load_model(src)
    x = torch.randint(0, model.config.vocab_size, (1, 16), generator=torch.Generator().manual_seed(0))
    a = model(input_ids=x).logits.double()
    model.load_state_dict(stored, strict=True, assign=True)
    b = model(input_ids=x).logits.double()
    rel = ((a - b).abs().max() / a.abs().max().clamp_min(1e-30)).item()
    tol = VERIFY_TOL.get(next(model.parameters()).dtype, 0.1)
    if not rel <= tol:
        raise RuntimeError(
            f"bits-back self-check failed: the rotated weights change the logits by {rel:.2e} (relative; "
            f"rounding allows {tol:g}); this model's structure is not fully rotation-symmetric - "
            "pack it with --no-bitsback"
        )
    logger.info("self-check: rotated weights reproduce the logits to %.2e relative", rel)
    return rel


def _version() -> str:
    from ..._version import __version__

    return __version__


def _push_chunk(coder: Any, names: list[str], stored: dict[str, torch.Tensor], hists: dict[str, Any]) -> None:
    for n in reversed(names):  # popped in list order
        t = stored[n]
        hists[n] = fc.head_histogram(t) if fc.dtype_name(t) in fc.FLOAT_LAYOUT else None
        fc.push_tensor(coder, t, hists[n])


def _container(header: dict[str, Any], words: np.ndarray) -> bytes:
    hb = json.dumps(header, separators=(",", ":")).encode()
    body = _PREFIX.pack(MAGIC, PACK_FORMAT_VERSION, len(hb)) + hb
    body += struct.pack("<Q", len(words)) + words.astype("<u4").tobytes()
    return body + hashlib.sha256(body).digest()


def read_container(path: str | os.PathLike) -> tuple[dict[str, Any], np.ndarray]:
    """Header and payload words of a pack file, after magic, version, length and checksum checks."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"pack file not found: {path}")
    data = path.read_bytes()
    if len(data) < _PREFIX.size or data[:8] != MAGIC:
        raise PackFormatError(f"{path} is not a slimformer pack file (bad magic bytes)")
    _, version, hlen = _PREFIX.unpack_from(data)
    if version not in SUPPORTED_PACK_VERSIONS:
        raise PackFormatError(f"{path} has pack format version {version}; this slimformer reads "
                              f"{list(SUPPORTED_PACK_VERSIONS)} - upgrade slimformer")
    pos = _PREFIX.size + hlen
    if len(data) < pos + 8 + 32:
        raise PackFormatError(f"{path} is truncated ({len(data)} bytes): pack it again")
    (nwords,) = struct.unpack_from("<Q", data, pos)
    end = pos + 8 + 4 * nwords
    if len(data) != end + 32:
        raise PackFormatError(f"{path} is truncated or has trailing bytes ({len(data)} bytes, "
                              f"expected {end + 32}): pack it again")
    if hashlib.sha256(data[:end]).digest() != data[end:]:
        raise PackFormatError(f"{path} is corrupted (sha256 checksum mismatch): pack it again")
    try:
        header = json.loads(data[_PREFIX.size:pos])
    except json.JSONDecodeError as exc:  # pragma: no cover - covered by the checksum
        raise PackFormatError(f"{path} has an unreadable header: {exc}") from exc
    return header, np.frombuffer(data, dtype="<u4", count=nwords, offset=pos + 8).astype(np.uint32)


def unpacked_bytes(path: str | os.PathLike) -> int:
    """Size of the directory a pack file unpacks to, from its header alone (no payload read);
    0 when the header cannot be read (then :func:`read_container` reports why)."""
    try:
        with open(path, "rb") as fh:
            prefix = fh.read(_PREFIX.size)
            magic, _, hlen = _PREFIX.unpack(prefix)
            if magic != MAGIC:
                return 0
            header = json.loads(fh.read(hlen))
        tensors = sum(math.prod(t["shape"]) * torch.empty(0, dtype=getattr(torch, t["dtype"])).element_size()
                      for t in header["tensors"])
        return tensors + sum(int(f["size"]) for f in header["files"])
    except (OSError, struct.error, ValueError, KeyError, TypeError, AttributeError):
        return 0


def decode(path: str | os.PathLike, progress: bool = True) -> tuple[dict[str, torch.Tensor], dict[str, bytes]]:
    """Decode a pack file: (tensors by name, other files by name), all checksums verified."""
    header, words = read_container(path)
    try:
        with _one_blas_thread():
            state, files = _decode(header, words, progress)
    except PackFormatError:
        raise
    except Exception as exc:  # a coder error on data that passed the checksum: a bug or a forged file
        raise PackFormatError(f"cannot decode {path}: {type(exc).__name__}: {exc}") from exc
    names = [t["name"] for t in header["tensors"]]
    if _weights_digest(names, state) != header["weights_sha256"]:
        raise PackFormatError(f"{path}: decoded weights do not match their sha256 (decoder mismatch)")
    return state, files


def _decode(
    header: dict[str, Any], words: np.ndarray, progress: bool
) -> tuple[dict[str, torch.Tensor], dict[str, bytes]]:
    info = {t["name"]: t for t in header["tensors"]}
    coder = _new_coder(words) if len(words) else _new_coder()
    state: dict[str, torch.Tensor] = {}

    def pop_chunk(names: list[str]) -> None:
        for n in names:
            t = info[n]
            state[n] = fc.pop_tensor(coder, t["dtype"], t["shape"], t["hist"])

    for g in tqdm(header["groups"], desc="unpack", unit="group", disable=not progress):
        pop_chunk(g["chunk"])
        corr = pop_corrections(coder)
        members = [Member(n, a) for n, a in g["members"]]
        A = group_matrix(state, members)[np.array(g["ref"], dtype=np.int64)]
        q = Quantiser(int(g["bits"]))
        bins, negative = recover_bins(A, q, corr)
        push_rotation(coder, int(g["k"]), q, bins, negative)
    pop_chunk(header["tail"])
    blob = coder.decode(_models().Uniform(256), int(header["meta_blob_bytes"])).astype(np.uint8).tobytes()
    if not coder.is_empty():
        raise PackFormatError("data left on the stack after decoding: corrupted or mis-decoded pack file")
    raw = lzma.decompress(blob)
    files: dict[str, bytes] = {}
    pos = 0
    for f in header["files"]:
        content = raw[pos : pos + f["size"]]
        pos += f["size"]
        if hashlib.sha256(content).hexdigest() != f["sha256"]:
            raise PackFormatError(f"file {f['name']} does not match its sha256 after decoding")
        files[f["name"]] = content
    return state, files


def unpack(path: str | os.PathLike, out: str | os.PathLike, overwrite: bool = False, progress: bool = True) -> Path:
    """Decode a pack file into a model directory (written atomically; nothing is written on error)."""
    from ..format import DEFAULT_MAX_SHARD_BYTES, record_weights_sha256, write_weights
    from ..outputs import check_free_space, check_output_dir, staged_dir

    if not Path(path).is_file():
        raise FileNotFoundError(f"pack file not found: {path}")
    out = check_output_dir(out, overwrite, inputs=(path,)).absolute()
    check_free_space(out, unpacked_bytes(path), "the unpacked model")  # before decoding
    state, files = decode(path, progress=progress)
    with staged_dir(out) as tmp:
        for name, content in files.items():
            (tmp / name).write_bytes(content)
        write_weights(state, tmp, DEFAULT_MAX_SHARD_BYTES)
        # the rotated weights are new files (verified above against the pack's own digest):
        # config.json's weights_sha256, if it records one, must describe them
        record_weights_sha256(tmp)
    logger.info("unpacked %s -> %s", path, out)
    return out
