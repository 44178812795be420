"""The task registry, where data comes from, the TSV loader (the shipped data's rows and checksums) and GLUE metrics."""

from __future__ import annotations

import pytest

import hashlib
import math
import re

from pda.data import DataNotFoundError, DataSource, load_split, locate_task, read_tsv
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
def test_shipped_tsvs_load_with_official_row_counts(name, glue_source):
    task = get_task(name)
    for split, rows in task.official_rows:
        ds = load_split(task, split, glue_source(name))
        assert len(ds) == rows, f"{name}/{split}: {len(ds)} rows, official {rows}"
        assert set(ds.column_names) == {*task.text_fields, "label", "idx"}


def test_quotes_inside_sentences_survive(glue_source):
    """A CSV parser with default quoting would merge rows at MRPC's unbalanced quotes."""
    ds = load_split(get_task("mrpc"), "dev", glue_source("mrpc"))
    assert any(s.startswith('"') for s in ds["sentence2"])
    assert ds[0]["label"] in (0, 1)


def test_label_strings_map_to_registry_order(glue_source):
    rte = load_split(get_task("rte"), "dev", glue_source("rte"))
    assert sorted(set(rte["label"])) == [0, 1]
    assert sum(1 for x in rte["label"] if x == 0) == 146  # entailment count from the MANIFEST
    stsb = load_split(get_task("stsb"), "dev", glue_source("stsb"))
    assert 0.0 <= min(stsb["label"]) and max(stsb["label"]) <= 5.0


def test_unexpected_label_is_named(tmp_path):
    path = tmp_path / "dev.tsv"
    path.write_text("index\tsentence1\tsentence2\tlabel\n0\ta\tb\tmaybe\n")
    with pytest.raises(ValueError, match="maybe"):
        read_tsv(get_task("rte"), path)


def test_missing_split_names_expected_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="RTE/train.tsv"):
        load_split(get_task("rte"), "train", DataSource("rte", tmp_path, "test"))


def test_shipped_files_match_the_checksums_in_their_readme(glue_dir):
    """data/glue/README.md is the provenance record: every file it lists is there, byte for byte."""
    listed = re.findall(r"^([0-9a-f]{64})  (\S+\.tsv)$", (glue_dir / "README.md").read_text(), re.M)
    shipped = sorted(p.relative_to(glue_dir).as_posix() for p in glue_dir.glob("*/*.tsv"))
    assert sorted(name for _, name in listed) == shipped and len(shipped) == 10
    for digest, name in listed:
        assert hashlib.sha256((glue_dir / name).read_bytes()).hexdigest() == digest, name


def _glue_folder(root, *folders):
    for folder in folders:
        (root / folder).mkdir(parents=True)
        (root / folder / "train.tsv").write_text("x\n")
    return root


def test_data_resolution_order_parameter_then_env_then_repository(tmp_path, monkeypatch, glue_dir):
    param = _glue_folder(tmp_path / "param", "MRPC")
    env = _glue_folder(tmp_path / "env", "MRPC", "RTE")
    monkeypatch.setenv("PDA_GLUE_DIR", str(env))
    mrpc, rte, cola = (get_task(t) for t in ("mrpc", "rte", "cola"))
    assert locate_task(mrpc, param, online=False).folder == param.resolve()
    assert locate_task(rte, param, online=False).folder == env.resolve()  # per task: the first that has it
    assert locate_task(cola, param, online=False).folder == glue_dir.resolve()
    monkeypatch.delenv("PDA_GLUE_DIR")
    assert locate_task(rte, None, online=False).origin == "the repository's data/glue"


def test_a_task_found_nowhere_names_every_place_and_the_hub(tmp_path, monkeypatch):
    monkeypatch.setenv("PDA_GLUE_DIR", str(tmp_path / "env"))
    qnli = get_task("qnli")
    with pytest.raises(DataNotFoundError) as err:
        locate_task(qnli, tmp_path / "param", online=False)
    for place in ("param/QNLI", "env/QNLI", "data/glue/QNLI", "online: true", "nyu-mll/glue"):
        assert place in str(err.value)
    assert locate_task(qnli, tmp_path / "param", online=True).is_hub


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


