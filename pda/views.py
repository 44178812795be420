"""What the notebooks show: short text summaries, tables and per-run plots, all read from configs and records."""

from __future__ import annotations

import io
import json
from html import escape
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from pda.analysis import energy_is_estimated
from pda.analysis.tables import (
    MILLIONS, NOT_APPLICABLE, NOT_MEASURED, POINTS, WATT_HOURS, fixed, html_table, integer, percent_of_one,
)
from pda.config import RunConfig, StudyConfig
from pda.data import load_split, locate_task
from pda.records import RunRecord
from pda.runs import run_dir, run_id


def show_figure(fig: plt.Figure, dpi: int = 100) -> "IPython.display.Image":
    """``fig`` as a PNG image whose alt text describes it (``pda.plots.style.describe_figure``), for a
    notebook to display; the figure is closed so it shows once. The HTML pages keep the description."""
    from IPython.display import Image

    from pda.plots.style import describe_figure

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi, bbox_inches="tight")
    alt = describe_figure(fig)
    plt.close(fig)
    return Image(data=buffer.getvalue(), format="png", alt=alt)


def describe_run(cfg: RunConfig) -> str:
    """A few lines a reader can check before training starts (no paths, no timings)."""
    s, t = cfg.study, cfg.study.training
    flags = ", ".join(k for k, on in cfg.flags.items() if on and k != "finetune") or "none"
    lines = [
        f"task {cfg.task} | scenario {cfg.scenario} (flags: {flags}) | target sparsity "
        f"{NOT_APPLICABLE if cfg.sparsity is None else f'{cfg.sparsity:.0%}'} | seed {cfg.seed}",
        f"model {s.model} | train samples {s.max_train_samples or 'all'} | max length {s.max_seq_length}",
        f"epochs {t.epochs} | batch {t.batch_size} | lr {t.learning_rate} | adapter lr {s.adapters.learning_rate}",
    ]
    if cfg.flags["prune"]:
        p = s.pruning
        tune_lr = f" at lr {cfg.finetune_learning_rate}" if cfg.finetune_learning_rate else ""
        lines.append(f"pruning epochs {p.epochs} + final fine-tune {p.finetune_epochs}{tune_lr} | target warm-up "
                     f"{p.sparsity_warmup_ratio:.0%} of pruning steps")
    if cfg.flags["distill"]:
        d = s.distill
        lines.append(f"distillation T={d.temperature} alpha={d.alpha} student layers {d.student_layers}")
    return "\n".join(lines)


def data_overview(study: StudyConfig) -> "Table":
    """Rows per split next to the official count, and the majority-class share."""
    rows = []
    for name in study.tasks:
        task = study.task(name)
        source = locate_task(task, study.data_dir, study.online)
        official = dict(task.official_rows)
        for split in ("train", *task.dev_splits):
            ds = load_split(task, split, source)
            labels = np.asarray(list(ds["label"]))
            majority = None if task.is_regression else round(float(np.bincount(labels).max() / len(labels)) * 100, 1)
            rows.append({"task": name, "split": split, "rows": f"{len(ds):,}",
                         "official rows": NOT_MEASURED if official.get(split) is None else f"{official[split]:,}",
                         "matches official": (NOT_APPLICABLE if official.get(split) is None
                                              else "yes" if len(ds) == official[split] else "NO"),
                         "majority class (%)": NOT_APPLICABLE if majority is None else f"{majority:.1f}"})
    return Table(pd.DataFrame(rows), "majority class: — for regression tasks")


def plot_token_lengths(study: StudyConfig):
    """Histogram of tokenised train lengths per task, with the truncation length marked."""
    from pda.models import load_tokenizer

    tokenizer = load_tokenizer(study.model)
    fig, axes = plt.subplots(1, len(study.tasks), figsize=(4.5 * len(study.tasks), 3.2), squeeze=False)
    for ax, name in zip(axes[0], study.tasks):
        task = study.task(name)
        ds = load_split(task, "train", locate_task(task, study.data_dir, study.online))
        ds = ds.select(range(min(len(ds), 2000)))
        texts = [list(ds[f]) for f in task.text_fields]
        lengths = [len(ids) for ids in tokenizer(*texts)["input_ids"]]
        ax.hist(lengths, bins=40, color="#4c72b0")
        ax.axvline(study.max_seq_length, color="#c44e52", linestyle="--", label=f"max_seq_length={study.max_seq_length}")
        ax.set(title=f"{name} (first {len(ds)} train rows)", xlabel="tokens per example", ylabel="examples")
        ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


class Table:
    """A table as a reader sees it: no index column, no truncated cells, the same text in every frontend.

    JupyterLab and nbconvert's HTML use ``_repr_html_``; plain-text views (and nbval) use ``repr``.
    """

    def __init__(self, df: pd.DataFrame, caption: str = "") -> None:
        self.df, self.caption = df, caption

    def _repr_html_(self) -> str:
        caption = f"<p>{escape(self.caption)}</p>" if self.caption else ""
        return caption + html_table(self.df)

    def __repr__(self) -> str:
        text = self.df.to_string(index=False, na_rep=NOT_MEASURED)
        return f"{self.caption}\n{text}" if self.caption else text


