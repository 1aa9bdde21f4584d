"""Shared test settings and fixtures: no progress bars, torch on one thread and fast retries for every test,
deterministic property-based tests, small raw and processed data folders (the helpers behind them are in
support.py, the local HTTP(S) server in local_http.py)."""

import os
from pathlib import Path

import pytest
import torch
from hypothesis import settings
from support import argv, params_file, write_raw

from emdenoise import cli
from emdenoise.data.fetch import RETRY_BASE_ENV

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


@pytest.fixture(autouse=True)
def _environment(monkeypatch):
    torch.set_num_threads(1)
    monkeypatch.setenv(RETRY_BASE_ENV, "0.01")
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy"):
        monkeypatch.delenv(name, raising=False)  # the test servers are on 127.0.0.1


@pytest.fixture(scope="session")
def processed(tmp_path_factory) -> Path:
    """A small processed data_dir (36 train, 4 val, 8 test pairs of 32x32), made by the preprocess task."""
    tmp = tmp_path_factory.mktemp("processed")
    write_raw(tmp / "raw", 40, 8)
    code = cli.main(
        argv(
            "preprocess",
            {
                "raw_data_dir": tmp / "raw",
                "data_dir": tmp / "data",
                "parameters_file": params_file(tmp / "p.yaml"),
                "log_dir": tmp / "logs",
            },
        )
    )
    assert code == 0
    return tmp / "data"


@pytest.fixture(scope="session")
def big_raw(tmp_path_factory) -> Path:
    """A raw set large enough that preprocess writes for a second or more (1500 + 100 pairs of 64x64)."""
    return write_raw(tmp_path_factory.mktemp("big") / "raw", 1500, 100, size=64, seed=1)
