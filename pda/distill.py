"""Distillation (D): make a shallower student from a BERT teacher and train it on the teacher's soft labels."""

from __future__ import annotations

import copy
import operator
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors import safe_open
from safetensors.torch import save as safetensors_bytes
from torch import Tensor, nn

from pda.records import atomic_write_bytes
from pda.train import model_inputs

# Config attributes that are lists with one entry per layer but are not per-layer.
_NOT_PER_LAYER = {"architectures", "pda_student_layers"}


def resolve_student_layers(rule: str | Sequence[int], num_layers: int) -> list[int]:
    """Teacher layer indices (0-based) the student keeps.

    ``"every_other"`` keeps the odd indices (12 layers -> [1, 3, 5, 7, 9, 11]);
    an explicit list must be non-empty, unique, sorted and within ``[0, num_layers)``.
    """
    if num_layers < 1:
        raise ValueError(f"num_layers must be >= 1, got {num_layers}")
    if isinstance(rule, str):
        if rule == "every_other":
            layers = list(range(1, num_layers, 2))
            if not layers:
                raise ValueError(f"'every_other' keeps no layer of a {num_layers}-layer teacher; give an explicit list")
            return layers
        raise ValueError(f"unknown student layer rule {rule!r}; valid: 'every_other' or a list of layer indices")
    layers = []
    for layer in rule:
        try:
            layers.append(operator.index(layer))  # ints, numpy ints; not floats
        except TypeError:
            raise ValueError(f"student layer {layer!r} is not an int; valid indices are 0..{num_layers - 1}") from None
        if isinstance(layer, bool):
            raise ValueError(f"student layer {layer!r} is not an int; valid indices are 0..{num_layers - 1}")
    if not layers:
        raise ValueError(f"student layers must be non-empty; valid indices are 0..{num_layers - 1}")
    for layer in layers:
        if not 0 <= layer < num_layers:
            raise ValueError(f"student layer {layer} is out of range; valid indices are 0..{num_layers - 1}")
    if len(set(layers)) != len(layers):
        dupes = sorted({x for x in layers if layers.count(x) > 1})
        raise ValueError(f"student layers {layers} repeat {dupes}; each layer may be kept once")
    if layers != sorted(layers):
        raise ValueError(f"student layers {layers} are not sorted; give them in increasing order, e.g. {sorted(layers)}")
    return layers


def _encoder_layers(model: nn.Module) -> nn.ModuleList:
    try:
        return model.base_model.encoder.layer
    except AttributeError as err:
        raise TypeError(f"{type(model).__name__} has no base_model.encoder.layer; expected a HF BERT model") from err


def make_student(teacher: nn.Module, layers: str | Sequence[int]) -> nn.Module:
    """Deep copy of ``teacher`` keeping only encoder ``layers`` (teacher indices; a rule is resolved).

    Embeddings, pooler, classifier and any adapter modules inside the kept layers are
    copied; the teacher is not modified. ``config.num_hidden_layers`` is updated,
    ``config.pruned_heads`` and per-layer config lists are re-indexed, every
    submodule's ``layer_idx`` is renumbered (so later adapters' ``leave_out``
    refers to student layers), and ``config.pda_student_layers`` records ``layers``.
    Bottleneck adapters are supported; layer-indexed adapter pools (prefix tuning)
    are not re-indexed, so add those to the student after it is made.
    """
    num_layers = len(_encoder_layers(teacher))
    layers = resolve_student_layers(layers, num_layers)
    student = copy.deepcopy(teacher)
    old = _encoder_layers(student)
    kept = nn.ModuleList([old[i] for i in layers])
    for new_idx, (old_idx, layer) in enumerate(zip(layers, kept)):
        for module in layer.modules():
            # adapters keeps a write-once ``_layer_idx`` behind a ``layer_idx`` property
            for attr in ("layer_idx", "_layer_idx"):
                if vars(module).get(attr) == old_idx:
                    setattr(module, attr, new_idx)
    student.base_model.encoder.layer = kept

    config = student.config
    for name, value in list(vars(config).items()):
        if name not in _NOT_PER_LAYER and isinstance(value, (list, tuple)) and len(value) == num_layers:
            setattr(config, name, type(value)(value[i] for i in layers))
    pruned = getattr(config, "pruned_heads", None) or {}
    config.pruned_heads = {new: pruned[old] for new, old in enumerate(layers) if old in pruned}
    config.num_hidden_layers = len(layers)
    config.pda_student_layers = list(layers)
    return student


