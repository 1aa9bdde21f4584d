"""Bad input to every task: unreadable parameters files, absurd values, missing input paths, damaged dataset cards,
frames of absurd declared size: one line, exit 2, before any work."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest
import tifffile
from support import (
    TRAIN,
    one_error,
    outputs_untouched,
    params_file,
    ready_inputs,
    run_here,
    save_model,
    task_paths,
    write_raw,
)

from emdenoise import cli
from emdenoise.config import params as params_mod
from emdenoise.errors import EXIT_BAD_INPUT, InputError
from emdenoise.io import micrographs
from emdenoise.layout import CARD, MAX_FRAME_PIXELS, RAW_FILES


@pytest.mark.parametrize("how", ["invalid UTF-8", "no read permission"])
@pytest.mark.parametrize("task", list(cli.TASKS))
def test_an_unreadable_parameters_file_is_one_line(tmp_path, capsys, task, how):
    paths = task_paths(tmp_path, task)
    bad = paths["parameters_file"]
    if how == "invalid UTF-8":
        bad.write_bytes(b"\xff\xfe\x00bad")
    else:
        if os.geteuid() == 0:
            pytest.skip("root reads a file whatever its mode")
        bad.chmod(0)
    code, err = run_here(capsys, task, paths)
    one_error(code, err, EXIT_BAD_INPUT, str(bad), "cannot read parameters file")
    assert outputs_untouched(paths, task)


SEEDS = [f"{section}.{key}" for section, fields in params_mod.schema().items() for key in fields if key == "seed"]


@pytest.mark.parametrize(
    "key,value", [(key, 2**64) for key in SEEDS] + [("download.dose_max", "1.0e+300"), ("download.timeout", "1.0e+300")]
)
def test_an_absurd_parameter_value_is_one_line_naming_the_maximum(tmp_path, capsys, key, value):
    """Values that used to crash deep inside torch (a seed of 2**64) or numpy and the socket layer (1e300)."""
    task, name = key.split(".")
    paths = task_paths(tmp_path, task)
    code, err = run_here(capsys, task, paths, f"{key}={value}")
    one_error(code, err, EXIT_BAD_INPUT, key, params_mod.schema()[task][name].describe())
    assert outputs_untouched(paths, task)


def test_the_largest_seed_and_huge_image_limits_run(tmp_path, capsys, processed):
    """The seed's maximum works all the way into torch; an image limit with no maximum means all the images."""
    paths = {
        "data_dir": processed,
        "parameters_file": params_file(tmp_path / "p.yaml", train={**TRAIN, "epochs": 1}),
        "model_dir": tmp_path / "models",
        "output_dir": tmp_path / "out",
        "log_dir": tmp_path / "logs",
    }
    code, err = run_here(
        capsys, "train", paths, f"train.seed={params_mod.MAX_SEED}", f"train.max_train_images={10**30}"
    )
    assert code == 0, err
    assert json.loads((tmp_path / "out" / "train_metrics.json").read_text())["n_train"] == 36
    code, err = run_here(
        capsys,
        "test",
        {**paths, "output_dir": tmp_path / "tested"},
        "test.baselines=gaussian",
        "test.device=cpu",
        f"test.max_test_images={10**30}",
        f"test.tune_images={10**30}",
    )
    assert code == 0, err
    assert json.loads((tmp_path / "tested" / "test_metrics.json").read_text())["n_images"] == 8


INPUTS = [(task, name) for task, spec in cli.TASKS.items() for name in spec.inputs]


@pytest.mark.parametrize("task,name", INPUTS)
def test_a_missing_input_path_is_one_line_naming_it(tmp_path, capsys, processed, task, name):
    """Every other input present and good: the one that is missing is what the run stops at."""
    paths = ready_inputs(tmp_path, task, processed)
    paths[name] = tmp_path / "nowhere" / name
    code, err = run_here(capsys, task, paths)
    one_error(code, err, EXIT_BAD_INPUT, str(paths[name]), "not found")
    assert outputs_untouched(paths, task) and not (tmp_path / "nowhere").exists()


def _damage_card(path: Path, how: str) -> None:
    card = json.loads(path.read_text(encoding="utf-8"))
    if how == "cut short":
        path.write_text(path.read_text(encoding="utf-8")[:100], encoding="utf-8")
        return
    if how == "wrong format":
        card["format"] = "emdenoise-data/0"
    elif how == "data_range 0":
        card["data_range"] = 0
    elif how == "std 0":
        card["normalisation"]["clean"]["std"] = 0.0
    path.write_text(json.dumps(card), encoding="utf-8")


@pytest.mark.parametrize(
    "how,field",
    [
        ("cut short", "JSON"),
        ("wrong format", "format"),
        ("data_range 0", "data_range"),
        ("std 0", "normalisation.clean"),
    ],
)
@pytest.mark.parametrize("task", ["train", "test", "study"])
def test_a_damaged_dataset_card_is_one_line_naming_the_field(tmp_path, capsys, processed, task, how, field):
    paths = ready_inputs(tmp_path, task, shutil.copytree(processed, tmp_path / "data"))
    card = paths["data_dir"] / CARD
    _damage_card(card, how)
    code, err = run_here(capsys, task, paths)
    one_error(code, err, EXIT_BAD_INPUT, str(card), field)
    assert outputs_untouched(paths, task)


