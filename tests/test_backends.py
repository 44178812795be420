"""Backends: each model is timed against the reference on the same backend, and the records say exactly that."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from model_kinds import pruned, student, tiny, with_adapters
from pda import backends, export
from pda.checkpoint import deployable_model
from pda.config import BACKENDS, ConfigError, MeasureConfig, load_params

torch.set_num_threads(1)
FAST = dict(batch_sizes=[1, 4], seq_len=16, warmup=0, rounds=2, threads=1)


def test_bf16_is_timed_only_where_the_hardware_has_it(monkeypatch) -> None:
    monkeypatch.setattr(backends, "cpu_flags", lambda: {"avx2", "fma"})
    assert "amx_bf16" in backends.bf16_unsupported(torch.device("cpu"))
    monkeypatch.setattr(backends, "cpu_flags", lambda: {"avx512f", "avx512_bf16"})
    assert backends.bf16_unsupported(torch.device("cpu")) is None


def test_skeletons_are_the_reference_without_layers_and_with_one_minimal_layer() -> None:
    reference = deployable_model(tiny())
    floor, layer = backends.skeleton(reference.config, 0), backends.skeleton(reference.config, 1)
    assert len(floor.bert.encoder.layer) == 0 and len(layer.bert.encoder.layer) == 1
    sa = layer.bert.encoder.layer[0].attention.self
    assert (sa.heads, layer.bert.encoder.layer[0].intermediate.dense.out_features) == (1, 1)
    assert floor.bert.embeddings.word_embeddings.weight.shape == reference.bert.embeddings.word_embeddings.weight.shape
    batch = export.example_inputs(2, 7, 100)
    assert floor(**batch).logits.shape == reference(**batch).logits.shape


def test_only_a_model_computing_exactly_what_the_reference_does_shares_its_timing() -> None:
    reference = deployable_model(tiny(seed=0))
    assert backends.same_computation(deployable_model(tiny(seed=1)), reference)  # other weights: the same work
    assert not backends.same_computation(deployable_model(student(tiny(seed=1))), reference)  # fewer layers
    assert not backends.same_computation(deployable_model(pruned(tiny(seed=1))), reference)  # smaller blocks
    assert not backends.same_computation(deployable_model(tiny(seed=1, num_labels=2)), reference)  # another head
    assert not backends.same_computation(deployable_model(with_adapters(tiny(seed=1))), reference)  # + adapters
    other_activation = deployable_model(tiny(seed=1))
    other_activation.config.hidden_act = "relu"  # same shapes, another computation
    assert not backends.same_computation(other_activation, reference)
    relabelled = deployable_model(tiny(seed=1))
    relabelled.config.id2label = {0: "no", 1: "maybe", 2: "yes"}  # names only
    assert backends.same_computation(relabelled, reference)


def test_reference_onnx_is_exported_once_per_architecture_and_settings(tmp_path: Path) -> None:
    reference = deployable_model(tiny())
    m = MeasureConfig(**FAST)
    first = backends.reference_onnx(reference, tmp_path, m, threads=1)
    assert first.created and all(f.is_file() for f in first.files.values())
    stamps = {n: f.stat().st_mtime_ns for n, f in first.files.items()}
    again = backends.reference_onnx(deployable_model(tiny(seed=5)), tmp_path, m, threads=1)  # other weights
    assert not again.created and again.files == first.files
    assert {n: f.stat().st_mtime_ns for n, f in again.files.items()} == stamps
    other = backends.reference_onnx(reference, tmp_path, MeasureConfig(**FAST, quantize_per_channel=True), 1)
    assert other.created and other.files["reference"].parent != first.files["reference"].parent
    two_labels = backends.reference_onnx(deployable_model(tiny(num_labels=2)), tmp_path, m, threads=1)
    assert two_labels.created
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary directory left


@pytest.fixture(scope="module")
def deployment(tmp_path_factory) -> dict:
    """Every backend on a pruned student against its tiny reference, with an INT8 evaluation callback."""
    work, cache = tmp_path_factory.mktemp("work"), tmp_path_factory.mktemp("cache")
    model, reference = deployable_model(pruned(student(tiny()), first_case=2)), deployable_model(tiny())
    seen = []

    def evaluate(session) -> dict[str, float]:
        seen.append(session)
        return {"accuracy": 50.0, "f1": 40.0}

    m = MeasureConfig(**FAST, backend_rounds=1)
    out = backends.measure_deployment(model, reference, m, work, cache, evaluate, "f1")
    out["sessions_evaluated"] = seen
    out["work"] = work
    return out


def test_every_backend_is_recorded_against_the_reference_on_the_same_backend(deployment: dict) -> None:
    measured = set(deployment["backends"])
    skipped = {n.split(" ")[0] for n in deployment["notes"] if "not measured" in n}
    assert measured | skipped == set(BACKENDS) and not measured & skipped
    for name, record in deployment["backends"].items():
        assert record["threads"] == 1 and record["seq_len"] == 16
        assert record["rounds"] == (2 if name == "eager_fp32" else 1)  # backend_rounds spares the others
        assert record["runtime"].startswith("onnxruntime" if name.startswith("ort") else "torch")
        assert set(record["by_batch"]) == {"1", "4"}
        for row in record["by_batch"].values():
            assert row["speedup"] == pytest.approx(row["teacher_latency_ms_median"] / row["latency_ms_median"],
                                                   rel=1e-3)
            assert row["floor_speedup_bound"] == pytest.approx(
                row["teacher_latency_ms_median"] / row["floor_latency_ms_median"], rel=1e-3)
            assert row["floor_latency_ms_median"] > 0 and "layer_overhead_ms" in row
    assert deployment["backends"]["ort_fp32"]["max_abs_logit_diff"] <= export.ONNX_ATOL


def test_the_speed_field_is_the_eager_fp32_backend(deployment: dict) -> None:
    speed, eager = deployment["speed"], deployment["backends"]["eager_fp32"]
    for bs, row in speed["by_batch"].items():
        assert set(row) == {"latency_ms_median", "latency_ms_iqr", "throughput_median", "teacher_latency_ms_median",
                            "teacher_latency_ms_iqr", "speedup"}
        assert all(eager["by_batch"][bs][k] == v for k, v in row.items())
        assert eager["by_batch"][bs]["speedup_vs_eager_fp32_teacher"] == pytest.approx(row["speedup"], rel=1e-3)


def test_the_int8_variant_records_its_metrics_bytes_and_speed(deployment: dict) -> None:
    q = deployment["quantized"]
    assert q["backend"] == "ort_int8" and q["metrics"] == {"accuracy": 50.0, "f1": 40.0} and q["main_metric_value"] == 40.0
    assert len(deployment["sessions_evaluated"]) == 1  # the INT8 session, evaluated once
    assert 0 < q["bytes_on_disk"] < (deployment["work"] / export.ONNX_FILE).stat().st_size
    eager_teacher = deployment["backends"]["eager_fp32"]
    for bs, row in q["speed"]["by_batch"].items():
        assert row["latency_ms_median"] == deployment["backends"]["ort_int8"]["by_batch"][bs]["latency_ms_median"]
        assert row["teacher_latency_ms_median"] == eager_teacher["by_batch"][bs]["teacher_latency_ms_median"]
        assert row["speedup"] == pytest.approx(row["teacher_latency_ms_median"] / row["latency_ms_median"], rel=1e-3)
    assert set(deployment["deploy_time_s"]) >= {"export_s", "quantize_s", "benchmark_s", "evaluate_s", "total_s"}


def test_only_the_chosen_backends_run_and_nothing_onnx_without_them(tmp_path: Path) -> None:
    model, reference = deployable_model(pruned(tiny())), deployable_model(tiny())
    m = MeasureConfig(**FAST, backends=["eager_fp32"], quantize=False)
    out = backends.measure_deployment(model, reference, m, tmp_path / "w", tmp_path / "c")
    assert set(out["backends"]) == {"eager_fp32"} and out["quantized"] is None
    assert not (tmp_path / "c").exists() and "export_s" not in out["deploy_time_s"]


@pytest.mark.parametrize("measure, message", [
    ({"backends": ["eager_fp32", "tensorrt"]}, "unknown backend.*tensorrt.*valid"),
    ({"backends": ["ort_fp32"]}, "must include 'eager_fp32'"),
    ({"backends": ["eager_fp32", "eager_fp32"]}, "twice"),
    ({"backends": []}, "non-empty"),
    ({"quantize_ops": ["Conv"]}, "quantize_ops.*MatMul"),
    ({"quantize": "yes"}, "quantize='yes' must be true or false"),
    ({"rounds": 0}, "rounds"),
    ({"backend_rounds": 0}, "backend_rounds"),
])
def test_bad_measure_settings_are_rejected_by_name(make_params, measure: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_params(make_params(measure=measure))


def test_a_task_override_is_checked_too(make_params) -> None:
    with pytest.raises(ConfigError, match=r"overrides\[mrpc\]: measure.backends.*eager_fp32"):
        load_params(make_params(overrides={"mrpc": {"measure": {"backends": ["ort_int8"]}}}))