def kd_loss(
    student_logits: Tensor,
    teacher_logits: Tensor,
    labels: Tensor | None,
    temperature: float,
    alpha: float,
    regression: bool,
) -> Tensor:
    """Hinton/DistilBERT distillation loss.

    Classification: ``alpha * T^2 * KL(softmax(t/T) || softmax(s/T))`` (batch mean)
    ``+ (1 - alpha) * CE(s, labels)``. Regression (one output): ``alpha * MSE(s, t)
    + (1 - alpha) * MSE(s, labels)``; ``temperature`` is then unused. ``labels`` may be
    ``None`` only when ``alpha == 1``.
    """
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    if student_logits.shape != teacher_logits.shape:
        raise ValueError(f"student logits {tuple(student_logits.shape)} and teacher logits "
                         f"{tuple(teacher_logits.shape)} differ in shape")
    if labels is None and alpha < 1.0:
        raise ValueError(f"labels are required when alpha < 1 (alpha={alpha})")
    teacher_logits = teacher_logits.detach().to(student_logits.dtype)

    if regression:
        s = student_logits.reshape(-1)
        soft = F.mse_loss(s, teacher_logits.reshape(-1))
        hard = F.mse_loss(s, labels.reshape(-1).to(s.dtype)) if labels is not None else s.new_zeros(())
    else:
        t = temperature
        soft = F.kl_div(
            F.log_softmax(student_logits / t, dim=-1),
            F.log_softmax(teacher_logits / t, dim=-1),
            log_target=True,
            reduction="batchmean",
        ) * (t * t)
        hard = F.cross_entropy(student_logits, labels) if labels is not None else student_logits.new_zeros(())
    return alpha * soft + (1.0 - alpha) * hard


def teacher_labels(teacher_logits: Tensor, regression: bool) -> list[int] | list[float]:
    """The hard labels a teacher gives unlabelled rows: its predicted class, or its predicted value."""
    if regression:
        return teacher_logits.reshape(-1).float().tolist()
    return teacher_logits.argmax(-1).tolist()


class LayerDistiller(nn.Module):
    """CoFi-style layer distillation: MSE(W h_student[i], h_teacher[mapping[i]]) averaged over student layers.

    ``mapping[i]`` is the teacher layer (0-based) matched to student layer ``i``
    (for a ``make_student`` student: its ``layers``). ``W`` is one learned linear map,
    initialised to the identity when the sizes agree. Hidden states are the
    ``output_hidden_states`` tuples (index 0 = embeddings, so layer ``i`` is ``i + 1``).
    """

    def __init__(self, student_hidden: int, teacher_hidden: int, mapping: Sequence[int]):
        super().__init__()
        if not mapping:
            raise ValueError("mapping must name a teacher layer for at least one student layer")
        self.mapping = list(mapping)
        self.proj = nn.Linear(student_hidden, teacher_hidden)
        if student_hidden == teacher_hidden:
            with torch.no_grad():
                self.proj.weight.copy_(torch.eye(teacher_hidden))
                self.proj.bias.zero_()

    def forward(
        self,
        student_hidden_states: Sequence[Tensor],
        teacher_hidden_states: Sequence[Tensor],
        attention_mask: Tensor | None = None,
    ) -> Tensor:
        """Mean over mapped layers of the per-token MSE (padding tokens excluded when a mask is given)."""
        if len(student_hidden_states) != len(self.mapping) + 1:
            raise ValueError(f"got {len(student_hidden_states)} student hidden states; expected "
                             f"{len(self.mapping) + 1} (embeddings + {len(self.mapping)} layers)")
        losses = []
        for i, t_layer in enumerate(self.mapping):
            s = self.proj(student_hidden_states[i + 1])
            t = teacher_hidden_states[t_layer + 1].detach()
            err = (s - t).pow(2).mean(dim=-1)  # (batch, seq)
            if attention_mask is not None:
                m = attention_mask.to(err.dtype)
                losses.append((err * m).sum() / m.sum().clamp_min(1.0))
            else:
                losses.append(err.mean())
        return torch.stack(losses).mean()


def teacher_logits(teacher: nn.Module, batch: Mapping[str, Tensor]) -> Tensor:
    """Online teacher forward: eval mode, no grad, on the teacher's device."""
    teacher.eval()
    device = next(teacher.parameters()).device
    with torch.no_grad():
        return teacher(**model_inputs(batch, device)).logits