def record_table(record: RunRecord) -> Table:
    """The headline numbers of one run, with units, as a two-column table."""
    params, teacher = record.params or {}, record.teacher_params or {}
    speed = (record.speed or {}).get("by_batch") or {}
    energy = [((record.energy or {}).get(p) or {}).get("kwh") for p in ("train", "inference")]
    rows: list[tuple[str, Any, Any]] = [(f"dev {k} (%)", v, POINTS) for k, v in record.metrics.items()]
    rows += [
        ("parameters (M)", params.get("total"), MILLIONS),
        ("encoder parameters (M)", params.get("encoder"), MILLIONS),
        ("trainable parameters", params.get("trainable"), integer),
        ("uncompressed parameters (M)", teacher.get("total"), MILLIONS),
        ("achieved sparsity, encoder (%)", (record.sparsity_achieved or {}).get("encoder"), percent_of_one()),
        ("achieved sparsity, whole model (%)", (record.sparsity_achieved or {}).get("total"), percent_of_one()),
        ("weights on disk (MB)", record.bytes_on_disk, fixed(2, 1e-6)),
        ("FLOP reduction bound (×)", (record.flops or {}).get("reduction_bound"), fixed(2)),
        *[(f"speed-up vs uncompressed, batch {bs} (×)", s.get("speedup"), fixed(2)) for bs, s in speed.items()],
        ("energy, training + inference (Wh, estimated)" if _estimated(record) else "energy, training + inference (Wh)",
         None if None in energy else sum(energy), WATT_HOURS),
        ("training steps", record.train_steps, integer),
    ]
    tracking = (record.pruning or {}).get("tracking") or {}
    if tracking:
        rows += [("pruning controller", f"{record.pruning.get('controller')}, {record.pruning.get('gate_init')} start",
                  str),
                 ("max |ŝ − t|, last quarter of pruning (percentage points)", tracking.get("max_abs_gap_last_quarter"),
                  percent_of_one()),
                 ("max ŝ − target over pruning (percentage points)", tracking.get("max_over_target"), percent_of_one())]
    return Table(pd.DataFrame({"measure": [name for name, _, _ in rows], "value": [fmt(v) for _, v, fmt in rows]}))


def _estimated(record: RunRecord) -> bool:
    modes = [((record.energy or {}).get(p) or {}).get("mode") for p in ("train", "inference")]
    return energy_is_estimated(m for m in modes if m)


def plot_history(cfg: RunConfig):
    """Training curves of the run: loss, and sparsity/lambdas or teacher agreement when logged."""
    history = json.loads((run_dir(cfg.study, _rid(cfg)) / "history.json").read_text())
    log = pd.DataFrame(history["log"])
    panels = [("loss", "training loss", None)]
    if "expected_sparsity" in log:
        panels.append(("expected_sparsity", "expected sparsity (encoder)", "target_sparsity"))
    if "lambda_1" in log:
        panels.append(("lambda_1", "Lagrange multipliers", "lambda_2"))
    if "teacher_agreement" in log:
        panels.append(("teacher_agreement", "agreement with teacher (top class)", None))
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.2), squeeze=False)
    for ax, (key, title, second) in zip(axes[0], panels):
        if log.empty:
            ax.text(0.5, 0.5, "no steps logged", ha="center", transform=ax.transAxes)
            continue
        rows = log.dropna(subset=[key])
        ax.plot(rows["step"], rows[key], label=key.replace("_", " "))
        if second and second in log:
            ax.plot(rows["step"], rows[second], linestyle="--", label=second.replace("_", " "))
            ax.legend(fontsize=8)
        if "phase" in log and log["phase"].nunique() > 1:
            start = log.loc[log["phase"] == "finetune", "step"].min()
            ax.axvline(start, color="grey", linewidth=0.8, linestyle=":")
            ax.annotate("export + fine-tune", (start, 0.98), xycoords=("data", "axes fraction"),
                        fontsize=7, color="grey", ha="left", va="top")
        ax.set(title=title, xlabel="training step")
    fig.tight_layout()
    return fig


def _rid(cfg: RunConfig) -> str:
    return run_id(cfg.task, cfg.scenario, cfg.sparsity, cfg.seed)


def plot_structure(record: RunRecord):
    """Per-layer share of heads and FFN units kept (0 = block removed); a note when the run was not pruned."""
    fig, ax = plt.subplots(figsize=(5.5, 3.2))
    if not record.structure:
        ax.text(0.5, 0.5, f"{record.scenario}: not pruned, every layer kept", ha="center", va="center")
        ax.set_axis_off()
        return fig
    layers = record.structure["layers"]
    heads = [len(l["heads_kept"]) / l["num_heads"] if l["mha_kept"] else 0.0 for l in layers]
    ffn = [l["ffn_units_kept"] / l["ffn_size"] if l["ffn_kept"] else 0.0 for l in layers]
    grid = np.array([heads, ffn])
    im = ax.imshow(grid, vmin=0, vmax=1, cmap="viridis", aspect="auto")
    ax.set(yticks=[0, 1], yticklabels=["attention heads", "FFN units"], xticks=range(len(layers)),
           xlabel="layer", title=f"{record.run_id}: share kept")
    for (i, j), v in np.ndenumerate(grid):
        ax.text(j, i, f"{v:.2f}", ha="center", va="center", color="white" if v < 0.6 else "black", fontsize=8)
    fig.colorbar(im, ax=ax, label="fraction kept")
    fig.tight_layout()
    return fig
