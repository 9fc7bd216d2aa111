"""Where cached calibration activations wait between sublayers: on the compute device, on the
CPU (pinned for GPU compute) or in files of a scratch directory (:class:`DiskTensor`).

A :class:`~slimformer.calib.source.BlockSource` says which (:meth:`BlockSource.stash`):
in memory, ``offload_activations`` picks the CPU; an offloaded model uses the mode it was
opened with (``"cpu"`` or ``"disk"``).
"""

from __future__ import annotations

import os
import tempfile
import weakref
from pathlib import Path
from typing import Any

import torch

#: activation storage modes of an offloaded model (``--offload cpu|disk``)
ACTIVATION_MODES = ("cpu", "disk")


class DiskTensor:
    """A tensor parked in a file; ``.to(device)`` reads it back (the file goes with the object)."""

    def __init__(self, t: torch.Tensor, directory: Path) -> None:
        t = t.detach().to("cpu").contiguous()
        self.shape, self.dtype, self.nbytes = tuple(t.shape), t.dtype, t.numel() * t.element_size()
        fd, name = tempfile.mkstemp(suffix=".act", dir=directory)
        with os.fdopen(fd, "wb") as fh:
            fh.write(t.view(-1).view(torch.uint8).numpy().tobytes())
        self.path = name
        self._cleanup = weakref.finalize(self, _unlink, name)

    def to(self, device: torch.device | str, *args: Any, **kwargs: Any) -> torch.Tensor:
        raw = torch.from_file(self.path, shared=False, size=self.nbytes, dtype=torch.uint8)
        t = raw.view(self.dtype).view(self.shape)
        return t.to(device, *args, **kwargs) if torch.device(device).type != "cpu" else t.clone()


def _unlink(path: str) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass


class ActivationStash:
    """Where cached calibration activations wait between sublayers.

    ``put(t)`` returns something with ``.to(device)``: the tensor itself on
    ``device`` (in-memory), on CPU (pinned for GPU compute), or a :class:`DiskTensor`.
    """

    def __init__(self, mode: str, device: torch.device, directory: Path | None = None) -> None:
        if mode not in ("device",) + ACTIVATION_MODES:
            raise ValueError(f"activation storage must be one of {', '.join(ACTIVATION_MODES)}, got {mode!r}")
        if mode == "disk" and directory is None:
            raise ValueError("disk activation storage needs a directory")
        self.mode, self.device, self.directory = mode, device, directory

    def put(self, t: torch.Tensor) -> Any:
        if self.mode == "disk":
            return DiskTensor(t, self.directory)  # type: ignore[arg-type]
        if self.mode == "cpu":
            t = t.to("cpu")
            return t.pin_memory() if self.device.type == "cuda" and torch.cuda.is_available() else t
        return t.to(self.device)


__all__ = ["ACTIVATION_MODES", "ActivationStash", "DiskTensor"]
