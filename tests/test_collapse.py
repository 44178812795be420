"""The majority-class baseline (computed by hand) and the collapse check that flags runs sitting on it."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from pda import analysis
from pda.baselines import majority_main_metrics, majority_metrics
from pda.records import RunRecord, write_record
from pda.tasks import get_task


def test_majority_metrics_by_hand() -> None:
    # MRPC: training majority is 1 ("paraphrase"); on dev [1, 1, 0, 1, 0] the constant 1 is right 3 times:
    # accuracy 60 %, precision 3/5, recall 1, F1 = 2 * 0.6 / 1.6 = 75 %.
    mrpc = majority_metrics(get_task("mrpc"), [1, 1, 0], {"dev": [1, 1, 0, 1, 0]})
    assert mrpc == pytest.approx({"accuracy": 60.0, "f1": 75.0})
    # CoLA: a constant prediction has Matthews 0 whatever the labels; the majority here is 0.
    cola = majority_metrics(get_task("cola"), [0, 0, 1], {"dev": [1, 0, 0, 0]})
    assert cola == pytest.approx({"matthews": 0.0, "accuracy": 75.0})
    assert majority_metrics(get_task("stsb"), [1.0, 2.0], {"dev": [3.0]}) == {}
    with pytest.raises(ValueError, match="mrpc: no training labels"):
        majority_metrics(get_task("mrpc"), [], {"dev": [1]})


def test_majority_main_metrics_on_the_shipped_data(glue_dir: Path) -> None:
    got = majority_main_metrics(["mrpc", "sst2", "cola", "stsb"], str(glue_dir), online=False)
    # MRPC dev: 279 of 408 are paraphrases -> F1 = 2 * 279 / (408 + 279); SST-2 dev: 444 of 872 positive.
    assert got["mrpc"] == pytest.approx(100 * 2 * 279 / (408 + 279), abs=1e-3)
    assert got["sst2"] == pytest.approx(100 * 444 / 872, abs=1e-3)
    assert got["cola"] == 0.0
    assert "stsb" not in got


def record(run_id: str, task: str, scenario: str, value: float, sparsity: float | None = None) -> RunRecord:
    return RunRecord(run_id=run_id, task=task, scenario=scenario, prune=sparsity is not None, distill="D" in scenario,
                     adapters="A" in scenario.replace("base", ""), sparsity=sparsity, seed=0, model="m",
                     main_metric="f1", main_metric_value=value, metrics={"f1": value})


def test_collapse_table_flags_runs_at_the_majority_class(tmp_path: Path) -> None:
    runs = [record("mrpc-FT", "mrpc", "FT", 87.0), record("mrpc-P60", "mrpc", "P", 84.0, 0.6),
            record("mrpc-P90", "mrpc", "P", 81.6, 0.9), record("mrpc-D", "mrpc", "D", 80.0),
            record("rte-FT", "rte", "FT", 53.5), record("rte-P60", "rte", "P", 52.7, 0.6)]
    frame = analysis.records_frame(runs)
    table = analysis.collapse_table(frame, {"mrpc": 81.2, "rte": 52.7})
    verdict = dict(zip(table["run"], table["collapsed to the majority class"]))
    assert verdict == {"mrpc-P60": "no", "mrpc-P90": "yes", "mrpc-D": "yes",  # 0.4 above, and below, the floor
                       "rte-P60": "teacher not above the majority class"}  # 53.5 is not 2 points above 52.7
    assert "mrpc-FT" not in verdict  # the teacher is the reference, not a candidate
    assert list(table["run"]) == ["mrpc-D", "mrpc-P60", "mrpc-P90", "rte-P60"]  # the paper's task and recipe order
    assert analysis.collapse_table(frame, {}).empty

    for r in runs:
        write_record(r, tmp_path / "runs" / r.run_id)
    report = analysis.write_report(tmp_path / "runs", tmp_path / "report.md", majority={"mrpc": 81.2, "rte": 52.7})
    text = report.read_text()
    assert "## Runs at the majority class" in text and "2 of 4 run(s) other than FT collapsed: `mrpc-D`, `mrpc-P90`" in text
    assert "majority class" not in analysis.write_report(tmp_path / "runs", tmp_path / "plain.md").read_text()
