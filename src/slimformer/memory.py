"""Process memory readings (Linux ``/proc``; ``resource`` elsewhere)."""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import resource

logger = logging.getLogger("slimformer.memory")


def _status_mb(field: str) -> float | None:
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        return None
    return None


def rss_mb() -> float:
    """Current resident set size in MiB."""
    v = _status_mb("VmRSS")
    return v if v is not None else peak_rss_mb()


def peak_rss_mb() -> float:
    """Peak resident set size of this process in MiB.

    Uses ``VmHWM`` (reset by ``exec``), not ``ru_maxrss``, which a child started
    with fork+exec inherits from its parent and would over-report.
    """
    v = _status_mb("VmHWM")
    if v is not None:
        return v
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def reset_peak_rss() -> bool:
    """Reset this process's peak RSS (``VmHWM``) to the current RSS (Linux >= 4.0).

    Returns False where that is not possible (then :func:`peak_rss_mb` stays the
    lifetime peak).
    """
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


def _libc() -> ctypes.CDLL | None:
    name = ctypes.util.find_library("c")
    try:
        lib = ctypes.CDLL(name) if name else None
    except OSError:
        return None
    return lib if lib is not None and hasattr(lib, "mallopt") and hasattr(lib, "malloc_trim") else None


_M_MMAP_THRESHOLD = -3  # glibc <malloc.h>


def use_mmap_for_large_blocks(threshold_bytes: int = 1 << 20) -> bool:
    """Serve every allocation of ``threshold_bytes`` or more with its own mmap (glibc only).

    glibc raises its mmap threshold each time a large block is freed, after which
    large tensors come from the heap and freed ones are rarely returned to the
    OS: streaming a model one block at a time then grows RSS towards the size of
    the whole model. A fixed threshold returns each freed weight matrix at once.
    Returns False (and changes nothing) without glibc.
    """
    lib = _libc()
    if lib is None:
        return False
    ok = bool(lib.mallopt(_M_MMAP_THRESHOLD, int(threshold_bytes)))
    logger.debug("mallopt(M_MMAP_THRESHOLD, %d) -> %s", threshold_bytes, ok)
    return ok


def trim_heap() -> None:
    """Return free heap memory to the OS (glibc ``malloc_trim``; a no-op elsewhere)."""
    lib = _libc()
    if lib is not None:
        lib.malloc_trim(0)
