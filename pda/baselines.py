"""What a model that learned nothing scores: the train set's majority class predicted for every dev example
(for regression, any constant prediction: correlation 0).

A compressed run that lands here has collapsed, whatever its size and speed; the analysis flags it.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from pda.data import load_split, locate_task, subsample
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


@dataclass(frozen=True)
class MajorityBaseline:
    """Always predicting the training set's majority class (regression: any constant), scored on the dev set
    (percent)."""

    main_metric: float  # the task's main metric (MRPC F1 81.2: F1 flatters a constant "paraphrase"; STS-B 0)
    accuracy: float | None  # None for regression
    dev_examples: int  # what a test of "better than this" has to go on


def majority_baselines(tasks: Sequence[str], data_dir: str | None, online: bool, max_eval_samples: int | None = None,
                       data_seed: int = 0, custom: Mapping[str, TaskSpec] | None = None) -> dict[str, MajorityBaseline]:
    """Task -> its majority-class baseline (regression: a constant prediction, correlation 0), for every task
    found, scored on the dev rows the runs are scored on (``max_eval_samples`` and ``data_seed`` as in the study).
    ``custom``: the study's own tasks (``StudyConfig.own_tasks``)."""
    out: dict[str, MajorityBaseline] = {}
    for name in tasks:
        task = get_task(name, custom)
        source = locate_task(task, data_dir, online)
        dev = {split: list(subsample(load_split(task, split, source), max_eval_samples, data_seed)["label"])
               for split in task.dev_splits}
        if task.is_regression:
            out[name] = MajorityBaseline(0.0, None, len(dev[task.dev_splits[0]]))
            continue
        train = list(load_split(task, "train", source)["label"])
        metrics = majority_metrics(task, train, dev)
        value = metrics.get(task.main_metric)
        first = task.dev_splits[0]  # MNLI: matched, as the runs' accuracy the collapse test reads
        accuracy = metrics.get("accuracy", metrics.get("accuracy_m"))
        if value is not None and not math.isnan(value) and accuracy is not None:
            out[name] = MajorityBaseline(value, accuracy, len(dev[first]))
    return out
