"""The one safetensors writer and reader of slimformer (saved models and offloaded shards alike).

:func:`write_tensors` streams a file tensor by tensor: no serialised copy of the whole file
is held in memory (``safetensors.torch.save_file`` builds one), so writing a shard costs no
more than the tensors themselves. :func:`read_tensors` reads named tensors with plain
reads into fresh tensors, so no page of the file stays mapped afterwards. Every I/O error
(a full disk, a read-only directory, ...) comes out as an ``OSError`` naming the file.

Layout per the safetensors spec: 8-byte little-endian header size, JSON header
(``__metadata__``; per tensor ``dtype``, ``shape``, ``data_offsets``; padded with spaces to
8 bytes), then the data. Tensors are laid out by decreasing element size (then in the order
given), so every tensor starts at a multiple of its element size.
"""

from __future__ import annotations

import json
import os
import re
from contextlib import contextmanager
from typing import Any, Iterator

import torch

#: safetensors dtype names <-> torch dtypes (the ones slimformer writes and reads)
DTYPES = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
    "BOOL": torch.bool,
}
_NAMES = {v: k for k, v in DTYPES.items()}


@contextmanager
def os_errors(path: str | os.PathLike) -> Iterator[None]:
    """Raise I/O failures inside the ``with`` as ``OSError`` naming ``path``.

    An ``OSError`` passes unchanged; an error that only carries the OS error as text
    (safetensors' ``SafetensorError``: ``"... os error 28"``) becomes ``OSError(28, ...)``.
    """
    try:
        yield
    except OSError:
        raise
    except Exception as exc:
        m = re.search(r"os error (\d+)", str(exc))
        if m is None:
            raise
        code = int(m.group(1))
        raise OSError(code, os.strerror(code), str(path)) from None


def _header(tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None) -> tuple[bytes, list[str], int]:
    """``(padded JSON header, tensor names in file order, bytes of tensor data)``."""
    order = sorted(tensors, key=lambda k: -tensors[k].element_size())  # stable: ties keep the given order
    header: dict[str, Any] = {"__metadata__": dict(metadata or {"format": "pt"})}
    offset = 0
    for key in order:
        t = tensors[key]
        if t.dtype not in _NAMES:
            raise ValueError(f"cannot write tensor {key} of dtype {t.dtype}")
        nbytes = t.numel() * t.element_size()
        header[key] = {"dtype": _NAMES[t.dtype], "shape": list(t.shape), "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    raw = json.dumps(header, separators=(",", ":")).encode()
    return raw + b" " * (-len(raw) % 8), order, offset


def write_tensors(path: str | os.PathLike, tensors: dict[str, torch.Tensor],
                  metadata: dict[str, str] | None = None) -> int:
    """Write ``tensors`` (any device, any layout) to the safetensors file ``path``, tensor by tensor.

    ``metadata``: the header's ``__metadata__`` (default ``{"format": "pt"}``). Returns the
    bytes of tensor data. Raises ``OSError`` on I/O failures (see :func:`os_errors`).
    """
    raw, order, total = _header(tensors, metadata)
    with os_errors(path), open(path, "wb") as fh:
        fh.write(len(raw).to_bytes(8, "little"))
        fh.write(raw)
        for key in order:
            t = tensors[key]
            if t.numel():
                c = t.detach().to("cpu").contiguous()
                fh.write(memoryview(c.view(-1).view(torch.uint8).numpy()))
    return total


def read_tensors(path: str | os.PathLike, names: dict[str, str]) -> dict[str, torch.Tensor]:
    """Read tensors (``{our name: key in the file}``) from one safetensors file with plain reads.

    Unlike a memory map, the bytes land directly in freshly allocated tensors, so no page of
    the file stays mapped (and counted as resident) after a tensor is replaced or freed.
    Raises ``ValueError`` for a file that is not (complete) safetensors.
    """
    with os_errors(path), open(path, "rb") as fh:
        head = fh.read(8)
        if len(head) != 8:
            raise ValueError(f"{path} is not a safetensors file (truncated header)")
        n = int.from_bytes(head, "little")
        try:
            header = json.loads(fh.read(n))
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise ValueError(f"{path} is not a safetensors file (bad header: {exc})") from exc
        return {ours: _read_one(fh, path, header[key], key, 8 + n) for ours, key in names.items()}


def _read_one(fh: Any, path: str | os.PathLike, info: dict[str, Any], key: str, base: int) -> torch.Tensor:
    """Tensor ``key`` described by header entry ``info``; its data starts at ``base`` + its offset."""
    if info["dtype"] not in DTYPES:
        raise ValueError(f"{path}: tensor {key} has unsupported dtype {info['dtype']}")
    start, end = info["data_offsets"]
    t = torch.empty(info["shape"], dtype=DTYPES[info["dtype"]])
    buf = t.view(-1).view(torch.uint8).numpy() if t.numel() else None
    if end - start != (0 if buf is None else buf.nbytes):
        raise ValueError(f"{path}: tensor {key} has {end - start} bytes, its shape needs {t.nbytes}")
    if buf is not None:
        fh.seek(base + start)
        if fh.readinto(memoryview(buf)) != buf.nbytes:
            raise ValueError(f"{path} is truncated (tensor {key})")
    return t


__all__ = ["DTYPES", "os_errors", "read_tensors", "write_tensors"]
