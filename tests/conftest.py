"""Shared fixtures: offline hub, the shared GLUE folder, and a smoke parameter file in a temp dir."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import yaml

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

ROOT = Path(__file__).resolve().parent.parent


def _glue_dir() -> Path:
    env = os.environ.get("PDA_GLUE_DIR")
    return Path(env) if env else (ROOT.parent / "shared" / "glue")


@pytest.fixture(scope="session")
def glue_dir() -> Path:
    path = _glue_dir()
    if not (path / "MRPC" / "train.tsv").is_file():
        pytest.fail(f"GLUE data not found at {path}; set PDA_GLUE_DIR to a glue_data/-style folder")
    return path


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
