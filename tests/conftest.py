"""Shared test settings and fixtures: no progress bars, torch on one thread and fast retries for every test,
deterministic property-based tests, small raw and processed data folders (the helpers behind them are in
support.py, the local HTTP(S) server in local_http.py, the guard that fails an unmarked slow test and the
``extra`` marker in fast_subset.py)."""

import functools
import os
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
import yaml
from fast_subset import pytest_runtest_call, pytest_runtest_setup  # noqa: F401  (hooks: see fast_subset.py)
from hypothesis import settings
from support import argv, params_file, write_raw
from training_data import make_data_dir

from emdenoise import cli
from emdenoise.data.acquire.fetch import RETRY_BASE_ENV
from emdenoise.tasks import train as train_task
from emdenoise.training import loop as training

os.environ.setdefault("EMDENOISE_PROGRESS", "0")

# Every hypothesis test draws the same examples on every run, so CI cannot pass one day and fail the next on
# the same code; HYPOTHESIS_PROFILE=explore draws fresh ones (for hunting new failures locally).
settings.register_profile("ci", derandomize=True)
settings.register_profile("explore", derandomize=False)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

ROOT = Path(__file__).resolve().parents[1]
# Real micrographs recorded by microscopes (never copied into the repository): the shared folder beside the
# repository, on the development machines and in CI; tests that use it skip where it is absent.
REALDATA = ROOT.parent / "shared" / "realdata"


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
def realdata() -> Path:
    """The folder of real micrographs (``<repo>/../shared/realdata``, see its README); skips where absent."""
    if not (REALDATA / "README.md").is_file():
        pytest.skip(f"{REALDATA} not here: real micrographs are read from it, never copied into the repository")
    return REALDATA


@pytest.fixture(scope="session")
def example_files() -> dict[str, Path]:
    """The real DM3 and Velox EMD files of the temul-toolkit 0.1.9 wheel, fetched once into the cache
    (:func:`emdenoise.data.acquire.examples.example_files`, ``$EMDENOISE_CACHE`` or ``~/.cache/emdenoise``);
    skips, naming why, where the package index cannot be reached, except in CI (``CI`` set), where the index is
    reachable and a skip would hide the real files from the suite: there it fails. A wrong checksum fails."""
    from emdenoise.data.acquire import examples
    from emdenoise.errors import RuntimeFailure

    try:
        return examples.example_files()
    except RuntimeFailure as exc:
        if os.environ.get("CI"):
            pytest.fail(f"the real microscope files could not be fetched in CI: {exc}")
        pytest.skip(f"the real microscope files could not be fetched: {exc}")


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


# Training and engine fixtures: a tiny processed data folder to train on, the train command run in-process, and
# the hook that interrupts a training run after an epoch (a callback injected into the engine, not a global).


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


@pytest.fixture
def test_metrics() -> dict:
    """A ``test_metrics.json`` structure: the input, one tuned filter, one model, two dose bins."""

    def row(kind, psnr, params=None):
        return {
            "kind": kind,
            "psnr_mean": psnr,
            "psnr_std": 1.0,
            "ssim_mean": 0.5,
            "ssim_std": 0.1,
            "mse_mean": 1e-3,
            "images_per_s": None if kind == "input" else 50.0,
            "seconds_per_image": 0.0 if kind == "input" else 0.02,
            "params": params or {},
        }

    return {
        "n_images": 4,
        "data_range": 2.5,
        "data_range_definition": "max - min of the clean test set",
        "device": "cpu",
        "precision": "fp32",
        "methods": {
            "noisy": row("input", 10.0),
            "gaussian": row("classical", 20.0, {"sigma": 1.5, "gain": 0.9, "offset": 0.1}),
            "unet": row("deep", 25.0, {"model": "unet", "parameters": 1234}),
        },
        "psnr_by_dose": {
            "bins": [{"dose_min": 5.0, "dose_max": 20.0, "n": 2}, {"dose_min": 50.0, "dose_max": 200.0, "n": 2}],
            "methods": {"noisy": [8.0, 12.0], "gaussian": [19.0, 21.0], "unet": [24.0, None]},
        },
    }
