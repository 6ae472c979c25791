"""GLUE tasks by name: `--data glue/TASK` (HF's nyu-mll/glue) or a local folder `.../glue/TASK`
with the same splits (files named train/validation/test or as the hub names them: split_names), and
what each task means: its text columns, task type and main metric.

GLUE's test labels are hidden (-1): data.load_splits then evaluates on the validation split and
says so; the validation set used to pick the best epoch is carved out of train, as for any data.
"""

import os
from typing import NamedTuple

HUB_NAME = "nyu-mll/glue"


class GlueTask(NamedTuple):
    text_cols: tuple[str, ...]
    task: str  # classification | regression
    metric: str  # the task's headline metric (GLUE's leaderboard), picks the best epoch
    # the hub's names of the validation split (evaluated in place of the hidden test labels) and
    # of the test split; a local folder of the task may use them as file names
    validation: str = "validation"
    test: str = "test"


GLUE_TASKS = {
    "cola": GlueTask(("sentence",), "classification", "mcc"),
    "sst2": GlueTask(("sentence",), "classification", "acc"),
    "mrpc": GlueTask(("sentence1", "sentence2"), "classification", "f1_positive"),
    "qqp": GlueTask(("question1", "question2"), "classification", "f1_positive"),
    "stsb": GlueTask(("sentence1", "sentence2"), "regression", "pearson"),
    "mnli": GlueTask(("premise", "hypothesis"), "classification", "acc", "validation_matched", "test_matched"),
    "qnli": GlueTask(("question", "sentence"), "classification", "acc"),
    "rte": GlueTask(("sentence1", "sentence2"), "classification", "acc"),
    "wnli": GlueTask(("sentence1", "sentence2"), "classification", "acc"),
}


def task_of(data: str) -> str | None:
    """The GLUE task `--data` names: `glue/mrpc`, or a folder whose path ends in glue/mrpc."""
    parts = os.path.normpath(data).split(os.sep)
    if len(parts) >= 2 and parts[-2].lower() == "glue" and parts[-1].lower() in GLUE_TASKS:
        return parts[-1].lower()
    return None


def split_names(data: str) -> dict[str, list[str]]:
    """The names each split (train, validation, test) may have in `data`: its own, and for a GLUE
    task whose hub splits are named otherwise (mnli: validation_matched, test_matched) those too."""
    task = GLUE_TASKS.get(task_of(data) or "")
    names = {"train": ["train"], "validation": ["validation"], "test": ["test"]}
    if task is not None:
        for split, hub_name in (("validation", task.validation), ("test", task.test)):
            if hub_name != split:
                names[split].append(hub_name)
    return names


def is_hub_name(data: str) -> bool:
    return task_of(data) is not None and not os.path.exists(data)


def apply_defaults(args, default_text_cols: list[str], default_task: str) -> None:
    """A GLUE task's columns, task type and metric, where the flags were left at their defaults."""
    name = task_of(args.data)
    if name is None:
        return
    task = GLUE_TASKS[name]
    if args.text_col == default_text_cols:
        args.text_col = list(task.text_cols)
    if args.task == default_task:
        args.task = task.task
    if args.metric_for_best is None and args.task == task.task:
        args.metric_for_best = task.metric
