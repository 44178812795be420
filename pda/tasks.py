"""The GLUE task registry: every other module reads task facts from here, nowhere else."""

from __future__ import annotations

import dataclasses

GLUE_LOW = ("mrpc", "rte", "stsb", "cola")
GLUE_HIGH = ("mnli", "qqp", "qnli", "sst2")


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
        order_free=True,
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


def get_task(name: str) -> TaskSpec:
    """Look a task up by its lowercase GLUE name, with an error that lists the valid ones."""
    key = str(name).lower().replace("-", "")
    if key not in TASKS:
        raise ValueError(f"unknown GLUE task {name!r}; valid tasks: {sorted(TASKS)}")
    return TASKS[key]
