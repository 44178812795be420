"""A study's own task (``custom_tasks:``): specs, errors, overrides, fingerprints, plan, runs and export."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pda import config, export, fingerprint, pipeline
from pda.baselines import majority_baselines
from pda.data import load_split, locate_task
from pda.metrics import glue_metrics
from pda.plan import estimate_run
from pda.runs import RunSpec, run_dir
from pda.tasks import CUSTOM_GROUP, custom_task, get_task

REVIEWS = {"folder": "Reviews", "text_columns": ["review"], "label_column": "verdict", "labels": ["bad", "good"],
           "metrics": ["accuracy", "f1"], "main_metric": "f1"}
SIMILAR = {"folder": "Similar", "header": False, "text_columns": [1, 2], "label_column": 0, "labels": [],
           "score_range": [0, 5], "order_free": True}
TINY = dict(max_train_samples=32, max_eval_samples=32, max_seq_length=48,
            training={"epochs": 1, "batch_size": 16, "log_every_steps": 1},
            pruning={"epochs": 1, "finetune_epochs": 1},
            measure={"speed": False, "energy": False, "flops": False, "quantize": False})


@pytest.fixture(scope="module")
def own_data(tmp_path_factory, glue_dir) -> Path:
    """Two tasks in formats GLUE's files do not use: SST-2's sentences as 'reviews' with word labels and an
    extra column, and STS-B's pairs header-less with the score first."""
    root = tmp_path_factory.mktemp("own_data")
    for split, rows in (("train", 200), ("dev", 64)):
        sst2 = (glue_dir / "SST-2" / f"{split}.tsv").read_text().splitlines()[1:rows + 1]
        lines = ["id\treview\tverdict"] + [f"{i}\t{text}\t{'good' if label == '1' else 'bad'}"
                                           for i, (text, label) in enumerate(line.split("\t") for line in sst2)]
        (root / "Reviews").mkdir(exist_ok=True)
        (root / "Reviews" / f"{split}.tsv").write_text("\n".join(lines) + "\n")
        header, *stsb = (glue_dir / "STS-B" / f"{split}.tsv").read_text().splitlines()[:rows + 1]
        names = header.split("\t")
        cols = [names.index(c) for c in ("score", "sentence1", "sentence2")]
        (root / "Similar").mkdir(exist_ok=True)
        (root / "Similar" / f"{split}.tsv").write_text(
            "".join("\t".join(line.split("\t")[c] for c in cols) + "\n" for line in stsb))
    return root


@pytest.fixture
def own_study(make_params, own_data):
    def make(**changes):
        base = dict(TINY, tasks=["reviews", "similar"], custom_tasks={"reviews": REVIEWS, "similar": SIMILAR},
                    data_dir=str(own_data), scenarios=["FT", "P"])
        return config.load_params(make_params(**{**base, **changes}))

    return make


def test_custom_tasks_read_as_their_settings_say(own_data):
    reviews, similar = custom_task("reviews", REVIEWS), custom_task("similar", SIMILAR)
    assert (reviews.group, reviews.num_labels, reviews.main_metric, reviews.metrics) == (
        CUSTOM_GROUP, 2, "f1", ("accuracy", "f1"))
    assert similar.is_regression and similar.metrics == ("pearson", "spearman", "pearson_spearman_mean")
    train = load_split(reviews, "train", locate_task(reviews, own_data, online=False))
    assert len(train) == 200 and set(train["label"]) == {0, 1}
    assert set(train.column_names) == {"text", "label", "idx"}
    pairs = load_split(similar, "dev", locate_task(similar, own_data, online=False))
    assert len(pairs) == 64 and 0.0 <= min(pairs["label"]) and max(pairs["label"]) <= 5.0
    assert pairs["text1"][0] and pairs["text2"][0] != pairs["text1"][0]
    with pytest.raises(ValueError, match=r"unknown GLUE task 'reviews'.*custom_tasks"):
        get_task("reviews")
    assert get_task("reviews", {"reviews": reviews}) is reviews


DROP = object()  # a key the entry leaves out


