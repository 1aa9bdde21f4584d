"""Shared test settings: no progress bars in test logs, and the repository root."""

import os
from pathlib import Path

import pytest

os.environ.setdefault("EMDENOISE_PROGRESS", "0")

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def repo_root() -> Path:
    return ROOT
