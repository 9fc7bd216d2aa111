"""Zero-shot multiple-choice tasks (PIQA, HellaSwag, ARC-e/-c, WinoGrande) through lm-eval.

:func:`zero_shot` wraps an in-memory model and tokenizer in lm-eval's ``HFLM`` and runs
lm-eval's evaluator on the tasks the SliceGPT paper reports. Per task it reports the
paper's metric (``acc_norm`` for piqa, hellaswag, arc_easy, arc_challenge; ``acc`` for
winogrande) with its standard error and the number of examples, plus their average.

Hub mode (``tasks_data=None`` and ``SLIMFORMER_TASKS_DATA`` unset): the standard lm-eval
tasks ``piqa``, ``hellaswag``, ``arc_easy``, ``arc_challenge`` and ``winogrande`` are run
unchanged (their datasets come from the Hugging Face hub).

Offline mode (``tasks_data=DIR``): the local copies in ``DIR`` (layout of
``shared/data``, see below) are converted to the Hugging Face record form of each task's
dataset and written as JSON Lines to a cache directory (``$SLIMFORMER_CACHE`` or
``~/.cache/slimformer``, under ``lm_eval_tasks/``, keyed by the content of the source
files). For every task a YAML config ``slimformer_<task>.yaml`` is generated in a
temporary directory that is handed to ``TaskManager(include_path=...)``. Each config is

.. code-block:: yaml

    include: <site-packages>/lm_eval/tasks/<task>/<official>.yaml
    task: slimformer_<task>
    dataset_path: json
    dataset_name: null
    dataset_kwargs: {data_files: {<split>: <cache>/<task>-<hash>.jsonl},
                     cache_dir: <cache>/hf_datasets}
    training_split: null
    validation_split: <split or null>
    test_split: <split or null>

so prompts (``doc_to_text``), choices (``doc_to_choice``), targets (``doc_to_target``),
``process_docs`` (HellaSwag) and the metrics (``acc`` / ``acc_norm``) are exactly those of
the installed lm-eval's own task definitions; only the dataset location changes. The
lm-eval task names carry the ``slimformer_`` prefix so they never shadow the hub tasks;
the user-facing names (and the keys of the result) stay ``piqa`` etc. While the offline
tasks run, ``HF_DATASETS_OFFLINE`` / ``HF_HUB_OFFLINE`` are set, so nothing tries the
network.

Local files and their conversion to the HF record form (``<DIR>/...``):

* **piqa** -- ``piqa/valid.jsonl`` (goal, sol1, sol2) + ``piqa/valid-labels.lst`` (one
  ``0``/``1`` per line): the label of line *i* becomes the integer ``label`` of record *i*
  (HF ``piqa`` validation form: goal, sol1, sol2, label). 1,838 records.
* **arc_easy / arc_challenge** -- ``arc/ARC-Easy-Test.jsonl`` /
  ``arc/ARC-Challenge-Test.jsonl`` (original AI2 form ``{"id", "question": {"stem",
  "choices": [{"text", "label"}]}, "answerKey"}``): flattened to the HF ``ai2_arc`` form
  ``{"id", "question": stem, "choices": {"text": [...], "label": [...]}, "answerKey"}``.
  Numeric answer keys (``"1"``-``"4"``) are kept as they are, as in the HF dataset: the
  lm-eval target ``choices.label.index(answerKey)`` maps a key to its choice index by
  label position, for letters and digits alike (the converter checks that every key is
  one of its record's labels). 2,376 / 1,172 records (test split).
* **hellaswag** -- ``hellaswag/hellaswag_val_full.txt`` (llama.cpp format, 6 lines per
  example: ``activity_label + ": " + ctx``, gold label, 4 endings; text already cleaned
  like lm-eval's ``preprocess``): turned into HF ``hellaswag`` records
  ``{"ind", "activity_label", "ctx_a", "ctx_b", "ctx", "endings", "label", "split"}`` so
  that lm-eval's own ``process_docs`` builds ``query``/``choices``/``gold``. The file keeps
  HF's joined ``ctx = ctx_a + " " + ctx_b``, whereas lm-eval uses
  ``ctx_a + " " + ctx_b.capitalize()``; the split is recovered as in the dataset's own
  definition (ctx_b is the trailing incomplete noun phrase of ActivityNet contexts, empty
  for WikiHow): when the context does not end with ``.``/``!``/``?`` (optionally followed
  by a closing quote or bracket), ``ctx_b`` is the text after the last sentence end and
  ``ctx_a`` the text before it; otherwise ``ctx_b = ""``. In this file exactly the 3,243
  ActivityNet examples (173 activity labels, every fragment lower-case, e.g. "the lady")
  have such a fragment and none of the 6,799 WikiHow examples does; on the ten
  published first rows of ``hellaswag_val.jsonl`` this gives lm-eval's exact query (e.g.
  ``"Roof shingle removal: A man is sitting on a roof. He"``). lm-eval's ``preprocess`` is
  applied again on top of llama.cpp's cleaning; it also drops bracketed spans other than
  the WikiHow markers (2 contexts), as it does on the hub data. 10,042 records.
* **winogrande** -- ``winogrande/winogrande_dev_llmfoundry.jsonl`` (llm-foundry form
  ``{"context_options": [a, b], "continuation", "gold"}`` with
  ``context_options[i] = sentence[:blank] + option_i`` and
  ``continuation = sentence[blank + 1:].strip()``) + ``winogrande/dev-labels.lst``
  (``1``/``2``, the official answers; the converter checks ``gold + 1 == label``). The HF
  ``winogrande_xl`` form ``{"sentence", "option1", "option2", "answer"}`` is rebuilt as
  ``prefix`` = the common prefix of ``a`` and ``b`` cut back to just after its last
  whitespace,
  ``option_i = context_options[i][len(prefix):]``,
  ``sentence = prefix + "_" + (" " unless the continuation starts with punctuation) +
  continuation``, ``answer = label``. The original sentence cannot be rebuilt exactly
  (e.g. when both options start with the same word), but the converter checks for every
  record that lm-eval's own ``doc_to_choice`` and ``doc_to_target`` return exactly
  ``context_options`` and ``continuation``, i.e. the scored strings are the official ones.
  1,267 records (dev = HF validation).

The evaluation uses ``lm_eval.evaluator.evaluate`` on the tasks loaded by a
``TaskManager`` with ``num_fewshot = 0`` and the seeds set as ``simple_evaluate`` would;
``simple_evaluate`` itself is not used because its result post-processing queries the
hub for the model's sha, runs ``git describe`` in the working directory and collects the
system environment, none of which applies to an in-memory model.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import os
import random
import re
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

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

_OFFLINE_PREFIX = "slimformer_"


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
    """Split a joined HellaSwag ``ctx`` into ``(ctx_a, ctx_b)`` (see the module docstring)."""
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


# --------------------------------------------------------------------------- lm-eval wiring


def _lm_eval_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("lm_eval")
    except PackageNotFoundError:
        return "unknown"


def _import_lm_eval() -> Any:
    try:
        import lm_eval  # noqa: F401
        from lm_eval import evaluator  # noqa: F401
        from lm_eval.models.huggingface import HFLM  # noqa: F401
        from lm_eval.tasks import TaskManager  # noqa: F401
    except ImportError as exc:
        raise RuntimeError(
            f"zero-shot tasks need lm-eval >= 0.4 (pip install 'slimformer[eval]'): {exc}"
        ) from None
    import lm_eval

    return lm_eval


def _cache_root() -> Path:
    root = os.environ.get("SLIMFORMER_CACHE")
    if root:
        return Path(root).expanduser() / "lm_eval_tasks"
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "slimformer" / "lm_eval_tasks"


def _write_atomic(path: Path, text: str) -> None:
    from ..io.outputs import write_text_atomic

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


def write_offline_task_configs(
    tasks: Sequence[str], tasks_data: str | os.PathLike, out_dir: str | os.PathLike,
    cache_dir: str | os.PathLike | None = None,
) -> dict[str, str]:
    """Write ``slimformer_<task>.yaml`` configs for the local copies into ``out_dir``.

    Returns:
        ``{user task name: lm-eval task name}``.
    """
    import yaml

    lm_eval = _import_lm_eval()
    official_root = Path(lm_eval.__file__).parent / "tasks"
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    names = {}
    for task in parse_tasks(tasks):
        spec = TASKS[task]
        official = official_root / spec.official_yaml
        if not official.is_file():
            raise RuntimeError(f"lm-eval {_lm_eval_version()} has no task definition {official}")
        data_file = converted_task_file(task, tasks_data, cache_dir)
        config = {
            "include": str(official),
            "task": _OFFLINE_PREFIX + task,
            "tag": [],
            "dataset_path": "json",
            "dataset_name": None,
            # the datasets cache (arrow files, process_docs maps) lives next to the JSONL
            "dataset_kwargs": {"data_files": {spec.split: str(data_file)},
                               "cache_dir": str(data_file.parent / "hf_datasets")},
            "training_split": None,
            "validation_split": spec.split if spec.split == "validation" else None,
            "test_split": spec.split if spec.split == "test" else None,
        }
        (out / f"{_OFFLINE_PREFIX}{task}.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
        names[task] = _OFFLINE_PREFIX + task
    return names


@contextlib.contextmanager
def _hf_offline() -> Iterator[None]:
    """Set HF_DATASETS_OFFLINE / HF_HUB_OFFLINE (env and already-imported flags) temporarily."""
    saved_env = {k: os.environ.get(k) for k in ("HF_DATASETS_OFFLINE", "HF_HUB_OFFLINE")}
    flags: list[tuple[Any, str, Any]] = []
    for module_name, attr in (("datasets.config", "HF_DATASETS_OFFLINE"), ("datasets.config", "HF_HUB_OFFLINE"),
                              ("huggingface_hub.constants", "HF_HUB_OFFLINE")):
        try:
            module = __import__(module_name, fromlist=[attr])
        except ImportError:  # pragma: no cover
            continue
        if hasattr(module, attr):
            flags.append((module, attr, getattr(module, attr)))
            setattr(module, attr, True)
    os.environ.update({k: "1" for k in saved_env})
    try:
        yield
    finally:
        for module, attr, value in flags:
            setattr(module, attr, value)
        for key, value in saved_env.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@contextlib.contextmanager
def _quiet_logger(name: str, level: int = logging.ERROR) -> Iterator[None]:
    log = logging.getLogger(name)
    saved = log.level
    log.setLevel(max(level, saved))
    try:
        yield
    finally:
        log.setLevel(saved)


def _seed_everything(seed: int) -> None:
    import numpy as np

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _chance(task_obj: Any, n: int) -> float | None:
    """Mean of 1/len(choices) over the first ``n`` evaluated documents."""
    try:
        docs = task_obj.eval_docs
        sizes = [len(task_obj.doc_to_choice(docs[i])) for i in range(min(n, len(docs)))]
    except Exception:  # noqa: BLE001 - informational only
        return None
    return sum(1.0 / s for s in sizes) / len(sizes) if sizes else None


def _load_error(exc: BaseException, data_dir: Path | None) -> RuntimeError:
    where = f"local copies in {data_dir}" if data_dir is not None else "the Hugging Face hub"
    hint = "" if data_dir is not None else f"; pass --tasks-data DIR (or set {TASKS_DATA_ENV}) for local copies"
    msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return RuntimeError(f"could not load lm-eval tasks from {where}: {msg}{hint}")


def _finite(x: Any) -> float | None:
    if isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(float(x)):
        return float(x)
    return None


def zero_shot(
    model: nn.Module,
    tokenizer: Any,
    tasks: str | Sequence[str],
    limit: int | None = None,
    batch_size: int = 8,
    tasks_data: str | os.PathLike | None = None,
    device: str | torch.device | None = None,
    seed: int = 0,
) -> dict[str, Any]:
    """Zero-shot accuracy of an in-memory causal LM on lm-eval multiple-choice tasks.

    Args:
        model: a ``transformers`` causal LM instance (dense, or loaded by
            :func:`slimformer.load_model` from a compressed directory).
        tokenizer: its tokenizer.
        tasks: names from :data:`SUPPORTED_TASKS` (list or comma-separated string).
        limit: evaluate only the first ``limit`` examples of each task (``None``: all).
        batch_size: lm-eval batch size (requests per forward pass).
        tasks_data: directory with local copies of the task data (layout of
            ``shared/data``); defaults to ``$SLIMFORMER_TASKS_DATA``. ``None`` uses the
            standard lm-eval tasks and their hub datasets.
        device: move the model there first (default: leave it where it is).
        seed: seed of python/numpy/torch RNGs and of lm-eval's few-shot sampler.

    Returns:
        JSON-serialisable dict::

            {"tasks": {name: {"metric", "value", "stderr", "n", "n_total", "chance",
                              "acc", "acc_stderr", "acc_norm", "acc_norm_stderr",
                              "lm_eval_task"}},
             "average": mean of the per-task "value",
             "settings": {"tasks", "limit", "batch_size", "tasks_data", "offline",
                          "num_fewshot", "seed", "device", "lm_eval_version",
                          "metrics"}}

    Raises:
        ValueError: unknown task, ``limit < 1`` or ``batch_size < 1``.
        TaskDataError: ``tasks_data`` missing or lacking a needed file.
        RuntimeError: lm-eval missing, or a hub task that cannot be loaded.
    """
    names, data_dir = check_zero_shot_args(tasks, limit, batch_size, tasks_data)
    _import_lm_eval()
    from lm_eval import evaluator
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    if device is not None:
        model.to(device)
    was_training = model.training
    model.eval()
    try:
        with _quiet_logger("lm_eval.models.huggingface"):  # its "model is not a str" warnings are expected here
            lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size)
        with contextlib.ExitStack() as stack:
            if data_dir is not None:
                stack.enter_context(_hf_offline())
                config_dir = stack.enter_context(tempfile.TemporaryDirectory(prefix="slimformer-lm-eval-"))
                lm_names = write_offline_task_configs(names, data_dir, config_dir)
                manager = TaskManager(include_path=config_dir, include_defaults=False)
            else:
                lm_names = {t: t for t in names}
                manager = TaskManager()
            _seed_everything(seed)
            try:
                loaded = manager.load(list(lm_names.values()))
            except Exception as exc:
                raise _load_error(exc, data_dir) from exc
            for task_obj in loaded["tasks"].values():
                task_obj.set_config(key="num_fewshot", value=0)
                task_obj.set_fewshot_seed(seed=seed)
            raw = evaluator.evaluate(lm=lm, task_dict=loaded, limit=limit, log_samples=False)
    finally:
        model.train(was_training)

    results: dict[str, Any] = {}
    for task, lm_name in lm_names.items():
        metrics = raw["results"][lm_name]
        counts = raw.get("n-samples", {}).get(lm_name, {})
        n = int(counts.get("effective", 0))
        entry = {
            "metric": PAPER_METRIC[task],
            "value": _finite(metrics.get(f"{PAPER_METRIC[task]},none")),
            "stderr": _finite(metrics.get(f"{PAPER_METRIC[task]}_stderr,none")),
            "n": n,
            "n_total": int(counts.get("original", 0)),
            "chance": _chance(loaded["tasks"][lm_name], n),
            "lm_eval_task": lm_name,
        }
        for m in ("acc", "acc_norm"):
            if f"{m},none" in metrics:
                entry[m] = _finite(metrics[f"{m},none"])
                entry[f"{m}_stderr"] = _finite(metrics.get(f"{m}_stderr,none"))
        results[task] = entry
    values = [r["value"] for r in results.values()]
    average = sum(values) / len(values) if all(v is not None for v in values) else None
    return {
        "tasks": results,
        "average": average,
        "settings": {
            "tasks": names,
            "limit": limit,
            "batch_size": batch_size,
            "tasks_data": str(data_dir) if data_dir is not None else None,
            "offline": data_dir is not None,
            "num_fewshot": 0,
            "seed": seed,
            "device": str(next(model.parameters()).device),
            "lm_eval_version": _lm_eval_version(),
            "metrics": {t: PAPER_METRIC[t] for t in names},
        },
    }


def format_table(result: dict[str, Any]) -> str:
    """A small fixed-width table of a :func:`zero_shot` result."""
    rows = [("task", "metric", "value", "stderr", "n")]
    for task, r in result["tasks"].items():
        rows.append((
            task, r["metric"],
            "n/a" if r["value"] is None else f"{r['value']:.4f}",
            "" if r["stderr"] is None else f"{r['stderr']:.4f}",
            str(r["n"]),
        ))
    avg = result.get("average")
    rows.append(("average", "", "n/a" if avg is None else f"{avg:.4f}", "", ""))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = []
    for row in rows:
        cells = [cell.ljust(w) if i < 2 else cell.rjust(w) for i, (cell, w) in enumerate(zip(row, widths, strict=True))]
        lines.append("  ".join(cells).rstrip())
    return "\n".join(lines)
