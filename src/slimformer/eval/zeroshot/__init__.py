"""Zero-shot multiple-choice tasks (PIQA, HellaSwag, ARC-e/-c, WinoGrande) through lm-eval.

:func:`zero_shot` runs lm-eval's own task definitions on an in-memory model and reports
the SliceGPT paper's metric per task (``acc_norm``; ``acc`` for WinoGrande) with its
standard error, plus the average. With ``tasks_data=DIR`` (or ``$SLIMFORMER_TASKS_DATA``)
the local copies in ``DIR`` (layout of ``shared/data``) replace the hub datasets.

* :mod:`.tasks` -- task definitions, argument checks, local-data conversion (torch-free).
* :mod:`.lm_eval_bridge` -- the lm-eval wiring and :func:`zero_shot` (imports torch).

The local file formats, their conversion and record counts are documented in docs/zeroshot.md.
"""

from ..._lazy import lazy_exports
from .tasks import (
    PAPER_METRIC,
    SUPPORTED_TASKS,
    TASKS,
    TASKS_DATA_ENV,
    TaskDataError,
    check_zero_shot_args,
    converted_task_file,
    load_local_task,
    parse_tasks,
    resolve_tasks_data,
    split_hellaswag_context,
)

__all__ = [
    "PAPER_METRIC", "SUPPORTED_TASKS", "TASKS", "TASKS_DATA_ENV", "TaskDataError", "check_zero_shot_args",
    "converted_task_file", "format_table", "load_local_task", "parse_tasks", "resolve_tasks_data",
    "split_hellaswag_context", "write_offline_task_configs", "zero_shot",
]

# the bridge imports torch: loaded on first use of one of its names
__getattr__, __dir__ = lazy_exports(__name__, {
    "zero_shot": ".lm_eval_bridge", "write_offline_task_configs": ".lm_eval_bridge", "format_table": ".lm_eval_bridge",
})