class TeacherLogitCache:
    """Teacher logits per dataset row (``idx``), so each example's teacher forward runs once.

    Valid as long as the teacher's input for a row never changes (no augmentation);
    padding may differ between batches since padded positions are masked out.
    """

    def __init__(self, num_examples: int, num_labels: int):
        self.logits = torch.zeros(num_examples, num_labels)
        self.filled = torch.zeros(num_examples, dtype=torch.bool)

    def __len__(self) -> int:
        return int(self.filled.sum())

    def fill(self, teacher: nn.Module, batches: Iterable[Mapping[str, Tensor]]) -> "TeacherLogitCache":
        """Run the teacher (eval, no grad) over ``batches`` (each with an ``idx`` field) and store its logits;
        rows beyond the current size grow the cache."""
        for batch in batches:
            if "idx" not in batch:
                raise KeyError(f"batch has no 'idx' field (keys: {sorted(batch)}); the cache needs row indices")
            idx = torch.as_tensor(batch["idx"]).long().cpu()
            self._grow(int(idx.max()) + 1)
            self.logits[idx] = teacher_logits(teacher, batch).float().cpu()
            self.filled[idx] = True
        return self

    def _grow(self, num_examples: int) -> None:
        extra = num_examples - len(self.filled)
        if extra > 0:
            self.logits = torch.cat([self.logits, self.logits.new_zeros(extra, self.logits.shape[1])])
            self.filled = torch.cat([self.filled, self.filled.new_zeros(extra)])

    def missing(self, indices: Tensor | Sequence[int]) -> list[int]:
        """The rows of ``indices`` with no logits yet, in the order given."""
        idx = torch.as_tensor(indices).long().cpu()
        inside = idx < len(self.filled)
        have = torch.zeros_like(inside)
        have[inside] = self.filled[idx[inside]]
        return idx[~have].tolist()

    def get(self, indices: Tensor | Sequence[int]) -> Tensor:
        """Cached logits of rows ``indices`` (KeyError if any row was never filled)."""
        missing = self.missing(indices)
        if missing:
            raise KeyError(f"no teacher logits cached for rows {missing[:10]}; call fill() over the whole dataset")
        return self.logits[torch.as_tensor(indices).long().cpu()]

    def save(self, path: str | Path, meta: Mapping[str, str] | None = None) -> None:
        """Safetensors, written atomically: concurrent readers see the old file or the new one."""
        tensors = {"logits": self.logits.contiguous(), "filled": self.filled.contiguous()}
        atomic_write_bytes(Path(path), safetensors_bytes(tensors, metadata=dict(meta or {})))

    @classmethod
    def load(cls, path: str | Path, meta: Mapping[str, str] | None = None) -> "TeacherLogitCache":
        """A saved cache; ``meta`` (if given) must match what it was saved with, else ValueError."""
        with safe_open(str(path), framework="pt") as f:
            saved = f.metadata() or {}
            logits, filled = f.get_tensor("logits"), f.get_tensor("filled")
        wrong = {k: (saved.get(k), v) for k, v in (meta or {}).items() if saved.get(k) != v}
        if wrong:
            raise ValueError(f"teacher logits in {path} were made for other inputs (saved, wanted): {wrong}")
        cache = cls(*logits.shape)
        cache.logits, cache.filled = logits, filled.bool()
        return cache


def time_cache_vs_online(
    teacher: nn.Module, batches: Sequence[Mapping[str, Tensor]], epochs: int = 3
) -> dict[str, float]:
    """Seconds spent on teacher logits over ``epochs`` passes: cached (fill once + lookups) vs online forwards.

    Only the teacher side is timed (the student step is the same in both).
    Example: ``time_cache_vs_online(teacher, list(train_loader), epochs=3)``.
    """
    num_labels = teacher.config.num_labels
    num_rows = 1 + max(int(torch.as_tensor(b["idx"]).max()) for b in batches)
    start = time.perf_counter()
    cache = TeacherLogitCache(num_rows, num_labels).fill(teacher, batches)
    fill_s = time.perf_counter() - start
    for _ in range(epochs):
        for batch in batches:
            cache.get(batch["idx"])
    cached_s = time.perf_counter() - start
    start = time.perf_counter()
    for _ in range(epochs):
        for batch in batches:
            teacher_logits(teacher, batch)
    online_s = time.perf_counter() - start
    return {"epochs": epochs, "fill_s": fill_s, "cached_s": cached_s, "online_s": online_s,
            "speedup": online_s / cached_s if cached_s > 0 else float("inf")}
