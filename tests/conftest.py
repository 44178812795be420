"""Shared fixtures: offline hub, the GLUE data the repository ships, and a smoke parameter file in a temp dir."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import yaml

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = Path(__file__).resolve().parent / "fixtures"


@pytest.fixture(scope="session")
def glue_dir() -> Path:
    """The repository's own data/glue: the tests check what the project ships, whatever PDA_GLUE_DIR says."""
    from pda.data import REPO_GLUE_DIR

    if not (REPO_GLUE_DIR / "MRPC" / "train.tsv").is_file():
        pytest.fail(f"the repository's GLUE data is missing at {REPO_GLUE_DIR} (data/glue is tracked in git)")
    return REPO_GLUE_DIR


@pytest.fixture(scope="session")
def glue_source(glue_dir):
    """A DataSource per task name, on the repository's data."""
    from pda.data import locate_task
    from pda.tasks import get_task

    return lambda name: locate_task(get_task(name), glue_dir, online=False)


@pytest.fixture
def make_params(tmp_path, glue_dir):
    """Write a parameter file into tmp_path/parameters/, starting from smoke.yaml, with changes."""

    def make(**changes) -> Path:
        base = yaml.safe_load((ROOT / "parameters" / "smoke.yaml").read_text())
        base.update({"data_dir": str(glue_dir), "output_dir": str(tmp_path / "outputs")})
        base.update(changes)
        path = tmp_path / "parameters" / "p.yaml"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(yaml.safe_dump(base))
        return path

    return make
