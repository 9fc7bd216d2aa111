"""Checks of input checkpoints that need no torch: safetensors files that are complete.

A truncated or garbled ``*.safetensors`` file is found from its header alone (the
header's data offsets must fit the file's size), so a dense checkpoint is checked in
milliseconds before minutes of work, and the error names the file.
"""

from __future__ import annotations

import json
import os
import struct
from pathlib import Path

#: a header larger than this is not a real safetensors header
MAX_HEADER_BYTES = 100 * 2**20


class CheckpointError(ValueError):
    """An input checkpoint file is truncated, corrupt or not safetensors."""


def safetensors_header(path: str | os.PathLike) -> dict:
    """The parsed JSON header of a safetensors file, after checking it against the file size.

    Raises :class:`CheckpointError` naming the file when the header is unreadable or a
    tensor's data would lie beyond the end of the file (truncated download/copy).
    """
    path = Path(path)
    size = path.stat().st_size
    with open(path, "rb") as fh:
        head = fh.read(8)
        if len(head) < 8:
            raise CheckpointError(f"{path} is truncated ({size} bytes): not a safetensors file")
        (n,) = struct.unpack("<Q", head)
        if n > MAX_HEADER_BYTES or 8 + n > size:
            raise CheckpointError(f"{path} is truncated or not a safetensors file (header of {n} bytes, "
                                  f"file of {size} bytes)")
        raw = fh.read(n)
    try:
        header = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{path} has a corrupt safetensors header ({exc})") from None
    if not isinstance(header, dict):
        raise CheckpointError(f"{path} has a corrupt safetensors header (not a JSON object)")
    end = 0
    for name, info in header.items():
        if name == "__metadata__":
            continue
        offsets = info.get("data_offsets") if isinstance(info, dict) else None
        if not (isinstance(offsets, list) and len(offsets) == 2 and all(isinstance(o, int) for o in offsets)):
            raise CheckpointError(f"{path} has a corrupt safetensors header (tensor {name!r})")
        end = max(end, offsets[1])
    if 8 + n + end > size:
        raise CheckpointError(f"{path} is truncated: its tensors need {8 + n + end:,} bytes, the file has {size:,}; "
                              "download or copy it again")
    return header


def check_checkpoint_files(directory: str | os.PathLike) -> None:
    """Check every ``*.safetensors`` file of a local checkpoint directory (see :func:`safetensors_header`)."""
    for f in sorted(Path(directory).glob("*.safetensors")):
        safetensors_header(f)


__all__ = ["CheckpointError", "check_checkpoint_files", "safetensors_header"]