HUGE_SIDE = 200_000  # 4e10 pixels per frame: HDF5 datasets with no chunk written (a few kB)
SPARSE_SIDE = 20_000  # 4e8 pixels (1.6 GB as float32) in a sparse file: a few kB on disk


def _huge_frame(folder: Path, kind: str) -> tuple[Path, str]:
    """A small file declaring one frame far over MAX_FRAME_PIXELS; return it and the declared ``HxW``."""
    folder.mkdir(parents=True, exist_ok=True)
    if kind.startswith("h5"):
        shape = {"h5 (N, H, W)": (1, HUGE_SIDE, HUGE_SIDE), "h5 (H, W)": (HUGE_SIDE, HUGE_SIDE)}[kind]
        path = folder / "huge.h5"
        with h5py.File(path, "w") as fh:
            fh.create_dataset(
                "frames", shape=shape, dtype=np.float32, chunks=(1,) * (len(shape) - 2) + (256, 256), compression="gzip"
            )
        return path, f"{HUGE_SIDE}x{HUGE_SIDE}"
    path = folder / f"huge.{kind}"
    if kind == "npy":
        np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(1, SPARSE_SIDE, SPARSE_SIDE)).flush()
    elif kind == "tif":
        tifffile.memmap(path, shape=(SPARSE_SIDE, SPARSE_SIDE), dtype=np.float32, photometric="minisblack").flush()
    else:
        import mrcfile

        mrcfile.new_mmap(path, shape=(1, SPARSE_SIDE, SPARSE_SIDE), mrc_mode=2, overwrite=True).close()
    assert path.stat().st_blocks * 512 < 2**20 or kind.startswith("h5")  # sparse: nothing was allocated
    return path, f"{SPARSE_SIDE}x{SPARSE_SIDE}"


@pytest.mark.parametrize("kind", ["h5 (N, H, W)", "h5 (H, W)", "npy", "tif", "mrc"])
def test_a_frame_of_absurd_declared_size_is_refused_by_denoise(tmp_path, capsys, kind):
    path, declared = _huge_frame(tmp_path / "in", kind)
    paths = {
        "input_dir": tmp_path / "in",
        "model_dir": tmp_path / "models",
        "output_dir": tmp_path / "out",
        "parameters_file": params_file(tmp_path / "p.yaml", denoise={"device": "cpu", "precision": "fp32"}),
        "log_dir": tmp_path / "logs",
    }
    save_model(paths["model_dir"])
    code, err = run_here(capsys, "denoise", paths)
    one_error(code, err, EXIT_BAD_INPUT, str(path), declared, str(MAX_FRAME_PIXELS))
    assert not paths["output_dir"].exists()


def _open_here(path: Path) -> bool:
    """Whether this process holds a file descriptor on ``path`` (Linux /proc)."""
    fds = Path("/proc/self/fd")
    return any(os.path.realpath(fds / fd) == str(path.resolve()) for fd in os.listdir(fds))


@pytest.mark.parametrize("kind", ["h5 (N, H, W)", "tif"])
def test_a_refused_input_file_is_closed_at_once(tmp_path, kind):
    """The reader fails after opening the file: the file is closed then, not when the error is forgotten."""
    path, declared = _huge_frame(tmp_path, kind)
    with pytest.raises(InputError, match=declared) as refused:  # the traceback is kept alive meanwhile
        micrographs.open_input(path)
    assert refused.traceback and not _open_here(path)


@pytest.mark.parametrize("layout", ["(N, H, W, 1)", "(N, H, W)", "inference TIFF"])
def test_a_frame_of_absurd_declared_size_is_refused_by_preprocess(tmp_path, capsys, layout):
    raw = write_raw(tmp_path / "raw", 4, 2)
    if layout == "inference TIFF":
        for folder in ("raw", "truth"):
            path, declared = _huge_frame(raw / "inference" / folder, "tif")
        words = [str(raw / "inference" / "raw" / path.name), declared, "32x32"]
    else:
        path = raw / "test" / RAW_FILES["noisy"]
        shape = (1, HUGE_SIDE, HUGE_SIDE) + ((1,) if layout == "(N, H, W, 1)" else ())
        with h5py.File(path, "w") as fh:
            fh.create_dataset(
                "images", shape=shape, dtype=np.float32, chunks=(1, 256, 256) + shape[3:], compression="gzip"
            )
        words = [str(path), f"{HUGE_SIDE}x{HUGE_SIDE}", str(MAX_FRAME_PIXELS)]
    paths = {
        "raw_data_dir": raw,
        "data_dir": tmp_path / "data",
        "parameters_file": params_file(tmp_path / "p.yaml"),
        "log_dir": tmp_path / "logs",
    }
    code, err = run_here(capsys, "preprocess", paths)
    one_error(code, err, EXIT_BAD_INPUT, *words)
    assert not paths["data_dir"].exists()
