"""Process memory readings (Linux ``/proc``; ``resource`` elsewhere)."""

from __future__ import annotations

import resource


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
