"""The task registry, the TSV loader (row counts of the shared data) and GLUE metrics on known values."""

from __future__ import annotations

import pytest

from pda.data import load_split, read_tsv
from pda.metrics import glue_metrics, task_metrics
from pda.tasks import GLUE_HIGH, GLUE_LOW, TASKS, get_task

AVAILABLE = ["cola", "sst2", "mrpc", "rte", "stsb"]


def test_registry_knows_all_eight_glue_tasks_and_the_paper_groups():
    assert set(TASKS) == {"cola", "sst2", "mrpc", "qqp", "stsb", "mnli", "qnli", "rte"}
    assert set(GLUE_LOW) | set(GLUE_HIGH) == set(TASKS)
    assert all(TASKS[t].group == "GLUE low" for t in GLUE_LOW)
    assert all(TASKS[t].group == "GLUE high" for t in GLUE_HIGH)
    assert get_task("stsb").is_regression and get_task("stsb").num_labels == 1
    assert get_task("mnli").num_labels == 3 and get_task("mnli").dev_splits == ("dev_matched", "dev_mismatched")
    assert get_task("SST-2").name == "sst2"


def test_unknown_task_error_lists_valid_tasks():
    with pytest.raises(ValueError, match=r"unknown GLUE task 'mrcp'.*mrpc"):
        get_task("mrcp")


@pytest.mark.parametrize("name", AVAILABLE)
def test_shared_tsvs_load_with_official_row_counts(name, glue_dir):
    task = get_task(name)
    for split, rows in task.official_rows:
        ds = load_split(task, split, glue_dir)
        assert len(ds) == rows, f"{name}/{split}: {len(ds)} rows, official {rows}"
        assert set(ds.column_names) == {*task.text_fields, "label", "idx"}


def test_quotes_inside_sentences_survive(glue_dir):
    """A CSV parser with default quoting would merge rows at MRPC's unbalanced quotes."""
    ds = load_split(get_task("mrpc"), "dev", glue_dir)
    assert any(s.startswith('"') for s in ds["sentence2"])
    assert ds[0]["label"] in (0, 1)


def test_label_strings_map_to_registry_order(glue_dir):
    rte = load_split(get_task("rte"), "dev", glue_dir)
    assert sorted(set(rte["label"])) == [0, 1]
    assert sum(1 for x in rte["label"] if x == 0) == 146  # entailment count from the MANIFEST
    stsb = load_split(get_task("stsb"), "dev", glue_dir)
    assert 0.0 <= min(stsb["label"]) and max(stsb["label"]) <= 5.0


def test_unexpected_label_is_named(tmp_path):
    path = tmp_path / "dev.tsv"
    path.write_text("index\tsentence1\tsentence2\tlabel\n0\ta\tb\tmaybe\n")
    with pytest.raises(ValueError, match="maybe"):
        read_tsv(get_task("rte"), path)


def test_missing_split_names_expected_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="RTE/train.tsv"):
        load_split(get_task("rte"), "train", tmp_path)


def test_accuracy_and_f1_on_known_values():
    m = glue_metrics(get_task("mrpc"), [1, 1, 0, 0], [1, 0, 1, 0])
    assert m == {"accuracy": 50.0, "f1": 50.0}
    assert glue_metrics(get_task("rte"), [0, 1, 1, 0], [0, 1, 0, 0]) == {"accuracy": 75.0}


def test_matthews_on_known_value():
    m = glue_metrics(get_task("cola"), [1, 1, 1, 0], [1, 1, 0, 0])
    assert m["matthews"] == pytest.approx(100 * 2 / 12 ** 0.5, abs=1e-3)


def test_pearson_spearman_on_known_values():
    m = glue_metrics(get_task("stsb"), [1.0, 2.0, 3.0], [1.0, 3.0, 2.0])
    assert m["pearson"] == pytest.approx(50.0) and m["spearman"] == pytest.approx(50.0)
    assert m["pearson_spearman_mean"] == pytest.approx(50.0)
    assert glue_metrics(get_task("stsb"), [1, 2, 3], [2, 4, 6])["pearson"] == pytest.approx(100.0)


def test_mnli_reports_matched_and_mismatched():
    m = task_metrics(get_task("mnli"), {"dev_matched": ([0, 1], [0, 1]), "dev_mismatched": ([0, 1], [1, 1])})
    assert m == {"accuracy_m": 100.0, "accuracy_mm": 50.0}
