"""Shared test settings: no progress bars in test logs, deterministic property-based tests, the repository root."""

import os
from pathlib import Path

import pytest
from hypothesis import settings

os.environ.setdefault("EMDENOISE_PROGRESS", "0")

# Every hypothesis test draws the same examples on every run, so CI cannot pass one day and fail the next on
# the same code; HYPOTHESIS_PROFILE=explore draws fresh ones (for hunting new failures locally).
settings.register_profile("ci", derandomize=True)
settings.register_profile("explore", derandomize=False)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def repo_root() -> Path:
    return ROOT
