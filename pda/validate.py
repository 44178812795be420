"""Read a GLUE TSV strictly: every fault (encoding, columns, label, empty text) is one line naming file and line."""

from __future__ import annotations

import dataclasses
import functools
import math
import os
from pathlib import Path

from pda.tasks import TaskSpec

MAX_PROBLEMS_PER_FILE = 5
_BOM = b"\xef\xbb\xbf"


class DataError(ValueError):
    """A data file is malformed; the message has one line per fault, each naming the file and the line."""


@dataclasses.dataclass(frozen=True)
class TsvTable:
    """A GLUE TSV read strictly: text fields by name, raw label strings, and every fault found."""

    path: Path
    texts: dict[str, list[str]]
    labels: list[str]
    problems: tuple[str, ...]

    @property
    def rows(self) -> int:
        return len(self.labels)


@dataclasses.dataclass(frozen=True)
class FileCheck:
    """What a check of one file found: its data rows and its faults (empty when the file is good)."""

    path: Path
    rows: int
    problems: tuple[str, ...]


def _columns(task: TaskSpec) -> list[str | int]:
    return [*task.tsv_text_columns, task.tsv_label_column]


def _decode(path: Path, raw: bytes) -> tuple[str | None, str | None]:
    """The file's text (UTF-8, an optional BOM), or a fault naming the first bad byte's line."""
    body = raw[len(_BOM):] if raw.startswith(_BOM) else raw
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as err:
        line = body.count(b"\n", 0, err.start) + 1
        column = err.start - (body.rfind(b"\n", 0, err.start) + 1) + 1
        return None, (f"{path}, line {line}: byte 0x{body[err.start]:02x} at position {column} is not UTF-8 "
                      f"({err.reason}); GLUE files are UTF-8 text")
    nul = text.find("\x00")
    if nul >= 0:
        return None, f"{path}, line {text.count(chr(10), 0, nul) + 1}: NUL byte; this is a binary file, not a TSV"
    return text, None


def _label_fault(task: TaskSpec, value: str) -> str | None:
    if not task.is_regression:
        return None if value in task.labels else f"label {value!r} is not one of {list(task.labels)}"
    try:
        score = float(value)
    except ValueError:
        return f"score {value!r} is not a number"
    low, high = task.score_range or (-math.inf, math.inf)  # STS-B: graded from 0 (unrelated) to 5 (equivalent)
    if not math.isfinite(score) or not low <= score <= high:
        return f"score {value!r} is outside [{low:g}, {high:g}]"
    return None


