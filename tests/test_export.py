"""ONNX exports are exact at every batch size and length, INT8 is smaller, and `python -m pda export` ships a run."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from model_kinds import KINDS, pruned, student, tiny, with_adapters
from pda import export
from pda.__main__ import main
from pda.checkpoint import MODELING_FILE, deployable_model, load_model, save_model
from pda.modeling_pda_bert import PdaBertForSequenceClassification
from pda.records import RunRecord, write_record
from pda.tasks import get_task

torch.set_num_threads(1)
SHAPES = ((1, 5), (2, 9), (4, 17), (32, 40))  # traced at (2, 9): other sizes must not be baked in


@pytest.mark.parametrize("kind", list(KINDS))
def test_onnx_equals_torch_at_several_batch_sizes_and_lengths(tmp_path: Path, kind: str) -> None:
    model = KINDS[kind][0]()
    deployable = deployable_model(model)
    path = export.export_onnx(deployable, tmp_path / "m.onnx")
    session = export.ort_session(path, threads=1)
    assert export.check_onnx(session, deployable, SHAPES) <= export.ONNX_ATOL
    assert [i.name for i in session.get_inputs()] == list(export.INPUT_NAMES)
    batch = export.example_inputs(5, 23, 100, seed=7)  # and against the training form itself
    with torch.no_grad():
        want = model(**batch).logits.numpy()
    np.testing.assert_allclose(export.session_logits(session, batch), want, atol=export.ONNX_ATOL, rtol=0)
    assert list(tmp_path.iterdir()) == [path]  # no temporary file left behind


def test_check_onnx_rejects_a_graph_that_computes_something_else(tmp_path: Path) -> None:
    deployable = deployable_model(pruned(tiny()))
    session = export.ort_session(export.export_onnx(deployable, tmp_path / "m.onnx"), threads=1)
    with torch.no_grad():
        deployable.classifier.bias.add_(0.001)  # a tenth of a per-mille: ten times the tolerance
    with pytest.raises(export.ExportMismatchError, match="differ from torch"):
        export.check_onnx(session, deployable, SHAPES)


def test_export_needs_the_deployable_form() -> None:
    with pytest.raises(TypeError, match="deployable_model"):
        export.export_onnx(tiny(), "unused.onnx")


def test_int8_weights_are_int8_and_logits_stay_close(tmp_path: Path) -> None:
    import onnx

    deployable = deployable_model(with_adapters(tiny(), via_pda=True))
    fp32 = export.export_onnx(deployable, tmp_path / "m.onnx")
    int8 = export.quantize_int8(fp32, tmp_path / "m8.onnx")
    graph = onnx.load(str(int8)).graph
    int8_weights = [t for t in graph.initializer if t.data_type == onnx.TensorProto.INT8]
    assert any(n.op_type == "MatMulInteger" for n in graph.node) and int8_weights
    batch = export.example_inputs(4, 17, 100)
    exact = export.session_logits(export.ort_session(fp32, 1), batch)
    approx = export.session_logits(export.ort_session(int8, 1), batch)
    assert 0 < np.abs(approx - exact).max() < 0.5 * np.abs(exact).max()


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    """A finished run as the pipeline leaves it: a pruned, adapted MiniLM student, its tokenizer, its record."""
    from pda.models import embedded_model_dir

    root = tmp_path_factory.mktemp("runs") / "mrpc-P+D+A-sp60-seed0"
    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_pretrained(embedded_model_dir(), num_labels=2)
    model = with_adapters(student(model), via_pda=True)
    g = torch.Generator().manual_seed(0)
    from pda.pruning import export_pruned

    export_pruned(model, {"head": (torch.rand(3, 12, generator=g) > 0.5).float(), "mha": torch.ones(3),
                          "int": (torch.rand(3, 1536, generator=g) > 0.6).float(), "ffn": torch.tensor([1.0, 0.0, 1.0])})
    save_model(model, root / "model", tokenizer=AutoTokenizer.from_pretrained(embedded_model_dir()))
    by_batch = {"1": {"latency_ms_median": 2.0, "latency_ms_iqr": 0.1, "teacher_latency_ms_median": 9.0,
                      "speedup": 4.5}}
    record = RunRecord(run_id=root.name, task="mrpc", scenario="P+D+A", prune=True, distill=True, adapters=True,
                       sparsity=0.6, seed=0, model="embedded:model", main_metric="f1", main_metric_value=81.2,
                       metrics={"accuracy": 68.4, "f1": 81.2}, params={"total": 1, "encoder": 1},
                       teacher_params={"total": 2, "encoder": 2}, teacher_bytes_on_disk=90_000_000,
                       sparsity_achieved={"encoder": 0.8, "total": 0.5},
                       backends={"ort_int8": {"device": "cpu", "threads": 2, "seq_len": 128, "by_batch": by_batch}},
                       flops={"reduction_bound": 5.0},
                       quantized={"main_metric_value": 80.1, "bytes_on_disk": 12_345_678,
                                  "speed": {"by_batch": {"32": {"speedup": 7.5}}}})
    write_record(record, root)
    return root


@pytest.fixture(scope="module")
def exported(run_dir: Path) -> Path:
    assert main(["export", str(run_dir), "--format", "onnx", "--int8", "--threads", "1"]) == 0
    return run_dir / export.EXPORT_DIR


def test_export_command_writes_a_loadable_self_contained_directory(exported: Path, run_dir: Path) -> None:
    names = {p.name for p in exported.iterdir()}
    assert {"README.md", "export.json", "config.json", "model.safetensors", MODELING_FILE, "onnx",
            "tokenizer.json"} <= names
    assert {p.name for p in (exported / "onnx").iterdir()} == {export.ONNX_FILE, export.INT8_FILE}
    assert not [p for p in run_dir.iterdir() if p.name.startswith(".")]  # no temporary directory left
    info = json.loads((exported / "export.json").read_text())
    assert info["onnx_max_abs_logit_diff"] <= export.ONNX_ATOL
    assert info["bytes"]["onnx_int8"] < 0.35 * info["bytes"]["onnx"]
    torch_model = PdaBertForSequenceClassification.from_pretrained(exported).eval()
    reference = load_model(run_dir / "model")
    batch = export.example_inputs(3, 50, torch_model.config.vocab_size)
    with torch.no_grad():
        torch.testing.assert_close(torch_model(**batch).logits, reference(**batch).logits, atol=1e-5, rtol=0)


def test_export_remeasures_dev_metrics_and_fp32_onnx_matches_torch(exported: Path, run_dir: Path) -> None:
    from pda.pipeline import evaluate

    info = json.loads((exported / "export.json").read_text())
    dev = info["dev"]
    assert dev["rows"] == {"dev": 408}  # the full MRPC dev split
    data = export.dev_data(get_task("mrpc"), run_dir / "model", None, 128)
    torch_metrics = evaluate(load_model(run_dir / "model"), data, 64, torch.device("cpu"))
    assert dev["metrics_onnx_fp32"] == pytest.approx(torch_metrics, abs=1e-9)
    assert set(dev["metrics_onnx_int8"]) == {"accuracy", "f1"}


def test_model_card_says_what_the_model_is_scores_weighs_gains_and_how_to_load_it(exported: Path) -> None:
    card = (exported / "README.md").read_text()
    info = json.loads((exported / "export.json").read_text())
    for needle in ("MRPC", "P+D+A", "CoFi pruning", "Houlsby adapters", "distilled", "| the run (torch) | 68.40 | 81.20 |",
                   "ONNX INT8 (this export)", f"{info['bytes']['onnx_int8']:,}", "| ort_int8 | 1 | 2.00 | 9.00 | 4.50x |",
                   "5.00x", "trust_remote_code=True", "onnxruntime", export.INT8_FILE,
                   "INT8 variant scored 80.10 f1 in the run, in 12,345,678 bytes, 7.50x at batch 32"):
        assert needle in card, needle


def test_model_card_without_speed_measurements_says_so() -> None:
    record = RunRecord(run_id="x", task="sst2", scenario="FT", prune=False, distill=False, adapters=False,
                       sparsity=None, seed=0, model="m", metrics={"accuracy": 80.0}).to_dict()
    card = export.model_card(record, {"bytes": {"safetensors": 1, "onnx": 2}, "onnx_max_abs_logit_diff": 0.0,
                                      "onnx_atol": 1e-4, "check_shapes": [[1, 7]]}, custom_code=False)
    assert "Not measured in this run." in card and "full fine-tuning" in card and "trust_remote_code" not in card


def test_export_command_names_a_missing_run_and_bad_numbers(tmp_path: Path, capsys) -> None:
    assert main(["export", str(tmp_path / "nope")]) == 2
    assert "has no result.json" in capsys.readouterr().err
    assert main(["export", str(tmp_path), "--threads", "0"]) == 2
    assert "--threads=0" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["export", str(tmp_path), "--format", "tflite"])


def test_removed_blocks_are_folded_into_the_layernorm_before_them(tmp_path: Path, monkeypatch) -> None:
    """Every removed block (layers 1, 2 and twice 3 here) loses its add; logits stay exact."""
    import copy

    import onnx

    from pda.modeling_pda_bert import fold_constants

    deployable = deployable_model(pruned(tiny()))
    folded = copy.deepcopy(deployable)
    assert fold_constants(folded) == 4 and fold_constants(folded) == 0  # once only
    batch = export.example_inputs(4, 17, 100)
    with torch.no_grad():
        torch.testing.assert_close(folded(**batch).logits, deployable(**batch).logits, atol=1e-6, rtol=0)
    adds = lambda path: sum(n.op_type == "Add" for n in onnx.load(str(path)).graph.node)  # noqa: E731
    with_fold = adds(export.export_onnx(deployable, tmp_path / "folded.onnx"))
    monkeypatch.setattr(export, "fold_constants", lambda model: 0)
    assert adds(export.export_onnx(deployable, tmp_path / "plain.onnx")) - with_fold == 4
    assert all(not m.folded for m in deployable.modules() if hasattr(m, "folded"))  # the export used a copy
