"""Official GLUE metrics, computed with scikit-learn and SciPy (evaluate's GLUE script is not available offline)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy.stats import pearsonr, spearmanr
from sklearn.metrics import accuracy_score, f1_score, matthews_corrcoef

from pda.tasks import TaskSpec


def predictions_from_logits(task: TaskSpec, logits: np.ndarray) -> np.ndarray:
    """Class ids (argmax) for classification, the single output for regression."""
    logits = np.asarray(logits)
    return logits.reshape(-1) if task.is_regression else logits.argmax(axis=-1)


def _percent(value: float) -> float:
    return round(float(value) * 100.0, 4)


def correlation(kind: str, predictions: np.ndarray, references: np.ndarray) -> float:
    """Pearson or Spearman correlation; 0 when either side is constant. SciPy returns NaN there, and a NaN
    main metric drops a collapsed STS-B run out of every mean over seeds; scikit-learn scores a constant
    prediction's Matthews correlation 0 the same way."""
    if np.ptp(predictions) == 0 or np.ptp(references) == 0:
        return 0.0
    return float((pearsonr if kind == "pearson" else spearmanr)(predictions, references)[0])


def glue_metrics(task: TaskSpec, predictions: Sequence, references: Sequence) -> dict[str, float]:
    """All GLUE metrics of ``task`` for one dev split, in percent (as GLUE reports them)."""
    preds, refs = np.asarray(predictions), np.asarray(references)
    if preds.shape[0] != refs.shape[0]:
        raise ValueError(f"{preds.shape[0]} predictions for {refs.shape[0]} references")
    if task.is_regression:
        pearson = correlation("pearson", preds.astype(float), refs.astype(float))
        spearman = correlation("spearman", preds.astype(float), refs.astype(float))
        return {
            "pearson": _percent(pearson),
            "spearman": _percent(spearman),
            "pearson_spearman_mean": _percent((pearson + spearman) / 2),
        }
    out = {"accuracy": _percent(accuracy_score(refs, preds))}
    if "f1" in task.metrics:
        out["f1"] = _percent(f1_score(refs, preds))
    if "f1_macro" in task.metrics:  # a task of your own with several classes: each class's F1 counts the same
        out["f1_macro"] = _percent(f1_score(refs, preds, average="macro", labels=range(task.num_labels),
                                            zero_division=0.0))
    if "matthews" in task.metrics:
        out = {"matthews": _percent(matthews_corrcoef(refs, preds)), **out}
    return out


def task_metrics(task: TaskSpec, per_split: dict[str, tuple[Sequence, Sequence]]) -> dict[str, float]:
    """Metrics over every dev split of ``task``; MNLI's splits become ``accuracy_m`` / ``accuracy_mm``."""
    if task.name == "mnli":
        suffix = {"dev_matched": "m", "dev_mismatched": "mm"}
        return {
            f"accuracy_{suffix[split]}": glue_metrics(task, p, r)["accuracy"]
            for split, (p, r) in per_split.items()
        }
    (preds, refs), = per_split.values()
    return glue_metrics(task, preds, refs)