def parse_tsv(task: TaskSpec, path: Path, max_problems: int = MAX_PROBLEMS_PER_FILE) -> TsvTable:
    """Read one GLUE TSV without quoting rules (its sentences hold unbalanced quotes) and check every row.

    Lines end in LF or CRLF; blank lines are skipped. A header file must name the task's text and
    label columns, and every row must have as many tab-separated columns as the header (a file
    without a header, CoLA, as many as its last used column). Labels must be the task's,
    regression scores numbers in range, and text fields non-empty. At most ``max_problems`` faults
    are listed per file, then how many more lines are bad.
    """
    path = Path(path)
    empty = TsvTable(path, {f: [] for f in task.text_fields}, [], ())
    try:
        raw = path.read_bytes()
    except OSError as err:
        return dataclasses.replace(empty, problems=(f"{path}: cannot be read ({err.strerror or err})",))
    text, fault = _decode(path, raw)
    if fault:
        return dataclasses.replace(empty, problems=(fault,))
    wanted = _columns(task)
    if not text.strip():
        expected = (f"a header line naming {wanted}, then rows" if task.tsv_header
                    else f"rows of {max(int(c) for c in wanted) + 1} tab-separated columns")
        return dataclasses.replace(empty, problems=(f"{path}: the file is empty; expected {expected}",))
    lines = text.split("\n")
    if lines[-1] == "":
        lines.pop()
    if task.tsv_header:
        header = lines[0].removesuffix("\r").split("\t")
        missing = [c for c in wanted if c not in header]
        if missing:
            return dataclasses.replace(empty, problems=(
                f"{path}, line 1: the header lacks column(s) {missing}; {task.name} needs {wanted}, found {header}",))
        positions, width, first = [header.index(c) for c in wanted], len(header), 1
    else:
        positions, width, first = [int(c) for c in wanted], max(int(c) for c in wanted) + 1, 0
    names = [f"{field} (column {col!r})" for field, col in zip(task.text_fields, task.tsv_text_columns)]
    texts: list[list[str]] = [[] for _ in task.text_fields]
    labels: list[str] = []
    problems: list[str] = []
    bad = 0
    for number, line in enumerate(lines[first:], start=first + 1):
        line = line.removesuffix("\r")
        if not line:
            continue
        fields = line.split("\t")
        if len(fields) != width:
            fault = f"expected {width} tab-separated columns, found {len(fields)}"
        else:
            values = [fields[p] for p in positions]
            fault = next((f"{name} is empty" for name, v in zip(names, values) if not v.strip()), None)
            fault = fault or _label_fault(task, values[-1])
        if fault:
            bad += 1
            if len(problems) < max_problems:
                problems.append(f"{path}, line {number}: {fault}")
            continue
        for column, value in zip(texts, values):
            column.append(value)
        labels.append(values[-1])
    if bad > len(problems):
        problems.append(f"{path}: {bad - len(problems)} more bad line(s) not shown")
    if not labels and not problems:
        problems.append(f"{path}: no data rows{' after the header' if task.tsv_header else ''}; "
                        "a split needs at least one example")
    return TsvTable(path, dict(zip(task.text_fields, texts)), labels, tuple(problems))


def check_file(task: TaskSpec, path: Path) -> FileCheck:
    """``parse_tsv``'s verdict on a file, remembered per (path, size, mtime) so a process reads it once."""
    path = Path(path)
    try:
        stat = path.stat()
    except OSError:
        return FileCheck(path, 0, (f"{path}: not found",))
    return _check_cached(task, str(path.resolve()), stat.st_size, stat.st_mtime_ns)


@functools.lru_cache(maxsize=64)
def _check_cached(task: TaskSpec, path: str, size: int, mtime_ns: int) -> FileCheck:
    table = parse_tsv(task, Path(path))
    return FileCheck(Path(path), table.rows, table.problems)


def check_split_files(task: TaskSpec, folder: Path) -> list[FileCheck]:
    """Every split a run reads (train and the dev splits) of ``task`` under a ``glue_data/``-style folder."""
    checks = []
    for split in ("train", *task.dev_splits):
        path = Path(folder) / task.folder / f"{split}.tsv"
        if not os.path.isfile(path):
            checks.append(FileCheck(path, 0, (
                f"{path}: not found; {task.name} needs {task.folder}/train.tsv and "
                f"{', '.join(f'{task.folder}/{s}.tsv' for s in task.dev_splits)}",)))
        else:
            checks.append(check_file(task, path))
    return checks


@dataclasses.dataclass(frozen=True)
class DataReport:
    """The files a study's runs read, each checked, and the tasks whose data could not be checked."""

    files: tuple[FileCheck, ...]
    unchecked: tuple[str, ...]  # tasks that load from the hub at run time

    @property
    def problems(self) -> list[str]:
        return [line for check in self.files for line in check.problems]

    def summary(self) -> str:
        rows = sum(f.rows for f in self.files)
        line = f"data: {len(self.files)} file(s), {rows:,} rows checked"
        if self.unchecked:
            line += (f"; not checked: {', '.join(self.unchecked)} (from the hub at run time: "
                     "hub splits cannot be checked before the run)")
        return line


def check_tasks(sources: list[tuple[TaskSpec, Path | None]]) -> DataReport:
    """Check the split files of each (task, folder); a ``None`` folder is the hub, listed as unchecked."""
    files: list[FileCheck] = []
    unchecked: list[str] = []
    for task, folder in sources:
        if folder is None:
            unchecked.append(task.name)
        else:
            files.extend(check_split_files(task, folder))
    return DataReport(tuple(files), tuple(unchecked))