@pytest.mark.parametrize("name, change, message", [
    ("mrpc", {}, r"'mrpc' is a GLUE task's name"),
    ("My-Task", {}, r"not a valid task name"),
    ("reviews", {"label": "verdict"}, r"unknown key\(s\) custom_tasks.reviews.label;.*label_column"),
    ("reviews", {"labels": DROP}, r"custom_tasks.reviews lacks labels"),
    ("reviews", {"labels": None}, r"labels must list two or more"),
    ("reviews", {"labels": ["good"]}, r"labels must list two or more"),
    ("reviews", {"labels": [True, False]}, r"quote them: YAML reads yes / no"),
    ("reviews", {"text_columns": ["review", "review"]}, r"text_columns must list one or two distinct"),
    ("reviews", {"labels": ["bad", "good", "mixed"]}, r"f1, the F1 of the second label of two.*use f1_macro"),
    ("reviews", {"main_metric": "matthews"}, r"main_metric 'matthews' is not among its metrics"),
    ("reviews", {"metrics": ["pearson"]}, r"metrics must list some of \['accuracy', 'f1', 'f1_macro', 'matthews'\]"),
    ("reviews", {"text_columns": [1]}, r"text_columns must list one or two distinct column names"),
    ("reviews", {"label_column": "review"}, r"label_column must be one of the column names"),
    ("reviews", {"folder": "../Reviews"}, r"folder must name one folder"),
    ("reviews", {"score_range": [0, 1]}, r"score_range must be \[low, high\].*regression"),
    ("reviews", {"order_free": True}, r"order_free .* true only for a pair"),
    ("similar", {"text_columns": ["a", "b"]}, r"text_columns must list one or two distinct column indices"),
])
def test_a_bad_custom_task_is_refused_naming_the_value(name, change, message):
    settings = {k: v for k, v in {**(SIMILAR if name == "similar" else REVIEWS), **change}.items() if v is not DROP}
    with pytest.raises(ValueError, match=message):
        custom_task(name, settings)


def test_a_study_of_its_own_tasks_validates_and_overrides_apply(own_study):
    study = own_study(overrides={"custom": {"training": {"learning_rate": 3.0e-5}},
                                 "reviews/FT": {"training": {"epochs": 2}}})
    assert study.tasks == ["reviews", "similar"]
    ft = config.for_run(study, "reviews", "FT", None, 0).study
    assert (ft.training.learning_rate, ft.training.epochs) == (3.0e-5, 2)
    assert config.for_run(study, "similar", "FT", None, 0).study.training.epochs == 1
    with pytest.raises(config.ConfigError, match=r"tasks lists an unknown GLUE task 'revews'.*'reviews'"):
        own_study(tasks=["revews"])
    with pytest.raises(config.ConfigError, match=r"custom_tasks cannot differ per task or group"):
        own_study(overrides={"reviews": {"custom_tasks": {}}})
    with pytest.raises(config.ConfigError, match=r"overrides key 'reveiws' is not .*'reviews'"):
        own_study(overrides={"reveiws": {"training": {"epochs": 2}}})
    for name in ("base", "custom", "sp90"):
        with pytest.raises(config.ConfigError, match=rf"custom_tasks key '{name}' is also the name of a scenario"):
            own_study(tasks=[name], custom_tasks={name: REVIEWS})
    with pytest.raises(config.ConfigError, match=r"custom_tasks.reviews.labels"):
        own_study(custom_tasks={"reviews": {**REVIEWS, "labels": ["good"]}, "similar": SIMILAR})


def test_a_label_the_settings_do_not_list_stops_the_study_naming_file_and_line(own_study, own_data, tmp_path):
    bad = tmp_path / "bad_data"
    for task in ("Reviews", "Similar"):
        (bad / task).mkdir(parents=True)
        for split in ("train", "dev"):
            (bad / task / f"{split}.tsv").write_bytes((own_data / task / f"{split}.tsv").read_bytes())
    lines = (bad / "Reviews" / "dev.tsv").read_text().splitlines()
    lines[3] = lines[3].rsplit("\t", 1)[0] + "\tneutral"
    (bad / "Reviews" / "dev.tsv").write_text("\n".join(lines) + "\n")
    with pytest.raises(config.ConfigError, match=r"Reviews/dev.tsv, line 4: label 'neutral' is not one of \['bad', 'good'\]"):
        own_study(data_dir=str(bad))


def test_a_glue_run_keeps_its_fingerprint_and_an_own_task_run_tracks_its_settings(own_study, make_params):
    plain = config.load_params(make_params(**TINY))
    mixed = own_study(tasks=["mrpc", "reviews"])  # MRPC from the repository's data/glue, after data_dir
    assert (fingerprint.fingerprint(config.for_run(plain, "mrpc", "FT", None, 0))
            == fingerprint.fingerprint(config.for_run(mixed, "mrpc", "FT", None, 0)))
    swapped = own_study(custom_tasks={"reviews": {**REVIEWS, "labels": ["good", "bad"]}, "similar": SIMILAR})
    before = config.for_run(own_study(), "reviews", "FT", None, 0)
    assert fingerprint.fingerprint(before) != fingerprint.fingerprint(config.for_run(swapped, "reviews", "FT", None, 0))
    assert fingerprint.data_files(before)["task"]["labels"] == ["bad", "good"]


