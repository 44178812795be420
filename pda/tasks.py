"""The task registry: GLUE's eight tasks, and a study's own tasks built from its parameter file.

Every other module reads task facts from here, nowhere else. A study's own tasks (``custom_tasks:``
in the parameter file, ``custom_task``) are TSV folders laid out as GLUE's are; they are passed
around with the study's settings (``StudyConfig.task``), never registered globally.
"""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Mapping
from typing import Any

GLUE_LOW = ("mrpc", "rte", "stsb", "cola")
GLUE_HIGH = ("mnli", "qqp", "qnli", "sst2")
CUSTOM_GROUP = "custom"  # the override group of every task a parameter file defines
CLASSIFICATION_METRICS = ("accuracy", "f1", "f1_macro", "matthews")  # f1: the second label's, as GLUE's MRPC / QQP
REGRESSION_METRICS = ("pearson", "spearman", "pearson_spearman_mean")
CUSTOM_TASK_KEYS = ("folder", "text_columns", "label_column", "labels", "main_metric", "metrics", "header",
                    "order_free", "score_range")


@dataclasses.dataclass(frozen=True)
class TaskSpec:
    """What the loader, the model head and the metrics need to know about one GLUE task.

    ``tsv`` describes the classic ``glue_data/TASK/*.tsv`` files: the column (name,
    or index for header-less files) of each text field and of the label.
    """

    name: str
    folder: str  # directory name in glue_data/
    text_fields: tuple[str, ...]
    labels: tuple[str, ...]  # label strings as they appear in the TSV; () for regression
    metrics: tuple[str, ...]
    main_metric: str
    group: str
    dev_splits: tuple[str, ...] = ("dev",)
    tsv_header: bool = True
    tsv_text_columns: tuple[str | int, ...] = ()
    tsv_label_column: str | int = "label"
    hub_name: str = ""
    official_rows: tuple[tuple[str, int], ...] = ()  # (split, rows) of the official GLUE release
    order_free: bool = False  # a sentence pair whose label does not depend on which sentence comes first
    score_range: tuple[float, float] | None = None  # regression: the valid range of a target (STS-B: 0 to 5)

    @property
    def is_regression(self) -> bool:
        return not self.labels

    @property
    def num_labels(self) -> int:
        return 1 if self.is_regression else len(self.labels)


TASKS: dict[str, TaskSpec] = {
    "cola": TaskSpec(
        name="cola", folder="CoLA", text_fields=("sentence",), labels=("0", "1"),
        metrics=("matthews",), main_metric="matthews", group="GLUE low",
        tsv_header=False, tsv_text_columns=(3,), tsv_label_column=1, hub_name="cola",
        official_rows=(('train', 8551), ('dev', 1043)),
    ),
    "sst2": TaskSpec(
        name="sst2", folder="SST-2", text_fields=("sentence",), labels=("0", "1"),
        metrics=("accuracy",), main_metric="accuracy", group="GLUE high",
        tsv_text_columns=("sentence",), hub_name="sst2",
        official_rows=(('train', 67349), ('dev', 872)),
    ),
    "mrpc": TaskSpec(
        name="mrpc", folder="MRPC", text_fields=("sentence1", "sentence2"), labels=("0", "1"),
        metrics=("accuracy", "f1"), main_metric="f1", group="GLUE low",
        tsv_text_columns=("#1 String", "#2 String"), tsv_label_column="Quality", hub_name="mrpc",
        official_rows=(('train', 3668), ('dev', 408)),
        order_free=True,
    ),
    "qqp": TaskSpec(
        name="qqp", folder="QQP", text_fields=("question1", "question2"), labels=("0", "1"),
        metrics=("accuracy", "f1"), main_metric="f1", group="GLUE high",
        tsv_text_columns=("question1", "question2"), tsv_label_column="is_duplicate", hub_name="qqp",
        official_rows=(('train', 363846), ('dev', 40430)),
        order_free=True,
    ),
    "stsb": TaskSpec(
        name="stsb", folder="STS-B", text_fields=("sentence1", "sentence2"), labels=(),
        metrics=("pearson", "spearman", "pearson_spearman_mean"), main_metric="pearson_spearman_mean",
        group="GLUE low", tsv_text_columns=("sentence1", "sentence2"), tsv_label_column="score",
        hub_name="stsb",
        official_rows=(('train', 5749), ('dev', 1500)),
        order_free=True, score_range=(0.0, 5.0),
    ),
    "mnli": TaskSpec(
        name="mnli", folder="MNLI", text_fields=("premise", "hypothesis"),
        labels=("entailment", "neutral", "contradiction"),
        metrics=("accuracy_m", "accuracy_mm"), main_metric="accuracy_m", group="GLUE high",
        dev_splits=("dev_matched", "dev_mismatched"),
        tsv_text_columns=("sentence1", "sentence2"), tsv_label_column="gold_label", hub_name="mnli",
        official_rows=(('train', 392702), ('dev_matched', 9815), ('dev_mismatched', 9832)),
    ),
    "qnli": TaskSpec(
        name="qnli", folder="QNLI", text_fields=("question", "sentence"),
        labels=("entailment", "not_entailment"), metrics=("accuracy",), main_metric="accuracy",
        group="GLUE high", tsv_text_columns=("question", "sentence"), hub_name="qnli",
        official_rows=(('train', 104743), ('dev', 5463)),
    ),
    "rte": TaskSpec(
        name="rte", folder="RTE", text_fields=("sentence1", "sentence2"),
        labels=("entailment", "not_entailment"), metrics=("accuracy",), main_metric="accuracy",
        group="GLUE low", tsv_text_columns=("sentence1", "sentence2"), hub_name="rte",
        official_rows=(('train', 2490), ('dev', 277)),
    ),
}


