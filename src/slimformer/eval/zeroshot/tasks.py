"""Zero-shot task definitions and the conversion of local task copies to lm-eval's record form.

Torch-free and lm-eval-free at import (the CLI checks ``--tasks``/``--tasks-data`` with
:func:`check_zero_shot_args` before loading a model). docs/zeroshot.md describes the
local file layout, the record form of each task and how the conversion was checked.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

logger = logging.getLogger("slimformer.eval.zeroshot")

#: Environment variable naming the local task data directory (same layout as shared/data).
TASKS_DATA_ENV = "SLIMFORMER_TASKS_DATA"

#: Version of the local-data converters; part of the cache key of the converted files.
_CONVERTER_VERSION = 1


@dataclass(frozen=True)
class _TaskSpec:
    """A supported task: its lm-eval definition, paper metric and local files."""

    name: str
    official_yaml: str  # relative to lm_eval/tasks
    metric: str
    split: str  # split of the local copy: "validation" or "test"
    files: tuple[str, ...]  # relative to tasks_data


TASKS: dict[str, _TaskSpec] = {
    "piqa": _TaskSpec(
        "piqa", "piqa/piqa.yaml", "acc_norm", "validation", ("piqa/valid.jsonl", "piqa/valid-labels.lst")
    ),
    "hellaswag": _TaskSpec(
        "hellaswag", "hellaswag/hellaswag.yaml", "acc_norm", "validation", ("hellaswag/hellaswag_val_full.txt",)
    ),
    "arc_easy": _TaskSpec("arc_easy", "arc/arc_easy.yaml", "acc_norm", "test", ("arc/ARC-Easy-Test.jsonl",)),
    "arc_challenge": _TaskSpec(
        "arc_challenge", "arc/arc_challenge.yaml", "acc_norm", "test", ("arc/ARC-Challenge-Test.jsonl",)
    ),
    "winogrande": _TaskSpec(
        "winogrande", "winogrande/default.yaml", "acc", "validation",
        ("winogrande/winogrande_dev_llmfoundry.jsonl", "winogrande/dev-labels.lst"),
    ),
}

#: Supported user-facing task names, in the order of the SliceGPT paper's tables.
SUPPORTED_TASKS: tuple[str, ...] = tuple(TASKS)

#: The metric the SliceGPT paper reports per task.
PAPER_METRIC: dict[str, str] = {name: spec.metric for name, spec in TASKS.items()}

class TaskDataError(FileNotFoundError):
    """The local task data directory or one of its files is missing or malformed."""


# --------------------------------------------------------------------------- arguments


def parse_tasks(tasks: str | Sequence[str]) -> list[str]:
    """Normalise ``"piqa,arc_easy"`` or a list of names; reject unknown or empty lists.

    Raises:
        ValueError: an unknown task (the message lists the supported ones) or no task.
    """
    items = tasks.split(",") if isinstance(tasks, str) else list(tasks)
    names: list[str] = []
    for item in items:
        if not isinstance(item, str):
            raise ValueError(f"task names must be strings, got {item!r}")
        name = item.strip().lower()
        if not name:
            continue
        if name not in TASKS:
            raise ValueError(f"unknown task {item.strip()!r}; supported tasks: {', '.join(SUPPORTED_TASKS)}")
        if name not in names:
            names.append(name)
    if not names:
        raise ValueError(f"no task given; supported tasks: {', '.join(SUPPORTED_TASKS)}")
    return names


def _check_limit(limit: int | None) -> None:
    if limit is None:
        return
    if isinstance(limit, bool) or not isinstance(limit, int):
        raise ValueError(f"limit must be a positive integer or None, got {limit!r}")
    if limit < 1:
        raise ValueError(f"limit must be >= 1, got {limit}")


def check_zero_shot_args(
    tasks: str | Sequence[str], limit: int | None = None, batch_size: int = 8,
    tasks_data: str | os.PathLike | None = None,
) -> tuple[list[str], Path | None]:
    """Validate :func:`zero_shot` arguments before any model work.

    Returns:
        ``(task names, resolved tasks data directory or None)``.

    Raises:
        ValueError: unknown task, ``limit < 1``, ``batch_size < 1``.
        TaskDataError: missing tasks data directory or a needed file in it.
    """
    names = parse_tasks(tasks)
    _check_limit(limit)
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    data_dir = resolve_tasks_data(tasks_data)
    if data_dir is not None:
        for task in names:
            _task_files(task, data_dir)
    return names, data_dir


def resolve_tasks_data(tasks_data: str | os.PathLike | None) -> Path | None:
    """``tasks_data``, else ``$SLIMFORMER_TASKS_DATA``, else ``None`` (hub mode).

    Raises:
        TaskDataError: the directory does not exist.
    """
    if tasks_data is None:
        tasks_data = os.environ.get(TASKS_DATA_ENV) or None
    if tasks_data is None:
        return None
    path = Path(tasks_data).expanduser()
    if not path.is_dir():
        raise TaskDataError(f"tasks data directory {path} does not exist (expected the layout of shared/data)")
    return path.resolve()


def _task_files(task: str, tasks_data: Path) -> list[Path]:
    paths = [tasks_data / rel for rel in TASKS[task].files]
    for path in paths:
        if not path.is_file():
            raise TaskDataError(f"task {task} needs {path} (missing in tasks data directory {tasks_data})")
    return paths


# --------------------------------------------------------------------------- local loaders


def _read_lines(path: Path) -> list[str]:
    lines = path.read_text(encoding="utf-8").split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    return [line.rstrip("\r") for line in lines]


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    rows = []
    for i, line in enumerate(_read_lines(path), 1):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError as exc:
            raise TaskDataError(f"{path}:{i}: not valid JSON ({exc.msg})") from None
    return rows


def _read_labels(path: Path, n: int, data: Path) -> list[str]:
    labels = [line.strip() for line in _read_lines(path)]
    if len(labels) != n:
        raise TaskDataError(f"{path} has {len(labels)} labels but {data} has {n} records")
    return labels


def _load_piqa(tasks_data: Path) -> list[dict[str, Any]]:
    data, labels_file = _task_files("piqa", tasks_data)
    rows = _read_jsonl(data)
    labels = _read_labels(labels_file, len(rows), data)
    out = []
    for i, (row, label) in enumerate(zip(rows, labels, strict=True)):
        if label not in ("0", "1"):
            raise TaskDataError(f"{labels_file}:{i + 1}: label must be 0 or 1, got {label!r}")
        out.append({"goal": row["goal"], "sol1": row["sol1"], "sol2": row["sol2"], "label": int(label)})
    return out


def _load_arc(task: str, tasks_data: Path) -> list[dict[str, Any]]:
    (data,) = _task_files(task, tasks_data)
    out = []
    for i, row in enumerate(_read_jsonl(data)):
        choices = row["question"]["choices"]
        labels = [str(c["label"]) for c in choices]
        key = str(row["answerKey"])
        if key not in labels:
            raise TaskDataError(f"{data}:{i + 1}: answerKey {key!r} is not one of the labels {labels}")
        out.append({
            "id": row["id"],
            "question": row["question"]["stem"],
            "choices": {"text": [c["text"] for c in choices], "label": labels},
            "answerKey": key,
        })
    return out


# A sentence end: . ! or ? optionally followed by closing quotes/brackets, then whitespace.
_SENTENCE_END = re.compile(r"[.!?][\"')\]]*\s+")
_ENDS_SENTENCE = re.compile(r"[.!?][\"')\]]*$")


def split_hellaswag_context(ctx: str) -> tuple[str, str]:
    """Split a joined HellaSwag ``ctx`` into ``(ctx_a, ctx_b)`` (rule in docs/zeroshot.md)."""
    ctx = ctx.strip()
    if not ctx or _ENDS_SENTENCE.search(ctx):
        return ctx, ""
    ends = list(_SENTENCE_END.finditer(ctx))
    if not ends:
        return "", ctx
    cut = ends[-1]
    return ctx[: cut.end()].rstrip(), ctx[cut.end():]


def _load_hellaswag(tasks_data: Path) -> list[dict[str, Any]]:
    (data,) = _task_files("hellaswag", tasks_data)
    lines = _read_lines(data)
    if len(lines) % 6:
        raise TaskDataError(f"{data} has {len(lines)} lines, not a multiple of 6 (llama.cpp HellaSwag format)")
    out = []
    for i in range(0, len(lines), 6):
        head, label, *endings = lines[i : i + 6]
        if label.strip() not in ("0", "1", "2", "3"):
            raise TaskDataError(f"{data}:{i + 2}: label must be 0-3, got {label!r}")
        activity_label, sep, ctx = head.partition(": ")
        if not sep:
            activity_label, ctx = "", head
        ctx_a, ctx_b = split_hellaswag_context(ctx)
        out.append({
            "ind": i // 6,
            "activity_label": activity_label,
            "ctx_a": ctx_a,
            "ctx_b": ctx_b,
            "ctx": ctx,
            "endings": endings,
            "label": label.strip(),
            "split": "val",
        })
    return out


_NO_SPACE_BEFORE = tuple(".,;:!?'\")]")


def _winogrande_record(options: list[str], continuation: str, answer: str) -> dict[str, str]:
    a, b = options
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    prefix = a[:n]
    cut = max(prefix.rfind(" "), prefix.rfind("\t"), prefix.rfind("\n"))
    prefix = prefix[: cut + 1] if cut >= 0 else ""
    if "_" in prefix:
        prefix = ""
    sep = "" if continuation.startswith(_NO_SPACE_BEFORE) else " "
    return {
        "sentence": prefix + "_" + sep + continuation,
        "option1": a[len(prefix):],
        "option2": b[len(prefix):],
        "answer": answer,
    }


def _load_winogrande(tasks_data: Path) -> list[dict[str, Any]]:
    data, labels_file = _task_files("winogrande", tasks_data)
    rows = _read_jsonl(data)
    labels = _read_labels(labels_file, len(rows), data)
    choice_fn, target_fn = _lm_eval_winogrande_functions()
    out = []
    for i, (row, label) in enumerate(zip(rows, labels, strict=True)):
        options, continuation = list(row["context_options"]), row["continuation"]
        if label not in ("1", "2") or len(options) != 2:
            raise TaskDataError(f"{labels_file}:{i + 1}: label must be 1 or 2 with two options, got {label!r}")
        if "gold" in row and int(row["gold"]) + 1 != int(label):
            raise TaskDataError(f"{data}:{i + 1}: gold {row['gold']} disagrees with {labels_file.name} label {label}")
        rec = _winogrande_record(options, continuation, label)
        if choice_fn is not None and (choice_fn(rec) != options or target_fn(rec) != continuation):
            raise TaskDataError(f"{data}:{i + 1}: cannot rebuild the WinoGrande sentence of this record")
        out.append(rec)
    return out


def _lm_eval_winogrande_functions() -> tuple[Any, Any]:
    """lm-eval's own WinoGrande ``doc_to_choice``/``doc_to_target`` (None if not installed)."""
    try:
        from lm_eval.tasks.winogrande import preprocess_winogrande as pw
    except ImportError:  # pragma: no cover - lm-eval missing: zero_shot reports it
        return None, None
    return pw.doc_to_choice, pw.doc_to_target


