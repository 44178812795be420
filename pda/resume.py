"""In-run checkpoints: a killed run resumes mid-training and ends with the numbers of an uninterrupted one.

A checkpoint is everything the training loop holds (``LoopState``): the model (with adapters or
pruned shapes, through ``pda.checkpoint.save_model``), the AdamW and extension optimisers, the
scheduler, the GradScaler, each extension's own state (pruning gates, offset, lambdas and trace;
the layer-distillation map), the history so far, the step, the training time, every global RNG
(torch CPU and CUDA, numpy, python) and the position in the data order (``DataCursor``). Tensors
go to safetensors and the rest to JSON (``pda.statefile``): nothing is unpickled.

Layout: ``runs/<id>/checkpoint/latest.json`` names the current checkpoint directory
(``<phase>-<step>-<random>/``: ``model/``, ``state.safetensors``, ``state.json``). A new one is
written completely under a temporary name, renamed, and only then does ``latest.json`` (replaced
atomically) point to it, so a kill at any moment leaves the previous checkpoint or the new one.
A checkpoint stores its run's fingerprint; a run with another fingerprint discards it, saying so.
"""

from __future__ import annotations

import dataclasses
import json
import os
import random
import shutil
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader

from pda import checkpoint, statefile
from pda.fingerprint import differences
from pda.records import atomic_write_text

CHECKPOINT_DIR = "checkpoint"  # in the run directory; removed when the run's record lands
LATEST = "latest.json"
STATE = "state"  # state.safetensors + state.json
MODEL_DIR = "model"
FORMAT = 1  # bump when the layout changes: a checkpoint of another format is discarded, not misread
TRAIN, PRUNE, FINETUNE = "train", "prune", "finetune"  # the phases: one fit, or P's two


# --------------------------------------------------------------------------- random number generators


