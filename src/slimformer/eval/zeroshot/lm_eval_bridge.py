"""The lm-eval bridge: run the zero-shot tasks on an in-memory model with lm-eval's own definitions.

Hub mode runs lm-eval's standard tasks unchanged; offline mode (``tasks_data``) points
generated ``slimformer_<task>`` configs, which ``include`` the installed lm-eval task
YAMLs, at the converted local records (:mod:`.tasks`). ``lm_eval.evaluator.evaluate``
is used rather than ``simple_evaluate``, whose post-processing queries the hub, runs
``git describe`` and collects the environment. Details: docs/zeroshot.md.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import random
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .tasks import (
    PAPER_METRIC,
    TASKS,
    TASKS_DATA_ENV,
    check_zero_shot_args,
    converted_task_file,
    parse_tasks,
)

_OFFLINE_PREFIX = "slimformer_"


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
