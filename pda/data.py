"""GLUE splits as `datasets.Dataset`s: from a local glue_data/ folder (TSV) or from the hub when online.

Where a task's data comes from is decided in one place, ``locate_task``, used by runs, notebooks,
tests and ``plan`` alike. Per task, the first hit wins: ``data_dir`` of the parameter file, then
``$PDA_GLUE_DIR``, then the repository's own ``data/glue`` (CoLA, SST-2, MRPC, RTE, STS-B ship
with the project), then the hub (``nyu-mll/glue``) when ``online``; otherwise an error names
every place it looked.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

from typing import TYPE_CHECKING

from pda.tasks import TaskSpec
from pda.validate import DataError, parse_tsv

if TYPE_CHECKING:  # datasets takes ~2 s to import; config and fingerprints only need locate_task
    import datasets

HUB_DATASET = "nyu-mll/glue"
GLUE_DIR_ENV = "PDA_GLUE_DIR"
REPO_GLUE_DIR = Path(__file__).resolve().parent.parent / "data" / "glue"


class DataNotFoundError(FileNotFoundError):
    """No source holds a task's data; the message lists every place that was looked at."""


@dataclasses.dataclass(frozen=True)
class DataSource:
    """Where one task's splits come from: a ``glue_data/``-style folder, or the hub (``folder`` None)."""

    task: str
    folder: Path | None
    origin: str  # which rule found it, e.g. "PDA_GLUE_DIR" or "the repository's data/glue"

    @property
    def is_hub(self) -> bool:
        return self.folder is None

    def describe(self) -> str:
        return f"hub {HUB_DATASET}" if self.is_hub else f"{self.folder} ({self.origin})"


def candidate_folders(data_dir: str | os.PathLike | None) -> list[tuple[str, Path]]:
    """The local folders to look in, in order: parameter, environment variable, the repository's copy."""
    found = []
    if data_dir:
        found.append(("data_dir in the parameter file", Path(data_dir).expanduser()))
    env = os.environ.get(GLUE_DIR_ENV)
    if env:
        found.append((GLUE_DIR_ENV, Path(env).expanduser()))
    found.append(("the repository's data/glue", REPO_GLUE_DIR))
    return found


def locate_task(task: TaskSpec, data_dir: str | os.PathLike | None, online: bool) -> DataSource:
    """The first source that holds ``task``: a folder with ``TASK/train.tsv``, else the hub when ``online``."""
    looked = []
    for origin, folder in candidate_folders(data_dir):
        if (folder / task.folder / "train.tsv").is_file():
            return DataSource(task.name, folder.resolve(), origin)
        looked.append(f"{folder / task.folder} ({origin})")
    if online:
        return DataSource(task.name, None, "online: true")
    raise DataNotFoundError(
        f"{task.name}: no {task.folder}/train.tsv in " + "; ".join(looked)
        + f". Point data_dir or {GLUE_DIR_ENV} at a glue_data/-style folder that has {task.folder}/, "
        f"or set online: true to load {HUB_DATASET} from the hub")


def split_file(task: TaskSpec, data_dir: Path, split: str) -> Path:
    path = Path(data_dir) / task.folder / f"{split}.tsv"
    if not path.is_file():
        raise FileNotFoundError(
            f"{task.name}: {path} not found; data_dir must hold {task.folder}/train.tsv and "
            f"{', '.join(f'{task.folder}/{s}.tsv' for s in task.dev_splits)}"
        )
    return path


def read_tsv(task: TaskSpec, path: Path) -> datasets.Dataset:
    """Read one GLUE TSV strictly (``pda.validate.parse_tsv``); a malformed file raises, naming file and line."""
    table = parse_tsv(task, path)
    if table.problems:
        raise DataError("\n".join(table.problems))
    columns: dict[str, list] = dict(table.texts)
    if task.is_regression:
        columns["label"] = [float(x) for x in table.labels]
    else:
        index = {name: i for i, name in enumerate(task.labels)}
        columns["label"] = [index[x] for x in table.labels]
    columns["idx"] = list(range(table.rows))
    import datasets

    return datasets.Dataset.from_dict(columns)