def load_local_task(task: str, tasks_data: str | os.PathLike) -> list[dict[str, Any]]:
    """Records of ``task``'s local copy in ``tasks_data``, converted to the HF record form.

    Args:
        task: one of :data:`SUPPORTED_TASKS`.
        tasks_data: directory with the layout of ``shared/data``.

    Returns:
        The full split as a list of dicts (piqa: goal/sol1/sol2/label; arc: id/question/
        choices/answerKey; hellaswag: activity_label/ctx_a/ctx_b/ctx/endings/label;
        winogrande: sentence/option1/option2/answer), in the file's order.

    Raises:
        ValueError: unknown task. TaskDataError: missing directory/file or bad format.
    """
    (task,) = parse_tasks([task])
    path = resolve_tasks_data(tasks_data)
    assert path is not None
    if task == "piqa":
        return _load_piqa(path)
    if task == "hellaswag":
        return _load_hellaswag(path)
    if task == "winogrande":
        return _load_winogrande(path)
    return _load_arc(task, path)


# --------------------------------------------------------------------------- converted cache


def _cache_root() -> Path:
    root = os.environ.get("SLIMFORMER_CACHE")
    if root:
        return Path(root).expanduser() / "lm_eval_tasks"
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "slimformer" / "lm_eval_tasks"


def _write_atomic(path: Path, text: str) -> None:
    from ...io.outputs import write_text_atomic

    path.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(path, text)


def converted_task_file(task: str, tasks_data: str | os.PathLike, cache_dir: str | os.PathLike | None = None) -> Path:
    """JSONL file with ``task``'s converted local records (written once, then reused).

    The file name holds a hash of the converter version and the source files' contents,
    so an edited source file gives a new file (and a fresh ``datasets`` cache entry).
    """
    path = resolve_tasks_data(tasks_data)
    assert path is not None
    digest = hashlib.sha256(f"{task}:{_CONVERTER_VERSION}".encode())
    for src in _task_files(task, path):
        digest.update(src.read_bytes())
    root = Path(cache_dir).expanduser() if cache_dir is not None else _cache_root()
    out = root / f"{task}-{digest.hexdigest()[:16]}.jsonl"
    if not out.is_file():
        records = load_local_task(task, path)
        _write_atomic(out, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))
        logger.info("converted %d %s records from %s to %s", len(records), task, path, out)
    return out
