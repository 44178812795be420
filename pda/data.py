"""GLUE splits as `datasets.Dataset`s: from a local glue_data/ folder (TSV) or from the hub when online."""

from __future__ import annotations

import csv
from pathlib import Path

import datasets
import pandas as pd

from pda.tasks import TaskSpec

HUB_DATASET = "nyu-mll/glue"


def split_file(task: TaskSpec, data_dir: Path, split: str) -> Path:
    path = Path(data_dir) / task.folder / f"{split}.tsv"
    if not path.is_file():
        raise FileNotFoundError(
            f"{task.name}: {path} not found; data_dir must hold {task.folder}/train.tsv and "
            f"{', '.join(f'{task.folder}/{s}.tsv' for s in task.dev_splits)}"
        )
    return path


def read_tsv(task: TaskSpec, path: Path) -> datasets.Dataset:
    """Read one GLUE TSV without letting a CSV parser eat the quote characters inside sentences."""
    frame = pd.read_csv(
        path, sep="\t", quoting=csv.QUOTE_NONE, encoding="utf-8-sig", dtype=str,
        keep_default_na=False, header=0 if task.tsv_header else None,
    )
    columns = {}
    for field, column in zip(task.text_fields, task.tsv_text_columns):
        columns[field] = frame[column].tolist()
    raw_labels = frame[task.tsv_label_column].tolist()
    if task.is_regression:
        columns["label"] = [float(x) for x in raw_labels]
    else:
        index = {name: i for i, name in enumerate(task.labels)}
        bad = sorted({x for x in raw_labels if x not in index})
        if bad:
            raise ValueError(f"{path}: unexpected labels {bad[:5]}; expected {list(task.labels)}")
        columns["label"] = [index[x] for x in raw_labels]
    columns["idx"] = list(range(len(frame)))
    return datasets.Dataset.from_dict(columns)


def _hub_split(split: str) -> str:
    return {"dev": "validation", "dev_matched": "validation_matched",
            "dev_mismatched": "validation_mismatched"}.get(split, split)


def load_split(task: TaskSpec, split: str, data_dir: Path | None) -> datasets.Dataset:
    """One split (``train`` or one of ``task.dev_splits``) with columns text fields, ``label``, ``idx``."""
    if data_dir is not None:
        return read_tsv(task, split_file(task, data_dir, split))
    ds = datasets.load_dataset(HUB_DATASET, task.hub_name, split=_hub_split(split))
    return ds.select_columns([*task.text_fields, "label", "idx"])


def subsample(ds: datasets.Dataset, max_samples: int | None, seed: int) -> datasets.Dataset:
    """A seeded random subset, the same for every run with the same data seed."""
    if max_samples is None or max_samples >= len(ds):
        return ds
    return ds.shuffle(seed=seed).select(range(max_samples))


def tokenize(ds: datasets.Dataset, task: TaskSpec, tokenizer, max_length: int) -> datasets.Dataset:
    """Token ids without padding (batches are padded dynamically by the collator)."""

    def encode(batch):
        texts = [batch[field] for field in task.text_fields]
        return tokenizer(*texts, truncation=True, max_length=max_length)

    keep = {"label", "idx"}
    drop = [c for c in ds.column_names if c not in keep]
    return ds.map(encode, batched=True, remove_columns=drop, desc=None, load_from_cache_file=False)