def get_task(name: str, custom: Mapping[str, TaskSpec] | None = None) -> TaskSpec:
    """Look a task up by its lowercase name among GLUE's and ``custom`` (a study's own tasks, by name),
    with an error that lists the valid ones."""
    key = str(name).lower().replace("-", "")
    known = {**TASKS, **(custom or {})}
    if key not in known:
        raise ValueError(f"unknown GLUE task {name!r}; valid tasks: {sorted(known)}; or define it under "
                         "custom_tasks: in the parameter file (README, *Your own task*)")
    return known[key]


def custom_task(name: str, settings: Mapping[str, Any]) -> TaskSpec:
    """A study's own task from its ``custom_tasks:`` entry; a bad value raises a ValueError naming it.

    The data is ``FOLDER/train.tsv`` and ``FOLDER/dev.tsv`` in the study's data folder, read as GLUE's
    files are (tab-separated, no quoting). ``labels`` lists the label strings as they appear in the
    file, in the order the head numbers them; ``labels: []`` makes a regression task.
    """
    where = f"custom_tasks.{name}"
    if not isinstance(name, str) or not re.fullmatch(r"[a-z][a-z0-9_]*", name):
        raise ValueError(f"custom_tasks key {name!r} is not a valid task name: use lowercase letters, digits and "
                         "'_', starting with a letter (e.g. 'reviews')")
    if name in TASKS:
        raise ValueError(f"custom_tasks key {name!r} is a GLUE task's name; GLUE's tasks are built in "
                         f"({sorted(TASKS)}): give your task another name")
    if not isinstance(settings, Mapping):
        raise ValueError(f"{where} must be a mapping with keys {list(CUSTOM_TASK_KEYS)}, got {settings!r}")
    unknown = sorted(set(settings) - set(CUSTOM_TASK_KEYS))
    if unknown:
        raise ValueError(f"unknown key(s) {', '.join(f'{where}.{k}' for k in unknown)}; valid keys: "
                         f"{list(CUSTOM_TASK_KEYS)}")
    missing = [k for k in ("folder", "text_columns", "label_column", "labels") if k not in settings]
    if missing:
        raise ValueError(f"{where} lacks {', '.join(missing)} (e.g. folder: Reviews, text_columns: [review], "
                         "label_column: verdict, labels: [bad, good]; labels: [] for a regression task)")
    header = settings.get("header", True)
    if not isinstance(header, bool):
        raise ValueError(f"{where}.header must be true (the first line names the columns) or false, got {header!r}")
    column = (int,) if not header else (str,)
    described = "column indices (0 = first)" if not header else "column names of the header line"
    texts, label = settings["text_columns"], settings["label_column"]
    if (not isinstance(texts, list) or len(texts) not in (1, 2) or len(set(texts)) != len(texts)
            or not all(isinstance(c, column) and not isinstance(c, bool) for c in texts)):
        raise ValueError(f"{where}.text_columns must list one or two distinct {described} (one text, or a pair), "
                         f"got {texts!r}")
    if not isinstance(label, column) or isinstance(label, bool) or label in texts:
        raise ValueError(f"{where}.label_column must be one of the {described}, other than a text column, "
                         f"got {label!r}")
    folder = settings["folder"]
    if not isinstance(folder, str) or not folder or "/" in folder or "\\" in folder or folder in (".", ".."):
        raise ValueError(f"{where}.folder must name one folder inside the data folder (e.g. Reviews), got {folder!r}")
    labels = settings["labels"]
    if not isinstance(labels, list) or len(labels) == 1 or len(set(map(str, labels))) != len(labels):
        raise ValueError(f"{where}.labels must list two or more distinct label strings, or be [] for a regression "
                         f"task, got {labels!r}")
    if any(isinstance(x, bool) or not isinstance(x, (str, int)) for x in labels):
        raise ValueError(f"{where}.labels must spell the labels as the file does, got {labels!r}; quote them: YAML "
                         "reads yes / no / on / off as true / false and 1.0 as a number")
    labels = tuple(str(x) for x in labels)
    valid = REGRESSION_METRICS if not labels else CLASSIFICATION_METRICS
    default_main = "pearson_spearman_mean" if not labels else "accuracy"
    metrics = settings.get("metrics", list(REGRESSION_METRICS) if not labels else ["accuracy"])
    if not isinstance(metrics, list) or not metrics or not set(metrics) <= set(valid):
        raise ValueError(f"{where}.metrics must list some of {list(valid)}, got {metrics!r}")
    if "f1" in metrics and len(labels) != 2:
        raise ValueError(f"{where}.metrics has f1, the F1 of the second label of two; {name} has {len(labels)} "
                         f"labels: use f1_macro (the mean of every class's F1), accuracy or matthews")
    # accuracy comes with every classification task (the collapse test reads it), all three correlations with
    # every regression task
    metrics = sorted({"accuracy", *metrics}, key=CLASSIFICATION_METRICS.index) if labels else list(REGRESSION_METRICS)
    main = settings.get("main_metric", default_main)
    if main not in metrics:
        raise ValueError(f"{where}.main_metric {main!r} is not among its metrics {metrics}")
    order_free = settings.get("order_free", False)
    if not isinstance(order_free, bool) or (order_free and len(texts) != 2):
        raise ValueError(f"{where}.order_free (true: the label does not depend on which text comes first) must be "
                         f"true or false, and true only for a pair, got {order_free!r}")
    score_range = settings.get("score_range")
    if score_range is not None:
        if (labels or not isinstance(score_range, list) or len(score_range) != 2
                or not all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in score_range)
                or not score_range[0] < score_range[1]):
            raise ValueError(f"{where}.score_range must be [low, high] with low < high, for a regression task "
                             f"(labels: []), got {score_range!r}")
        score_range = (float(score_range[0]), float(score_range[1]))
    return TaskSpec(
        name=name, folder=folder, text_fields=tuple(f"text{i + 1}" if len(texts) == 2 else "text"
                                                    for i in range(len(texts))),
        labels=labels, metrics=tuple(metrics), main_metric=main, group=CUSTOM_GROUP, tsv_header=header,
        tsv_text_columns=tuple(texts), tsv_label_column=label, order_free=order_free, score_range=score_range)


def custom_tasks(settings: Mapping[str, Any] | None) -> dict[str, TaskSpec]:
    """Every task of a ``custom_tasks:`` mapping, by name."""
    if settings is None:
        return {}
    if not isinstance(settings, Mapping):
        raise ValueError(f"custom_tasks must map task names to their settings, got {settings!r}")
    return {name: custom_task(name, value) for name, value in settings.items()}


def spec_to_dict(task: TaskSpec) -> dict[str, Any]:
    """A task as JSON (a run record carries its own task's, so export and analysis need no parameter file)."""
    return json.loads(json.dumps(dataclasses.asdict(task)))


def spec_from_dict(data: Mapping[str, Any]) -> TaskSpec:
    """The inverse of ``spec_to_dict``: lists back to tuples."""
    fields = {f.name for f in dataclasses.fields(TaskSpec)}
    unknown = sorted(set(data) - fields)
    if unknown:
        raise ValueError(f"task spec has unknown fields {unknown}; known fields: {sorted(fields)}")
    return TaskSpec(**{k: tuple(tuple(x) if isinstance(x, list) else x for x in v) if isinstance(v, list) else v
                       for k, v in data.items()})
