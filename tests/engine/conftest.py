"""Fixtures of the engine tests: quiet single-threaded torch, a tiny processed data folder to train on, the
train command run in-process, and the hook that interrupts a training run after an epoch (a callback injected
into the engine, not a global of the production code)."""

from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
import yaml
from training_data import make_data_dir

from emdenoise import cli
from emdenoise.engine import training
from emdenoise.tasks import train as train_task


@pytest.fixture(autouse=True)
def _quiet(monkeypatch):
    monkeypatch.setenv("EMDENOISE_PROGRESS", "0")
    torch.set_num_threads(1)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    return make_data_dir(tmp_path_factory.mktemp("data"))


TrainCli = Callable[..., tuple[int, Path, Path]]


@pytest.fixture
def train_cli() -> TrainCli:
    """``train_cli(tmp, data_dir, model_dir=None, **train)``: run ``emdenoise train`` in-process with a train:
    section (defaults for a quick CPU run); returns (exit code, model_dir, output_dir)."""

    def run(tmp: Path, data_dir: Path, model_dir: Path | None = None, **train) -> tuple[int, Path, Path]:
        section = {
            "model": "sciml_ae",
            "epochs": 2,
            "batch_size": 4,
            "lr": 3e-3,
            "device": "cpu",
            "precision": "fp32",
            "lr_schedule": "cosine",
            **train,
        }
        tmp.mkdir(parents=True, exist_ok=True)
        params = tmp / "params.yaml"
        params.write_text(yaml.safe_dump({"train": section}))
        model_dir = model_dir or tmp / "models"
        out = tmp / "output"
        code = cli.main(
            [
                "train",
                f"--data_dir={data_dir}",
                f"--parameters_file={params}",
                f"--model_dir={model_dir}",
                f"--output_dir={out}",
                f"--log_dir={tmp / 'logs'}",
            ]
        )
        return code, model_dir, out

    return run


@pytest.fixture
def stop_after_epoch(monkeypatch) -> Callable[[int | None], None]:
    """``stop_after_epoch(n)``: the train task's runs raise KeyboardInterrupt right after epoch ``n``'s
    checkpoint is written (a crash); ``stop_after_epoch(None)``: run normally again."""

    def stop(epoch: int | None) -> None:
        def hook(done: int) -> None:
            if done == epoch:
                raise KeyboardInterrupt(f"test: stop after epoch {done}")

        monkeypatch.setattr(train_task, "train_model", functools.partial(training.train_model, on_epoch_end=hook))

    return stop
