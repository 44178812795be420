"""What a model that learned nothing scores: the train set's majority class predicted for every dev example.

A compressed run that lands here has collapsed, whatever its size and speed; the analysis flags it.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence

import numpy as np

from pda.data import load_split, locate_task
from pda.metrics import task_metrics
from pda.tasks import TaskSpec, get_task


def majority_metrics(task: TaskSpec, train_labels: Sequence, dev_labels: dict[str, Sequence]) -> dict[str, float]:
    """GLUE metrics of always predicting the most frequent training label; ``{}`` for regression
    (a constant prediction has no correlation to report)."""
    if task.is_regression:
        return {}
    if len(train_labels) == 0:
        raise ValueError(f"{task.name}: no training labels to take the majority class from")
    majority = Counter(int(y) for y in train_labels).most_common(1)[0][0]
    per_split = {split: (np.full(len(refs), majority), np.asarray(refs)) for split, refs in dev_labels.items()}
    return task_metrics(task, per_split)


def majority_main_metrics(tasks: Sequence[str], data_dir: str | None, online: bool) -> dict[str, float]:
    """Task -> the majority-class baseline's main metric (percent), for every classification task found."""
    out: dict[str, float] = {}
    for name in tasks:
        task = get_task(name)
        if task.is_regression:
            continue
        source = locate_task(task, data_dir, online)
        train = list(load_split(task, "train", source)["label"])
        dev = {split: list(load_split(task, split, source)["label"]) for split in task.dev_splits}
        value = majority_metrics(task, train, dev).get(task.main_metric)
        if value is not None and not math.isnan(value):
            out[name] = value
    return out
