"""Calibration and evaluation text: loading, tokenising and windowing.

Conventions (shared by calibration and perplexity, SliceGPT/GPTQ style):

* A *source* is either a local file or a short hub name (see :data:`HUB_DATASETS`).
  Local files need no network; hub names are loaded lazily with
  :func:`datasets.load_dataset` and fail with :class:`DataError` when offline.
* A source yields *rows* of text. Local formats:

  - ``.txt``: one row per non-blank line, newline removed, blank lines dropped (the
    rows of ``datasets``' ``text`` builder after SliceGPT's empty-row filter). For
    blank-line separated paragraphs (TinyStories) the joined text is essentially the
    file itself: stories260k's dense perplexity is 5.05 either way, as in the
    reference measurement of the official SliceGPT code.
  - ``.raw`` (WikiText raw files): one row per line exactly as the HF ``wikitext``
    builder yields them, i.e. non-blank lines *keep* their trailing ``"\\n"`` and
    whitespace-only lines become ``""``. With this rule ``wiki.test.raw`` reproduces
    ``load_dataset("wikitext", "wikitext-2-raw-v1", split="test")["text"]`` row for
    row, so local and hub perplexities are computed on byte-identical text.
  - ``.jsonl``: one JSON object per non-blank line; the row is its ``"text"`` field.

* The text of a source is ``"\\n\\n".join(rows)`` (:func:`join_rows`); its sha256
  (UTF-8) identifies the data in reports.
* The text is tokenised *once*, as a whole, with the tokenizer's default special tokens
  (a Llama tokenizer therefore adds a single BOS at the very start) (:func:`tokenize_text`).
* Calibration (:func:`load`) draws ``samples`` windows of exactly ``seqlen`` consecutive
  tokens at seeded uniform random offsets in ``[0, n_tokens - seqlen]``.
  Perplexity (:mod:`slimformer.eval.perplexity`) instead cuts the stream into
  consecutive non-overlapping windows.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

logger = logging.getLogger("slimformer.data")

#: Where the offline copies of the standard datasets live (used for defaults and messages).
DEFAULT_DATA_ROOT: Path = Path(
    os.environ.get("SLIMFORMER_DATA") or Path(__file__).resolve().parents[3] / "shared" / "data"
)

#: Local file suffixes understood by :func:`load_text`.
LOCAL_SUFFIXES: tuple[str, ...] = (".txt", ".raw", ".jsonl")

_SPLIT_ALIASES = {"val": "validation", "valid": "validation", "dev": "validation"}


class DataError(ValueError):
    """A calibration or evaluation source cannot be loaded or is unusable."""


@dataclass
class TextSource:
    """Rows of text plus the identity of where they came from.

    Attributes:
        name: the source exactly as the user gave it (file path or hub name).
        rows: the text rows (see the module docstring for per-format rules).
        sha256: hex sha256 of ``join_rows(rows)`` encoded as UTF-8.
        origin: resolved file path, or ``"hub:<dataset id>/<config>/<split>"``.
    """

    name: str
    rows: list[str]
    sha256: str
    origin: str

    @property
    def text(self) -> str:
        """The joined text ``"\\n\\n".join(rows)``."""
        return join_rows(self.rows)


@dataclass(frozen=True)
class _HubSpec:
    """How to fetch one named dataset from the Hugging Face hub."""

    path: str
    config: str | None
    splits: tuple[str, ...]
    rows: Callable[[Any], list[str]]
    data_files: dict[str, str] | None = None


def _field(name: str) -> Callable[[Any], list[str]]:
    def rows(dataset: Any) -> list[str]:
        return list(dataset[name])

    return rows


def _alpaca_rows(dataset: Any) -> list[str]:
    """Alpaca rows: the prompt-formatted ``text`` field, else instruction/input/output."""
    if "text" in dataset.column_names:
        return list(dataset["text"])
    return [
        "\n".join(part for part in (r["instruction"], r["input"], r["output"]) if part)
        for r in dataset
    ]


_C4_FILES = {
    "train": "en/c4-train.00000-of-01024.json.gz",
    "validation": "en/c4-validation.00000-of-00008.json.gz",
}

#: Short names accepted by :func:`load_text` and how they map to hub datasets.
HUB_DATASETS: dict[str, _HubSpec] = {
    "wikitext2": _HubSpec("wikitext", "wikitext-2-raw-v1", ("train", "validation", "test"), _field("text")),
    "ptb": _HubSpec("ptb_text_only", "penn_treebank", ("train", "validation", "test"), _field("sentence")),
    "c4": _HubSpec("allenai/c4", "en", ("train", "validation"), _field("text"), _C4_FILES),
    "alpaca": _HubSpec("tatsu-lab/alpaca", None, ("train",), _alpaca_rows),
}


def join_rows(rows: Sequence[str]) -> str:
    """Join text rows SliceGPT-style: ``"\\n\\n".join(rows)``."""
    return "\n\n".join(rows)


def _sha256(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _make_source(name: str, rows: list[str], origin: str) -> TextSource:
    text = join_rows(rows)
    if not text.strip():
        raise DataError(f"calibration/eval source {name} ({origin}) contains no text")
    return TextSource(name=name, rows=rows, sha256=_sha256(text), origin=origin)


# ----------------------------------------------------------------------------- local files


def _read_paragraphs(path: Path) -> list[str]:
    with path.open(encoding="utf-8", newline="\n") as f:
        return [line.rstrip("\n").rstrip("\r") for line in f if line.strip()]


def _read_wikitext_raw(path: Path) -> list[str]:
    with path.open(encoding="utf-8", newline="\n") as f:
        return [line.replace("\r\n", "\n") if line.strip() else "" for line in f]


def _read_jsonl(path: Path) -> list[str]:
    rows: list[str] = []
    with path.open(encoding="utf-8") as f:
        for lineno, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as err:
                raise DataError(f"{path}:{lineno}: invalid JSON ({err.msg})") from err
            if not isinstance(record, dict) or not isinstance(record.get("text"), str):
                raise DataError(f'{path}:{lineno}: record has no string "text" field')
            rows.append(record["text"])
    return rows


_READERS: dict[str, Callable[[Path], list[str]]] = {
    ".txt": _read_paragraphs,
    ".raw": _read_wikitext_raw,
    ".jsonl": _read_jsonl,
}


def _load_local(name: str, path: Path) -> TextSource:
    if path.is_dir():
        raise DataError(f"calibration/eval path is a directory, not a file: {path}")
    reader = _READERS.get(path.suffix.lower())
    if reader is None:
        raise DataError(
            f"unsupported calibration/eval file type {path.suffix!r} for {path}; "
            f"expected one of {', '.join(LOCAL_SUFFIXES)}"
        )
    resolved = path.resolve()
    try:
        rows = reader(resolved)
    except UnicodeDecodeError as exc:
        raise DataError(f"{path} is not UTF-8 text (byte 0x{exc.object[exc.start]:02x}: {exc.reason}); "
                        "convert it, e.g. iconv -f latin1 -t utf-8") from None
    logger.debug("read %d rows from %s", len(rows), resolved)
    return _make_source(name, rows, str(resolved))


# ----------------------------------------------------------------------------- hub datasets


def _normalise_split(key: str, spec: _HubSpec, split: str | None) -> str:
    resolved = _SPLIT_ALIASES.get(split, split) if split else "train"
    if resolved not in spec.splits:
        raise DataError(f"dataset {key} has no split {split!r}; available: {', '.join(spec.splits)}")
    return resolved


def _load_hub(name: str, key: str, split: str | None) -> TextSource:
    spec = HUB_DATASETS[key]
    split = _normalise_split(key, spec, split)
    origin = f"hub:{spec.path}/{spec.config or 'default'}/{split}"
    kwargs: dict[str, Any] = {"split": split}
    if spec.data_files is not None:
        kwargs["data_files"] = {split: spec.data_files[split]}
    try:
        import datasets  # lazy: heavy import, only needed for hub names

        # With explicit data_files (c4) the config name must not be passed as well.
        config = None if spec.data_files is not None else spec.config
        dataset = datasets.load_dataset(spec.path, config, **kwargs)
    except Exception as err:  # offline, missing credentials, renamed dataset, ...
        example = DEFAULT_DATA_ROOT / "wikitext2" / "wiki.test.raw"
        raise DataError(
            f"could not load {name} ({origin}): the dataset hub is unreachable or failed "
            f"({type(err).__name__}); pass a local file path instead, e.g. {example}"
        ) from err
    return _make_source(name, spec.rows(dataset), origin)


def _looks_like_path(source: str) -> bool:
    return (
        os.sep in source
        or "/" in source
        or source.startswith(("~", "."))
        or Path(source).suffix.lower() in LOCAL_SUFFIXES + (".json",)
    )


def load_text(source: str, split: str | None = None) -> TextSource:
    """Load the rows of a calibration/evaluation source.

    Args:
        source: path of a local ``.txt``/``.raw``/``.jsonl`` file, or a hub name among
            ``wikitext2``, ``ptb``, ``c4``, ``alpaca``. An existing file wins over a
            hub name of the same spelling.
        split: hub split (``train``, ``validation``/``valid``, ``test``); defaults to
            ``train`` for hub names and is ignored for local files.

    Returns:
        The rows with their identity (name, sha256, origin).

    Raises:
        DataError: missing/empty/malformed file, unknown name, or unreachable hub.
    """
    path = Path(source).expanduser()
    if path.exists():
        if split is not None:
            logger.debug("split=%r ignored for local file %s", split, path)
        return _load_local(source, path)
    key = source.lower()
    if key in HUB_DATASETS:
        return _load_hub(source, key, split)
    if _looks_like_path(source):
        raise DataError(f"calibration/eval file not found: {path}")
    raise DataError(
        f"unknown calibration/eval source {source!r}: not an existing file and not one of "
        f"the known dataset names {', '.join(HUB_DATASETS)}"
    )


# ----------------------------------------------------------------------------- tokenising


def tokenize_text(text: str, tokenizer: Any) -> torch.LongTensor:
    """Tokenise a whole text in one call with the tokenizer's default special tokens.

    The tokenizer's ``model_max_length`` is lifted for the duration of the call so that
    the "sequence length is longer than the specified maximum" warning is not emitted.

    Args:
        text: the joined text.
        tokenizer: a Hugging Face tokenizer (fast ones handle ~1 MB in about a second).

    Returns:
        ``[n_tokens]`` int64 token ids.
    """
    saved = getattr(tokenizer, "model_max_length", None)
    if saved is not None:
        tokenizer.model_max_length = sys.maxsize
    try:
        ids = tokenizer(text)["input_ids"]
    finally:
        if saved is not None:
            tokenizer.model_max_length = saved
    return torch.as_tensor(ids, dtype=torch.long).reshape(-1)


# ----------------------------------------------------------------------------- calibration


@dataclass
class CalibData:
    """Tokenised calibration windows and the identity of the text they came from.

    Attributes:
        input_ids: ``[samples, seqlen]`` int64 token windows.
        name: the source as given by the user.
        origin: resolved file path or ``hub:<id>/<config>/<split>``.
        sha256: sha256 of the joined source text.
        seqlen: tokens per window.
        seed: seed of the window offsets.
    """

    input_ids: torch.LongTensor
    name: str
    origin: str
    sha256: str
    seqlen: int
    seed: int

    @property
    def samples(self) -> int:
        """Number of windows."""
        return int(self.input_ids.shape[0])

    def identity(self) -> dict[str, Any]:
        """JSON-serialisable description that pins down the calibration data exactly."""
        return {
            "name": self.name,
            "origin": self.origin,
            "sha256": self.sha256,
            "samples": self.samples,
            "seqlen": self.seqlen,
            "seed": self.seed,
        }

    def __len__(self) -> int:
        return self.samples


def random_windows(ids: torch.Tensor, samples: int, seqlen: int, seed: int) -> torch.LongTensor:
    """Draw seeded random windows of consecutive tokens.

    Args:
        ids: ``[n_tokens]`` token stream with ``n_tokens >= seqlen``.
        samples: number of windows.
        seqlen: tokens per window.
        seed: seed of a fresh ``torch.Generator``; offsets are uniform in
            ``[0, n_tokens - seqlen]``.

    Returns:
        ``[samples, seqlen]`` windows (copies).
    """
    generator = torch.Generator().manual_seed(seed)
    high = ids.numel() - seqlen + 1
    starts = torch.randint(0, high, (samples,), generator=generator)
    index = starts[:, None] + torch.arange(seqlen)[None, :]
    return ids[index]


def _check_calib_args(samples: int, seqlen: int) -> None:
    if samples < 1:
        raise DataError(f"calibration samples must be >= 1, got {samples}")
    if seqlen < 2:
        raise DataError(f"calibration seqlen must be >= 2, got {seqlen}")


def load(
    source: str | TextSource,
    tokenizer: Any,
    split: str | None = None,
    samples: int = 128,
    seqlen: int = 2048,
    seed: int = 42,
) -> CalibData:
    """Load calibration data: ``samples`` seeded random windows of ``seqlen`` tokens.

    Args:
        source: local file path or hub name (see :func:`load_text`), or a loaded :class:`TextSource`.
        tokenizer: Hugging Face tokenizer of the model being calibrated.
        split: hub split (default ``train``); ignored for local files.
        samples: number of windows (>= 1).
        seqlen: tokens per window (>= 2).
        seed: seed for the window offsets.

    Returns:
        :class:`CalibData` with ``input_ids`` of shape ``[samples, seqlen]``.

    Raises:
        DataError: invalid arguments, unusable source, or text shorter than one window.
    """
    _check_calib_args(samples, seqlen)
    text_source = source if isinstance(source, TextSource) else load_text(source, split)
    ids = tokenize_text(text_source.text, tokenizer)
    if ids.numel() < seqlen:
        raise DataError(
            f"calibration text {text_source.name} has {ids.numel()} tokens, fewer than one window of "
            f"seqlen={seqlen}; use a longer file or a smaller --calib-seqlen"
        )
    windows = random_windows(ids, samples, seqlen, seed)
    logger.info(
        "calibration data: %d x %d tokens from %s (%d tokens, sha256 %s…)",
        samples, seqlen, text_source.origin, ids.numel(), text_source.sha256[:12],
    )
    return CalibData(
        input_ids=windows,
        name=text_source.name,
        origin=text_source.origin,
        sha256=text_source.sha256,
        seqlen=seqlen,
        seed=seed,
    )