def test_an_own_task_lends_its_rows_as_a_transfer_set_of_its_shape(own_study):
    study = own_study(tasks=["mrpc", "similar"], scenarios=["FT", "D"],
                      overrides={"mrpc/D": {"distill": {"transfer_tasks": ["similar"]}}})
    run = config.for_run(study, "mrpc", "D", None, 0)
    assert config.transfer_tasks_of(run) == ["similar"]
    assert fingerprint.data_files(run)["transfer"]["similar"]["task"]["tsv_text_columns"] == [1, 2]
    with pytest.raises(config.ConfigError, match=r"lists reviews, whose rows have 1 text field\(s\).*mrpc's have 2"):
        own_study(tasks=["mrpc", "reviews"], scenarios=["FT", "D"],
                  overrides={"mrpc/D": {"distill": {"transfer_tasks": ["reviews"]}}})


def test_plan_counts_an_own_task_s_rows_from_its_files(own_study):
    study = own_study(max_train_samples=None)
    assert estimate_run(study, RunSpec("reviews", "FT", None, 0)).train_rows == 200
    assert estimate_run(own_study(), RunSpec("similar", "P", 0.6, 0)).train_rows == 32


def test_own_tasks_train_prune_score_and_export_end_to_end(own_study, own_data):
    """FT and P of a classification task with word labels, FT of a header-less regression task: the metrics
    their settings name, a record that carries the task, an INT8 export scored on the task's dev rows."""
    study = own_study()
    pruned = pipeline.run(config.for_run(study, "reviews", "P", 0.6, 0), with_dependencies=True)
    teacher = json.loads((run_dir(study, "reviews-FT-seed0") / "result.json").read_text())
    assert set(pruned.metrics) == {"accuracy", "f1"} and pruned.main_metric == "f1"
    assert pruned.task_spec == teacher["task_spec"] and pruned.task_spec["labels"] == ["bad", "good"]
    assert pruned.sparsity_achieved["encoder"] == pytest.approx(0.6, abs=0.01)
    similar = pipeline.run(config.for_run(study, "similar", "FT", None, 0))
    assert set(similar.metrics) == {"pearson", "spearman", "pearson_spearman_mean"}
    baselines = majority_baselines(study.tasks, study.data_dir, False, study.max_eval_samples, study.data_seed,
                                   custom=study.own_tasks())
    assert baselines["similar"].main_metric == 0.0 and baselines["reviews"].dev_examples == 32
    out = export.export_run(run_dir(study, pruned.run_id), int8=True, data_dir=own_data, max_seq_length=48)
    info = json.loads((out / "export.json").read_text())
    assert info["dev"]["rows"] == {"dev": 64} and set(info["dev"]["metrics_onnx_fp32"]) == {"accuracy", "f1"}
    assert "for the task **REVIEWS**" in (out / "README.md").read_text()
    assert json.loads((out / "config.json").read_text())["id2label"] == {"0": "bad", "1": "good"}


def test_several_classes_score_macro_f1_over_every_class():
    task = custom_task("tickets", {"folder": "Tickets", "text_columns": ["body"], "label_column": "queue",
                                   "labels": ["billing", "bug", "other"], "metrics": ["f1_macro", "matthews"],
                                   "main_metric": "f1_macro"})
    assert task.metrics == ("accuracy", "f1_macro", "matthews")
    got = glue_metrics(task, [0, 1, 1, 1, 2, 0], [0, 0, 1, 1, 2, 2])
    assert got["f1_macro"] == pytest.approx(100 * (0.5 + 0.8 + 2 / 3) / 3, abs=1e-3)  # classes 0, 1, 2 by hand
    assert got["accuracy"] == pytest.approx(100 * 4 / 6, abs=1e-3)
    constant = glue_metrics(task, [0] * 6, [0, 0, 1, 1, 2, 2])  # the classes it never predicts count as F1 0
    assert constant["f1_macro"] == pytest.approx(100 * 0.5 / 3, abs=1e-3) and constant["matthews"] == 0.0


def test_sst2_read_as_an_own_task_scores_as_sst2(make_params):
    """The own-task path is GLUE's path: SST-2's files declared under custom_tasks give the same run."""
    as_own = {"folder": "SST-2", "text_columns": ["sentence"], "label_column": "label", "labels": ["0", "1"]}
    study = config.load_params(make_params(**TINY, tasks=["sst2", "movie_reviews"],
                                           custom_tasks={"movie_reviews": as_own}))
    glue = pipeline.run(config.for_run(study, "sst2", "FT", None, 0))
    own = pipeline.run(config.for_run(study, "movie_reviews", "FT", None, 0))
    assert own.metrics == glue.metrics and own.train_steps == glue.train_steps