def test_a_constant_regression_prediction_scores_zero_not_nan():
    """A collapsed STS-B model predicts one value; SciPy's NaN correlation would drop it from every mean over
    seeds (this happened: one adapter seed of three, and the table showed the other two's mean)."""
    m = glue_metrics(get_task("stsb"), [2.5, 2.5, 2.5, 2.5], [0.0, 1.0, 4.0, 5.0])
    assert m == {"pearson": 0.0, "spearman": 0.0, "pearson_spearman_mean": 0.0}
    nearly = glue_metrics(get_task("stsb"), [2.5, 2.5, 2.5, 2.6], [0.0, 1.0, 4.0, 5.0])
    assert 0.0 < nearly["pearson"] < 100.0  # not constant: a real (weak) correlation


def test_mnli_reports_matched_and_mismatched():
    m = task_metrics(get_task("mnli"), {"dev_matched": ([0, 1], [0, 1]), "dev_mismatched": ([0, 1], [1, 1])})
    assert m == {"accuracy_m": 100.0, "accuracy_mm": 50.0}


def test_swapped_pairs_add_each_pair_the_other_way_round_under_ids_no_other_row_has():
    import datasets

    from pda.data import with_swapped_pairs

    rows = datasets.Dataset.from_dict({"sentence1": ["a", "b"], "sentence2": ["x", "y"], "label": [1, 0],
                                       "idx": [3, 7]})
    both = with_swapped_pairs(rows, get_task("mrpc"), offset=10)
    assert both["sentence1"] == ["a", "b", "x", "y"] and both["sentence2"] == ["x", "y", "a", "b"]
    assert both["label"] == [1, 0, 1, 0] and both["idx"] == [3, 7, 13, 17]
    with pytest.raises(ValueError, match="rte's label depends on the order"):
        with_swapped_pairs(rows, get_task("rte"), offset=10)
    with pytest.raises(ValueError, match="offset 5 must exceed every idx"):
        with_swapped_pairs(rows, get_task("mrpc"), offset=5)


def test_transfer_rows_take_the_tasks_fields_a_placeholder_label_and_ids_past_every_earlier_block():
    import datasets

    from pda.data import transfer_rows

    rte = datasets.Dataset.from_dict({"sentence1": ["p", "q"], "sentence2": ["h", "i"], "label": [0, 1], "idx": [0, 4]})
    qnli = datasets.Dataset.from_dict({"question": ["w?"], "sentence": ["s"], "label": [1], "idx": [2]})
    rows = transfer_rows(get_task("mrpc"), [(get_task("rte"), rte, 10), (get_task("qnli"), qnli, 3)], first_idx=100)
    assert rows.column_names == ["sentence1", "sentence2", "label", "idx"]
    assert rows["sentence1"] == ["p", "q", "w?"] and rows["sentence2"] == ["h", "i", "s"]
    assert rows["label"] == [-1, -1, -1] and rows["idx"] == [100, 104, 112]  # QNLI's block starts past RTE's 10
    as_stsb = transfer_rows(get_task("stsb"), [(get_task("rte"), rte, 10)], first_idx=0)
    assert all(math.isnan(x) for x in as_stsb["label"])  # regression: no label is NaN, never a plausible score
    with pytest.raises(ValueError, match="cola rows have 1 text field"):
        transfer_rows(get_task("mrpc"), [(get_task("cola"), rte, 10)], first_idx=0)
    with pytest.raises(ValueError, match="full_size 3 must exceed every idx"):
        transfer_rows(get_task("mrpc"), [(get_task("rte"), rte, 3)], first_idx=0)
