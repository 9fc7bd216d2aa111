"""Configuration of ``auto`` (torch-free: the CLI is generated from it)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ...validate import check_fraction, check_selection

#: what ``auto`` tries by default: the calibration-based methods that take seconds to minutes
#: (DISP-LLM trains a hypernetwork and PruneNet a policy: add them by name when wanted)
DEFAULT_CANDIDATES = ("fasp;fasp:attention=heads;fasp:attention=heads,schedule=global;"
                      "slicegpt;slicegpt:schedule=layer-redundancy;modegpt")


def _value(text: str) -> Any:
    """``true``/``false`` -> bool, integers and decimals -> numbers, anything else stays text."""
    low = text.strip().lower()
    if low in ("true", "false"):
        return low == "true"
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text.strip()


def parse_candidates(text: str) -> list[tuple[str, str, dict[str, Any]]]:
    """``"fasp;fasp:attention=heads,schedule=global"`` -> ``[(label, method, settings), ...]``.

    Candidates are separated by ``;``; each is a method name, optionally followed by ``:`` and
    comma-separated ``field=value`` settings of that method's config. Raises ValueError on a
    malformed entry or a repeated label (method names and fields are checked when the
    candidate's config is built).
    """
    out: list[tuple[str, str, dict[str, Any]]] = []
    for raw in str(text).split(";"):
        entry = raw.strip()
        if not entry:
            continue
        method, _, rest = entry.partition(":")
        settings: dict[str, Any] = {}
        for item in filter(None, (s.strip() for s in rest.split(","))):
            key, eq, value = item.partition("=")
            if not eq or not key.strip():
                raise ValueError(f"auto candidate {entry!r}: settings are field=value pairs, got {item!r}")
            settings[key.strip().replace("-", "_")] = _value(value)
        if "sparsity" in settings or "target_params" in settings:
            raise ValueError(f"auto candidate {entry!r}: the budget is auto's own target_params, not a candidate setting")
        if any(label == entry for label, _, _ in out):
            raise ValueError(f"auto candidate {entry!r} is listed twice")
        out.append((entry, method.strip(), settings))
    if not out:
        raise ValueError("auto needs at least one candidate")
    return out


@dataclass
class AutoConfig:
    """Try several methods at one parameter budget; keep the best on held-out calibration windows.

    Every candidate compresses a copy of the model with the same ``target_params`` on the
    calibration windows that are not held out; each result is scored by its perplexity on the
    held-out windows (the last ``holdout`` fraction of the calibration windows, at least one);
    the model becomes the best candidate. Every candidate's score, size and time is in the
    report (``auto.candidates``), so the choice can be audited. Needs memory for one more
    copy of the model.

    Attributes:
        target_params: fraction of the model's *parameters* to remove, in (0, 1), given to
            every candidate.
        candidates: ``;``-separated candidates, each a method name with optional
            ``:field=value,...`` settings of its config, e.g.
            ``fasp;fasp:attention=heads,schedule=global;slicegpt:basis=shared,slice_head=true``.
        holdout: fraction of the calibration windows held out for scoring (at least one
            window; the rest calibrate the candidates).
        max_minutes: start no new candidate after this many minutes (``None``: try all); the
            candidates scored so far compete, the others are reported as skipped.
    """

    target_params: float | None = None
    candidates: str = DEFAULT_CANDIDATES
    holdout: float = 0.1
    max_minutes: float | None = None

    method = "auto"

    def __post_init__(self) -> None:
        if self.target_params is None:
            raise ValueError("auto needs target_params (the fraction of parameters every candidate removes)")
        self.target_params = check_fraction("target_params", self.target_params, allow_zero=False)
        parse_candidates(self.candidates)
        check_selection("auto", self.holdout, self.max_minutes)


__all__ = ["AutoConfig", "DEFAULT_CANDIDATES", "parse_candidates"]