def rng_states() -> dict[str, Any]:
    """Every global generator training draws from: torch CPU (dropout, gate noise), CUDA, numpy, python."""
    name, keys, pos, has_gauss, cached = np.random.get_state()
    states: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": [name, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(cached)],
        "python": random.getstate(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def set_rng_states(states: dict[str, Any]) -> None:
    torch.set_rng_state(states["torch"])
    name, keys, pos, has_gauss, cached = states["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    random.setstate(states["python"])
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


# --------------------------------------------------------------------------- position in the data order


class DataCursor:
    """Batches of ``loader`` epoch after epoch, endlessly, knowing where it stands: epoch, batches
    consumed in it, and the shuffle generator's state when the epoch began.

    A restored cursor (``seek``) rewinds the generator to that epoch's start, draws the same
    order and skips the batches already trained on (it loads them, it does not train on them),
    then sets the global RNGs to the checkpoint's, so what follows is what an uninterrupted run
    would have seen. The replay costs data loading over part of one epoch, no training.
    """

    def __init__(self, loader: DataLoader) -> None:
        self.loader = loader
        # LengthGroupedSampler holds its own generator; a shuffled DataLoader's RandomSampler shares the loader's.
        # Any other iterable of batches (a list in tests) has a fixed order and no generator.
        self.generator: torch.Generator | None = (getattr(getattr(loader, "sampler", None), "generator", None)
                                                  or getattr(loader, "generator", None))
        self.epoch, self.batch = 0, 0
        self.epoch_start: torch.Tensor | None = None
        self.started = False  # False until the first epoch's iterator is made
        self._pending_rng: dict[str, Any] | None = None

    def _generator_state(self) -> torch.Tensor | None:
        return self.generator.get_state() if self.generator is not None else None

    def position(self) -> dict[str, Any]:
        """Where the next batch comes from: in a started epoch, its start state and the batches taken;
        before the first epoch, the generator as it is now (its iterator, which draws from the global
        RNG, is still to be made, so the RNGs must be set before it, not after)."""
        return {"epoch": self.epoch, "batch": self.batch, "started": self.started,
                "generator": self.epoch_start if self.started else self._generator_state()}

    def seek(self, position: dict[str, Any], rng: dict[str, Any]) -> None:
        """Continue from ``position``; ``rng`` is set where the saved loop stood (after the replay)."""
        if not 0 <= position["batch"] <= len(self.loader):
            raise ValueError(f"checkpoint position: batch {position['batch']} of an epoch of {len(self.loader)} "
                             "batches; the training data changed since it was saved")
        self.epoch, self.batch = position["epoch"], position["batch"]
        if self.generator is not None and position["generator"] is not None:
            self.generator.set_state(position["generator"])
        if position["started"]:
            self.epoch_start, self.started, self._pending_rng = position["generator"], True, rng
        else:
            set_rng_states(rng)

    def __iter__(self) -> Iterator[Any]:
        while True:
            if self._pending_rng is None:
                self.epoch_start, self.batch, self.started = self._generator_state(), 0, True
            batches = iter(self.loader)  # draws the epoch's order from the generator (and a seed from the RNG)
            if self._pending_rng is not None:  # resumed mid-epoch: skip what the saved loop had taken
                for _ in range(self.batch):
                    next(batches)
                set_rng_states(self._pending_rng)
                self._pending_rng = None
            for batch in batches:
                self.batch += 1
                yield batch
            self.epoch += 1


# --------------------------------------------------------------------------- the loop's state


@dataclasses.dataclass
class LoopState:
    """Everything stateful in ``pda.train.fit``'s loop, by reference: what a checkpoint saves and restores.

    Optimisers, scheduler and scaler are None in a checkpoint taken where a fresh one is right:
    at the start of a phase (after P's export) or at its end.
    """

    model: torch.nn.Module
    cursor: DataCursor
    history: Any  # pda.train.History
    total_steps: int
    extensions: tuple = ()
    optimizer: torch.optim.Optimizer | None = None
    ext_optimizers: list[torch.optim.Optimizer] = dataclasses.field(default_factory=list)
    scheduler: Any = None
    scaler: Any = None
    step: int = 0


def _trainable(model: torch.nn.Module) -> list[str]:
    return [name for name, p in model.named_parameters() if p.requires_grad]


def _extension_state(ext: Any) -> Any:
    if not hasattr(ext, "state_dict") or not hasattr(ext, "load_state_dict"):
        raise TypeError(f"training extension {type(ext).__name__} has no state_dict()/load_state_dict(), so a "
                        "checkpoint cannot resume it; add both (see pda.train.LoopExtension)")
    return ext.state_dict()


def _optional(obj: Any, final: bool) -> Any:
    return None if final or obj is None else obj.state_dict()


# --------------------------------------------------------------------------- the checkpointer


class Checkpointer:
    """One run's checkpoints in ``directory`` (``runs/<id>/checkpoint``): saved every ``every_minutes``
    and at the end of each phase (0: never saved; one left by an earlier attempt is still resumed).

    ``fingerprint`` is the run's ``pda.fingerprint.record_entry``: only a run with the same sha256
    resumes a checkpoint. ``carry`` is JSON that a phase hands to the next (P: what pruning
    produced for the record); it is saved with every checkpoint.
    """

    def __init__(self, directory: Path, fingerprint: dict[str, Any], every_minutes: float,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.directory = Path(directory)
        self.fingerprint, self.every_s, self.clock = fingerprint, every_minutes * 60.0, clock
        self.carry: dict[str, Any] = {}
        self.latest: dict[str, Any] | None = None  # state.json of the checkpoint on disk (without its tree)
        self.resume_point: dict[str, Any] | None = None  # the one an earlier attempt left, until superseded
        self.resumes: list[dict[str, Any]] = []  # every restart of this run, earlier attempts' included
        self._last_save = clock()
        self._model: torch.nn.Module | None = None

    # ----- reading

    def open(self) -> str | None:
        """Read the run's checkpoint; discard one from other inputs or another format. A line to print, or None."""
        meta = self._read_meta()
        if meta is None:
            return None
        if meta.get("format") != FORMAT or meta.get("fingerprint") != self.fingerprint["sha256"]:
            if meta.get("format") != FORMAT:
                why = f"checkpoint format {meta.get('format')!r}, this pda writes {FORMAT}"
            else:
                why = differences(meta.get("inputs"), self.fingerprint["inputs"])
            self.remove()
            return (f"checkpoint {self.directory} was made from other inputs ({why}): discarded, "
                    "the run starts from step 0")
        self.latest = self.resume_point = meta
        self.carry = meta["carry"]
        self.resumes = meta["resumes"] + [{key: meta[key] for key in ("phase", "step", "total_steps", "saved_at")}]
        return (f"resuming from checkpoint {self.directory}: {meta['phase']} step {meta['step']}/"
                f"{meta['total_steps']}, saved {meta['saved_at']}")

    def _read_meta(self) -> dict[str, Any] | None:
        pointer = self.directory / LATEST
        if not pointer.is_file():
            return None
        try:
            name = json.loads(pointer.read_text(encoding="utf-8"))["checkpoint"]
            meta = json.loads((self.directory / name / f"{STATE}.json").read_text(encoding="utf-8"))
        except (OSError, ValueError, KeyError, TypeError) as err:
            raise RuntimeError(f"checkpoint {self.directory} is unreadable ({err}); delete that directory to "
                               "start the run from step 0") from None
        meta.pop("tree", None)
        return {**meta, "name": name}

    @property
    def resume_phase(self) -> str | None:
        """The phase this attempt resumes in: that of the checkpoint an earlier attempt left (None: none)."""
        return self.resume_point["phase"] if self.resume_point else None

    def holds(self, phase: str, step: int) -> bool:
        return self.latest is not None and self.latest["phase"] == phase and self.latest["step"] == step

    def notes(self) -> list[str]:
        """For the run record: each restart, from which phase and step, and what that means for its numbers."""
        if not self.resumes:
            return []
        return [f"resumed from a checkpoint at {r['phase']} step {r['step']}/{r['total_steps']} (saved {r['saved_at']})"
                for r in self.resumes] + ["train_time_s adds up the training of every attempt up to its last "
                                          "checkpoint; energy.train covers only the last attempt"]

    def load_model(self) -> torch.nn.Module:
        """The resumed checkpoint's model, rebuilt in its saved shape (pruned, adapted); CPU, eval mode."""
        self._model = checkpoint.load_model(self.directory / self.resume_point["name"] / MODEL_DIR)
        return self._model

    def restore(self, phase: str, state: LoopState) -> bool:
        """Load the checkpoint an earlier attempt left into ``state`` if it belongs to ``phase``; else False.

        A checkpoint this attempt wrote is never restored: the loop already holds that state.
        """
        meta = self.resume_point
        if meta is None or meta["phase"] != phase:
            return False
        if meta["total_steps"] != state.total_steps:
            raise RuntimeError(f"checkpoint {self.directory} has {meta['total_steps']} {phase} steps, this run "
                               f"{state.total_steps}; its fingerprint matched, so the data changed: delete it")
        tree, _ = statefile.load(self.directory / meta["name"], STATE)
        if state.model is not self._model:  # else it was built from this checkpoint: weights in place
            state.model.load_state_dict(self.load_model().state_dict(), strict=True)
        if _trainable(state.model) != tree["trainable"]:
            raise RuntimeError(f"checkpoint {self.directory}: the model's trainable parameters differ from the "
                               "saved ones (names or order), so the optimiser state cannot be matched")
        resumable = meta["step"] in (0, meta["total_steps"])  # where a fresh optimiser is right
        for obj, saved in ((state.optimizer, tree["optimizer"]), (state.scheduler, tree["scheduler"]),
                           (state.scaler, tree["scaler"])):
            if obj is not None and saved is not None:
                obj.load_state_dict(saved)
            elif obj is not None and not resumable:
                raise RuntimeError(f"checkpoint {self.directory} at step {meta['step']} lacks optimiser state")
        if tree["ext_optimizers"] is not None:
            if len(tree["ext_optimizers"]) != len(state.ext_optimizers):
                raise RuntimeError(f"checkpoint {self.directory}: {len(tree['ext_optimizers'])} extension "
                                   f"optimisers saved, {len(state.ext_optimizers)} now")
            for opt, saved in zip(state.ext_optimizers, tree["ext_optimizers"]):
                opt.load_state_dict(saved)
        if len(tree["extensions"]) != len(state.extensions):
            raise RuntimeError(f"checkpoint {self.directory}: {len(tree['extensions'])} training extensions "
                               f"saved, {len(state.extensions)} now")
        for ext, saved in zip(state.extensions, tree["extensions"]):
            ext.load_state_dict(saved)
        for key, value in tree["history"].items():
            setattr(state.history, key, value)
        state.step = meta["step"]
        if state.step >= state.total_steps:
            set_rng_states(tree["rng"])
        else:
            state.cursor.seek(tree["position"], tree["rng"])
        return True

    # ----- writing

    @property
    def enabled(self) -> bool:
        return self.every_s > 0

    def due(self) -> bool:
        return self.enabled and self.clock() - self._last_save >= self.every_s

    def save(self, phase: str, state: LoopState, final: bool = False) -> None:
        """Write a checkpoint of ``state`` and make it current; ``final`` (the phase is over): no optimisers."""
        if not self.enabled:
            return
        name = f"{phase}-{state.step:08d}-{uuid.uuid4().hex[:8]}"
        self.directory.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{name}.tmp-", dir=self.directory))
        meta = {"format": FORMAT, "fingerprint": self.fingerprint["sha256"], "inputs": self.fingerprint["inputs"],
                "phase": phase, "step": state.step, "total_steps": state.total_steps, "final": final,
                "saved_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "carry": self.carry,
                "resumes": self.resumes}
        tree = {
            "trainable": _trainable(state.model),
            "optimizer": _optional(state.optimizer, final), "scheduler": _optional(state.scheduler, final),
            "scaler": _optional(state.scaler, final),
            "ext_optimizers": None if final or not state.ext_optimizers else [
                opt.state_dict() for opt in state.ext_optimizers],
            "extensions": [_extension_state(ext) for ext in state.extensions],
            "history": dataclasses.asdict(state.history),
            "position": state.cursor.position(),
            "rng": rng_states(),
        }
        try:
            checkpoint.save_model(state.model, tmp / MODEL_DIR)
            statefile.save(tree, tmp, STATE, meta=meta)
            os.replace(tmp, self.directory / name)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        atomic_write_text(self.directory / LATEST, json.dumps({"checkpoint": name}) + "\n")
        for entry in self.directory.iterdir():  # the previous checkpoint, and leftovers of a killed save
            if entry.name in (name, LATEST):
                continue
            if entry.is_dir():
                shutil.rmtree(entry, ignore_errors=True)
            else:
                entry.unlink(missing_ok=True)
        self.latest, self.resume_point = {**meta, "name": name}, None
        self._last_save = self.clock()

    def remove(self) -> None:
        """Delete every checkpoint of the run (its record has landed, or they belong to other inputs)."""
        shutil.rmtree(self.directory, ignore_errors=True)
        self.latest = self.resume_point = None

    def phase(self, name: str, save_at_end: bool = True) -> Phase:
        """The hook ``pda.train.fit`` takes for one phase (``save_at_end=False`` when the caller saves right after)."""
        return Phase(self, name, save_at_end)


class Phase:
    """What ``pda.train.fit`` sees of the checkpointer: restore at the start, save when due and at the end."""

    def __init__(self, checkpointer: Checkpointer, name: str, save_at_end: bool = True) -> None:
        self.checkpointer, self.name, self.save_at_end = checkpointer, name, save_at_end

    def restore(self, state: LoopState) -> bool:
        return self.checkpointer.restore(self.name, state)

    def step_done(self, state: LoopState) -> None:
        if self.checkpointer.due():
            self.checkpointer.save(self.name, state)

    def end(self, state: LoopState) -> None:
        if self.save_at_end and not self.checkpointer.holds(self.name, state.step):
            self.checkpointer.save(self.name, state, final=True)
