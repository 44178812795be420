"""Deployable exports: exact ONNX with dynamic batch and length, ONNX Runtime INT8, and a model card."""

from __future__ import annotations

import contextlib
import copy
import json
import logging
import os
import shutil
import tempfile
import uuid
import warnings
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from pda.modeling_pda_bert import PdaBertForSequenceClassification, fold_constants
from pda.tasks import TaskSpec, get_task, spec_from_dict

INPUT_NAMES = ("input_ids", "attention_mask", "token_type_ids")
OUTPUT_NAME = "logits"
OPSET = 17
ONNX_ATOL = 1e-4
# (batch size, sequence length) pairs an export is checked at; odd sizes catch shapes baked in at trace time
CHECK_SHAPES = ((1, 7), (3, 37), (16, 128))
EXPORT_DIR = "export"
ONNX_FILE = "model.onnx"
INT8_FILE = "model.int8.onnx"
QUANT_OPS = ("MatMul", "Gather")


class ExportMismatchError(RuntimeError):
    """The exported graph does not compute the torch model's logits."""


class _Logits(nn.Module):
    """The graph's one output: logits, from the three BERT inputs by position."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_ids: Tensor, attention_mask: Tensor, token_type_ids: Tensor) -> Tensor:
        return self.model(input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids).logits


def export_onnx(model: PdaBertForSequenceClassification, path: str | os.PathLike, opset: int = OPSET) -> Path:
    """Write ``model`` (a deployable model, see ``pda.checkpoint.deployable_model``) as ONNX to ``path``.

    The graph is made from a copy with ``fold_constants`` applied: removed blocks cost one LayerNorm.
    Inputs ``input_ids``, ``attention_mask``, ``token_type_ids`` (int64, batch x sequence, both axes
    dynamic); output ``logits``. Uses torch's TorchScript exporter (about 2 s for MiniLM here; the
    dynamo exporter took 5 to 9 s). Check the result with ``check_onnx``. Written atomically.
    """
    if not isinstance(model, PdaBertForSequenceClassification):
        raise TypeError(f"export needs a PdaBertForSequenceClassification (pda.checkpoint.deployable_model), "
                        f"got {type(model).__name__}")
    path = Path(path)
    model = copy.deepcopy(model).cpu().eval()
    fold_constants(model)
    wrapper = _Logits(model).eval()
    ids, mask, types = example_inputs(2, 9, model.config.vocab_size).values()
    axes = {name: {0: "batch", 1: "sequence"} for name in INPUT_NAMES} | {OUTPUT_NAME: {0: "batch"}}
    with _atomic_file(path) as tmp, warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation and tracer notes
        torch.onnx.export(wrapper, (ids.cpu(), mask.cpu(), types.cpu()), str(tmp), input_names=list(INPUT_NAMES),
                          output_names=[OUTPUT_NAME], dynamic_axes=axes, opset_version=opset, dynamo=False,
                          do_constant_folding=True)
    return path


def example_inputs(batch_size: int, seq_len: int, vocab_size: int, seed: int = 0) -> dict[str, Tensor]:
    """Random ids with right padding in every row but the first (which is full), and both segments used."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, max(2, vocab_size), (batch_size, seq_len), generator=g)
    lengths = torch.randint(1, seq_len + 1, (batch_size,), generator=g)
    lengths[0] = seq_len
    mask = (torch.arange(seq_len)[None, :] < lengths[:, None]).long()
    types = (torch.arange(seq_len)[None, :] >= (lengths[:, None] // 2)).long() * mask
    return {"input_ids": ids, "attention_mask": mask, "token_type_ids": types}


def check_onnx(session: Any, model: nn.Module, shapes: Sequence[tuple[int, int]] = CHECK_SHAPES,
               atol: float = ONNX_ATOL) -> float:
    """Largest |logit difference| between ONNX Runtime ``session`` and ``model`` over ``shapes``.

    Raises ``ExportMismatchError`` above ``atol``: an export is exact or it is not shipped.
    """
    vocab = model.config.vocab_size
    max_len = model.config.max_position_embeddings
    worst = 0.0
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    try:
        for bs, n in shapes:
            batch = example_inputs(bs, min(n, max_len), vocab, seed=bs * 1000 + n)
            with torch.no_grad():
                expected = model(**{k: v.to(device) for k, v in batch.items()}).logits.float().cpu().numpy()
            got = session_logits(session, batch)
            diff = float(np.abs(got - expected).max())
            worst = max(worst, diff)
            if not diff <= atol:
                raise ExportMismatchError(f"ONNX logits differ from torch by {diff:.3g} > {atol} at batch {bs}, "
                                          f"length {min(n, max_len)}")
    finally:
        model.train(was_training)
    return worst


def quantize_int8(src: str | os.PathLike, dst: str | os.PathLike, per_channel: bool = False,
                  reduce_range: bool = False, op_types: Sequence[str] = QUANT_OPS) -> Path:
    """ONNX Runtime dynamic INT8 quantization of ``src`` into ``dst`` (weights int8, activations at run time).

    ``op_types``: the operators whose weights become int8 (``MatMul``: every linear layer; ``Gather``:
    the embedding tables, most of a small BERT's bytes). Written atomically.
    """
    from onnxruntime.quantization import QuantType, quantize_dynamic

    dst = Path(dst)
    with _atomic_file(dst) as tmp, _quiet_root_logger():
        quantize_dynamic(str(src), str(tmp), op_types_to_quantize=list(op_types), per_channel=per_channel,
                         reduce_range=reduce_range, weight_type=QuantType.QInt8)
    return dst


def ort_session(path: str | os.PathLike, threads: int) -> Any:
    """A CPU ONNX Runtime session with ``threads`` intra-op threads that do not spin when idle.

    Spinning threads would steal the cores from torch timed in the same process.
    """
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.add_session_config_entry("session.inter_op.allow_spinning", "0")
    options.log_severity_level = 3
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def session_logits(session: Any, batch: Mapping[str, Any]) -> np.ndarray:
    """Run ``session`` on a batch of tensors or arrays; a missing ``token_type_ids`` is all zeros.

    Only the inputs the graph declares are fed (a graph that ignores an input has none for it).
    """
    feed = {k: _numpy(batch[k]) for k in INPUT_NAMES if k in batch}
    feed.setdefault("token_type_ids", np.zeros_like(feed["input_ids"]))
    return session.run([OUTPUT_NAME], {i.name: feed[i.name] for i in session.get_inputs()})[0]


class OrtRunner:
    """An ONNX Runtime session timed like a model (see ``pda.measure.Runner``).

    ``min_warmup``: ONNX Runtime records a memory plan on the first call with a new input shape and
    allocates it on the second (fresh pages: measured here, a 90 %-pruned model's second call at batch
    32 took 150 ms among a task's sessions against 34 ms from the third on), so two untimed calls per
    shape come before any timed one.
    """

    min_warmup = 2

    def __init__(self, session: Any, vocab_size: int) -> None:
        self.session, self.vocab_size = session, vocab_size
        self.device = torch.device("cpu")

    def __call__(self, batch: Mapping[str, Tensor]) -> np.ndarray:
        return session_logits(self.session, batch)


def predict_session(session: Any, loader: Iterable[Mapping[str, Tensor]]) -> tuple[np.ndarray, np.ndarray]:
    """Logits and labels of ``session`` over a whole loader (as ``pda.train.predict`` for torch)."""
    logits, labels = [], []
    for batch in loader:
        logits.append(session_logits(session, batch))
        labels.append(_numpy(batch["labels"]))
    return np.concatenate(logits), np.concatenate(labels)


def evaluate_session(session: Any, data: Any, batch_size: int) -> dict[str, float]:
    """GLUE metrics of ``session`` on every dev split of ``data`` (a ``pda.pipeline.TaskData``)."""
    from pda.metrics import predictions_from_logits, task_metrics
    from pda.train import make_loader

    per_split = {}
    for split, ds in data.dev.items():
        logits, labels = predict_session(session, make_loader(ds, data.tokenizer, batch_size, False, 0))
        per_split[split] = (predictions_from_logits(data.task, logits), labels)
    return task_metrics(data.task, per_split)


# ---------------------------------------------------------------- python -m pda export

def export_run(run_dir: str | os.PathLike, out_dir: str | os.PathLike | None = None, int8: bool = False,
               data_dir: str | os.PathLike | None = None, max_seq_length: int = 128, batch_size: int = 64,
               threads: int | None = None) -> Path:
    """Export a finished run's model into a self-contained directory and return it.

    ``out_dir`` (default ``RUN_DIR/export``) gets the loadable model directory (config, safetensors,
    tokenizer and, if needed, ``modeling_pda_bert.py``), ``onnx/model.onnx`` (checked against torch at
    several batch sizes and lengths), with ``int8`` also ``onnx/model.int8.onnx`` and its dev metrics
    re-measured on the task's dev split(s), ``export.json`` with what was measured, and a model card
    ``README.md``. Written into a temporary sibling and renamed into place.
    """
    from pda import checkpoint
    from pda.records import read_record
    from pda.runs import MODEL_DIR

    run_dir = Path(run_dir)
    if not (run_dir / "result.json").is_file():
        raise FileNotFoundError(f"{run_dir} has no result.json: export takes the directory of a finished run")
    record = read_record(run_dir)
    model_dir = run_dir / MODEL_DIR
    out_dir = Path(out_dir) if out_dir is not None else run_dir / EXPORT_DIR
    threads = threads or torch.get_num_threads()
    model = checkpoint.deployable_model(checkpoint.load_model(model_dir)).cpu()
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.tmp-", dir=out_dir.parent))
    try:
        tmp.chmod(0o755)
        shutil.copytree(model_dir, tmp, dirs_exist_ok=True)
        onnx_dir = tmp / "onnx"
        onnx_dir.mkdir()
        export_onnx(model, onnx_dir / ONNX_FILE)
        fp32 = ort_session(onnx_dir / ONNX_FILE, threads)
        info: dict[str, Any] = {
            "run_id": record.run_id, "opset": OPSET, "check_shapes": [list(s) for s in CHECK_SHAPES],
            "onnx_max_abs_logit_diff": check_onnx(fp32, model), "onnx_atol": ONNX_ATOL,
            "bytes": {"safetensors": _bytes(tmp / checkpoint.WEIGHTS_NAME), "onnx": _bytes(onnx_dir / ONNX_FILE)},
        }
        if int8:
            quantize_int8(onnx_dir / ONNX_FILE, onnx_dir / INT8_FILE)
            info["bytes"]["onnx_int8"] = _bytes(onnx_dir / INT8_FILE)
            info["int8"] = {"method": f"onnxruntime dynamic int8, ops {list(QUANT_OPS)}"}
            data = dev_data(record_task(record), model_dir, data_dir, max_seq_length)
            info["dev"] = {"max_seq_length": max_seq_length, "rows": {s: len(ds) for s, ds in data.dev.items()},
                           "metrics_onnx_fp32": evaluate_session(fp32, data, batch_size),
                           "metrics_onnx_int8": evaluate_session(ort_session(onnx_dir / INT8_FILE, threads),
                                                                 data, batch_size)}
        (tmp / "export.json").write_text(json.dumps(info, indent=2, sort_keys=True) + "\n", encoding="utf-8")
        card = record.to_dict()
        if record.retimed:  # timed after the study with the machine to itself (pda.retime): what the card shows
            card.update(speed=record.retimed["speed"], backends=record.retimed["backends"], speed_retimed=True)
        (tmp / "README.md").write_text(model_card(card, info, custom_code=_needs_code(tmp)),
                                       encoding="utf-8")
        checkpoint.fsync_files(tmp)
        checkpoint.replace_dir(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out_dir


def record_task(record: Any) -> TaskSpec:
    """The task a run record was scored on: GLUE's by name, a study's own from the spec the record carries."""
    return spec_from_dict(record.task_spec) if record.task_spec else get_task(record.task)


def dev_data(task: TaskSpec, model_dir: Path, data_dir: str | os.PathLike | None, max_seq_length: int) -> Any:
    """The task's full dev split(s), tokenised with the model's own tokenizer, sorted by length."""
    from transformers import AutoTokenizer

    from pda.data import load_split, locate_task, tokenize
    from pda.pipeline import TaskData, sort_by_length

    source = locate_task(task, data_dir, online=False)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    dev = {s: sort_by_length(tokenize(load_split(task, s, source), task, tokenizer, max_seq_length))
           for s in task.dev_splits}
    return TaskData(task, None, dev, tokenizer)


def model_card(record: Mapping[str, Any], info: Mapping[str, Any], custom_code: bool) -> str:
    """The exported directory's ``README.md``: what the model is, what it scores, weighs and gains, how to load it."""
    r = record
    lines = [f"# {r['run_id']}", "",
             f"A BERT classifier for {'the task' if r.get('task_spec') else 'GLUE'} **{r['task'].upper()}**, compressed with the recipe **{r['scenario']}** "
             f"({_recipe(r)}) by `pda`, from `{r['model']}`.", "", "## Dev metrics", "",
             "| where | " + " | ".join(sorted(r["metrics"])) + " |", "|---|" + "---|" * len(r["metrics"]),
             "| the run (torch) | " + " | ".join(f"{r['metrics'][k]:.2f}" for k in sorted(r["metrics"])) + " |"]
    dev = info.get("dev")
    if dev:
        for label, key in (("ONNX fp32", "metrics_onnx_fp32"), ("ONNX INT8", "metrics_onnx_int8")):
            lines.append(f"| {label} (this export) | "
                         + " | ".join(f"{dev[key].get(k, float('nan')):.2f}" for k in sorted(r["metrics"])) + " |")
        rows = ", ".join(f"{split} {n} rows" for split, n in dev["rows"].items())
        lines += ["", f"In percent. This export measured the full dev split ({rows}, truncated to "
                  f"{dev['max_seq_length']} tokens); the run measured its own dev rows."]
    q = r.get("quantized")
    if q and q.get("main_metric_value") is not None:
        speed = (q.get("speed") or {}).get("by_batch", {})
        gains = ", ".join(f"{row['speedup']:.2f}x at batch {bs}" for bs, row in speed.items() if "speedup" in row)
        lines += ["", f"Its ONNX Runtime INT8 variant scored {q['main_metric_value']:.2f} {r['main_metric']} in the run, "
                  f"in {q['bytes_on_disk']:,} bytes" + (f", {gains} over the uncompressed model in eager fp32." if gains
                                                        else ".")]
    params, teacher = r.get("params") or {}, r.get("teacher_params") or {}
    lines += ["", "## Size", "", "| | this model | uncompressed |", "|---|---|---|"]
    for key in ("total", "encoder"):
        if key in params:
            lines.append(f"| parameters ({key}) | {params[key]:,} | {teacher.get(key, 0):,} |")
    b = info["bytes"]
    lines.append(f"| bytes, safetensors | {b['safetensors']:,} | {r.get('teacher_bytes_on_disk') or 0:,} |")
    lines.append(f"| bytes, ONNX fp32 | {b['onnx']:,} | |")
    if "onnx_int8" in b:
        lines.append(f"| bytes, ONNX INT8 | {b['onnx_int8']:,} | |")
    lines += ["", "## Speed-up over the uncompressed model", "", *_speed_lines(r), "",
              "## Exactness", "",
              f"ONNX Runtime logits equal torch's within {info['onnx_max_abs_logit_diff']:.2g} (bound "
              f"{info['onnx_atol']}) at (batch, length) {info['check_shapes']}, with padding.", "",
              "## How to load", "", "With transformers (torch):", "", "```python",
              "from transformers import AutoModelForSequenceClassification, AutoTokenizer",
              "tokenizer = AutoTokenizer.from_pretrained(path)",
              "model = AutoModelForSequenceClassification.from_pretrained(path"
              + (", trust_remote_code=True)" if custom_code else ")"), "```", ""]
    if custom_code:
        lines += ["`trust_remote_code=True` runs `modeling_pda_bert.py` from this directory (torch and transformers "
                  "only): stock BERT cannot represent this model's layers. Without it, loading fails.", ""]
    lines += ["With ONNX Runtime:", "", "```python", "import onnxruntime as ort",
              "from transformers import AutoTokenizer", "tokenizer = AutoTokenizer.from_pretrained(path)",
              f"session = ort.InferenceSession(f\"{{path}}/onnx/{INT8_FILE if 'onnx_int8' in b else ONNX_FILE}\")",
              "batch = tokenizer([\"a sentence\"], return_tensors=\"np\", padding=True)",
              "logits = session.run([\"logits\"], {k: batch[k] for k in "
              "(\"input_ids\", \"attention_mask\", \"token_type_ids\")})[0]", "```", ""]
    return "\n".join(lines)


def _recipe(r: Mapping[str, Any]) -> str:
    parts = []
    if r.get("prune"):
        achieved = (r.get("sparsity_achieved") or {}).get("encoder")
        parts.append(f"CoFi pruning to {r.get('sparsity')} target sparsity"
                     + (f", {achieved:.1%} of encoder parameters removed" if achieved is not None else ""))
    if r.get("distill"):
        parts.append("distilled into a shallower student")
    if r.get("adapters"):
        parts.append("Houlsby adapters")
    return "; ".join(parts) or ("full fine-tuning" if r.get("scenario") == "FT" else "head-only probe")


def _speed_lines(r: Mapping[str, Any]) -> list[str]:
    """Speed-ups from the run record: each backend against the uncompressed model on the same backend."""
    rows = []
    backends = dict(r.get("backends") or {})
    if not backends and r.get("speed"):
        backends = {"eager_fp32": r["speed"]}
    for name, b in backends.items():
        for bs, s in sorted(b["by_batch"].items(), key=lambda kv: int(kv[0])):
            rows.append(f"| {name} | {bs} | {s['latency_ms_median']:.2f} | {s['teacher_latency_ms_median']:.2f} | "
                        f"{s['speedup']:.2f}x |")
    if not rows:
        return ["Not measured in this run."]
    flops = r.get("flops") or {}
    bound = f" The FLOP reduction, the bound for a speed-up, is {flops['reduction_bound']:.2f}x." if flops else ""
    return ["Each backend against the uncompressed model on that same backend (eager: torch; ort: ONNX Runtime).", "",
            "| backend | batch | latency ms | uncompressed ms | speed-up |", "|---|---|---|---|---|", *rows, "",
            f"Medians, measured in one process on {next(iter(backends.values())).get('device', 'the run machine')} "
            f"with {next(iter(backends.values())).get('threads', '?')} threads at length "
            f"{next(iter(backends.values())).get('seq_len', '?')}"
            + (" after the study's training, with nothing else running (`pda.retime`)" if r.get("speed_retimed")
               else " during the run, beside whatever else the machine ran then") + f".{bound}"]


def _needs_code(model_dir: Path) -> bool:
    from pda.checkpoint import MODELING_FILE

    return (model_dir / MODELING_FILE).is_file()


def _bytes(path: Path) -> int:
    return path.stat().st_size


def _numpy(value: Any) -> np.ndarray:
    return value.detach().cpu().numpy() if isinstance(value, Tensor) else np.asarray(value)


@contextlib.contextmanager
def _atomic_file(path: Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it into place only if the block succeeds."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


@contextlib.contextmanager
def _quiet_root_logger() -> Iterator[None]:
    """ONNX Runtime's quantizer logs a pre-processing hint on the root logger at every call."""
    previous = logging.root.manager.disable
    logging.disable(logging.WARNING)
    try:
        yield
    finally:
        logging.disable(previous)