def _hub_split(split: str) -> str:
    return {"dev": "validation", "dev_matched": "validation_matched",
            "dev_mismatched": "validation_mismatched"}.get(split, split)


def load_split(task: TaskSpec, split: str, source: DataSource) -> datasets.Dataset:
    """One split (``train`` or one of ``task.dev_splits``) with columns text fields, ``label``, ``idx``."""
    if not source.is_hub:
        return read_tsv(task, split_file(task, source.folder, split))
    import datasets

    ds = datasets.load_dataset(HUB_DATASET, task.hub_name, split=_hub_split(split))
    return ds.select_columns([*task.text_fields, "label", "idx"])


def subsample(ds: datasets.Dataset, max_samples: int | None, seed: int) -> datasets.Dataset:
    """A seeded random subset, the same for every run with the same data seed."""
    if max_samples is None or max_samples >= len(ds):
        return ds
    return ds.shuffle(seed=seed).select(range(max_samples))


def with_swapped_pairs(ds: datasets.Dataset, task: TaskSpec, offset: int) -> datasets.Dataset:
    """``ds`` followed by each of its pairs in the other order, as rows ``idx + offset``.

    For tasks whose label does not depend on the order (``task.order_free``): a paraphrase is a
    paraphrase either way round, so a small training set doubles without new labels. ``offset`` (the full
    split's row count) keeps every row's ``idx`` unique and the same in every subset, so per-row
    caches (the teacher's logits) stay valid.
    """
    if not task.order_free:
        raise ValueError(f"{task.name}'s label depends on the order of its sentences; swapping them is valid only "
                         "for order-free pair tasks (TaskSpec.order_free)")
    if len(ds) and max(ds["idx"]) >= offset:
        raise ValueError(f"offset {offset} must exceed every idx (largest {max(ds['idx'])})")
    first, second = task.text_fields
    swapped = ds.map(lambda row: {first: row[second], second: row[first], "idx": row["idx"] + offset},
                     desc=None, load_from_cache_file=False)
    import datasets

    return datasets.concatenate_datasets([ds, swapped])


def transfer_rows(task: TaskSpec, sources: list[tuple[TaskSpec, datasets.Dataset, int]], first_idx: int
                  ) -> datasets.Dataset:
    """Other tasks' training inputs as unlabelled rows of ``task``: a transfer set for its teacher to label.

    ``sources`` holds, per other task, its rows (all or a subset) and its full training split's size.
    Text fields are renamed to ``task``'s, in order; the label is a placeholder (-1, or NaN for a
    regression task) that ``pda.pipeline.label_transfer_rows`` replaces with the teacher's. The k-th
    task's rows take ``idx + first_idx + sizes of the tasks before it``: unique, past the task's own rows
    (``first_idx``), and the same in every subset, so the per-row teacher-logit cache stays valid.
    """
    import datasets

    parts, offset = [], first_idx
    for other, rows, full_size in sources:
        if len(other.text_fields) != len(task.text_fields):
            raise ValueError(f"{other.name} rows have {len(other.text_fields)} text field(s), {task.name}'s "
                             f"{len(task.text_fields)}: they cannot stand in for {task.name}'s inputs")
        if len(rows) and max(rows["idx"]) >= full_size:
            raise ValueError(f"{other.name}: full_size {full_size} must exceed every idx (largest {max(rows['idx'])})")
        columns = {mine: rows[theirs] for theirs, mine in zip(other.text_fields, task.text_fields)}
        columns["label"] = [float("nan") if task.is_regression else -1] * len(rows)
        columns["idx"] = [i + offset for i in rows["idx"]]
        parts.append(datasets.Dataset.from_dict(columns))
        offset += full_size
    return datasets.concatenate_datasets(parts)


def tokenize(ds: datasets.Dataset, task: TaskSpec, tokenizer, max_length: int) -> datasets.Dataset:
    """Token ids without padding (batches are padded dynamically by the collator)."""

    def encode(batch):
        texts = [batch[field] for field in task.text_fields]
        return tokenizer(*texts, truncation=True, max_length=max_length)

    keep = {"label", "idx"}
    drop = [c for c in ds.column_names if c not in keep]
    return ds.map(encode, batched=True, remove_columns=drop, desc=None, load_from_cache_file=False)
