"""Honest failures through the command line (issue 27): a frame without signal is denoised with its undefined
numbers written as null (no crash, nothing half-written); an output path that cannot be written is one line,
exit 2, before any work; a header over the memory budget is refused naming the parameter that raises it."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import tifffile
from support import ENV, ROOT, one_error, params_file, run_here, save_model, write_data_dir

from emdenoise import cli
from emdenoise.classical import filters
from emdenoise.errors import EXIT_BAD_INPUT
from emdenoise.evaluation import consistency

CPU = ("denoise.device=cpu", "denoise.precision=fp32", "denoise.tile_size=32", "denoise.tile_overlap=8")


@pytest.fixture
def denoise_paths(tmp_path):
    save_model(tmp_path / "models")
    (tmp_path / "in").mkdir()
    return {"input_dir": tmp_path / "in", "model_dir": tmp_path / "models", "output_dir": tmp_path / "out"}


def test_an_all_zero_frame_is_denoised_and_its_undefined_check_is_null(denoise_paths, capsys):
    """A blanked beam: the consistency check has no counts to compare with; it used to crash the run with
    'Out of range float values are not JSON compliant: nan' and leave the staged image behind."""
    tifffile.imwrite(denoise_paths["input_dir"] / "blank.tif", np.zeros((2, 48, 48), np.uint16))
    code, err = run_here(capsys, "denoise", denoise_paths, *CPU)
    assert code == 0, err
    out = denoise_paths["output_dir"]
    text = (out / "blank.tif.json").read_text()
    check = json.loads(text)["consistency"]  # strict JSON: no NaN
    assert "NaN" not in text and "Infinity" not in text
    assert [frame["deviation"] for frame in check["frames"]] == [None, None]
    assert all("no signal" in frame["undefined"] for frame in check["frames"])
    assert check["worst_deviation"] is None and not check["inconsistent"]
    assert tifffile.imread(out / "blank.tif").shape == (2, 48, 48)
    assert sorted(p.name for p in out.iterdir()) == ["blank.tif", "blank.tif.json"]  # no staging left


@pytest.mark.parametrize("task", ["denoise", "download", "preprocess", "train", "test", "study"])
def test_an_output_folder_under_a_file_is_one_line_and_nothing_is_written(tmp_path, capsys, task):
    blocker = tmp_path / "blocker"
    blocker.write_text("a regular file\n")
    output = cli.TASKS[task].outputs[0]
    paths = {output: blocker / "sub", "log_dir": tmp_path / "logs", "parameters_file": tmp_path / "p.yaml"}
    (tmp_path / "p.yaml").write_text("{}\n")
    code, err = run_here(capsys, task, paths)
    one_error(code, err, EXIT_BAD_INPUT, f"{blocker / 'sub'}: {output}: cannot be created: {blocker} is a file")
    assert blocker.read_text() == "a regular file\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["blocker", "logs", "p.yaml"]


def test_an_output_folder_that_is_a_file_is_one_line(denoise_paths, capsys):
    denoise_paths["output_dir"].write_text("not a folder")
    code, err = run_here(capsys, "denoise", denoise_paths, *CPU)
    one_error(
        code, err, EXIT_BAD_INPUT, f"{denoise_paths['output_dir']}: output_dir: expected an output folder, found a file"
    )


def test_export_under_a_file_is_one_line_exit_2_and_nothing_written(denoise_paths, tmp_path):
    blocker = tmp_path / "blocker"
    blocker.write_text("x")
    res = subprocess.run(
        [
            sys.executable,
            "-m",
            "emdenoise",
            "export",
            f"--model_dir={denoise_paths['model_dir']}",
            "--format=torchscript",
            f"--output={blocker / 'model.pt'}",
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=ENV,
        timeout=300,
    )
    one_error(res.returncode, res.stderr, EXIT_BAD_INPUT, f"{blocker / 'model.pt'}: --output: cannot be created")
    assert blocker.read_text() == "x" and sorted(p.name for p in tmp_path.iterdir()) == ["blocker", "in", "models"]


def test_a_frame_over_the_budget_names_the_parameter_that_raises_it(denoise_paths, capsys):
    np.save(denoise_paths["input_dir"] / "big.npy", np.zeros((512, 512), np.float32))
    code, err = run_here(capsys, "denoise", denoise_paths, *CPU, "denoise.memory_limit_gb=0.0005")
    line = one_error(code, err, EXIT_BAD_INPUT, "big.npy: shape: the header claims frames of 512x512 float32")
    assert "1.0 MB in memory at once, over the memory budget of 500.0 kB (denoise.memory_limit_gb)" in line
    assert not denoise_paths["output_dir"].exists() or not any(denoise_paths["output_dir"].rglob("*.npy"))
    code, err = run_here(capsys, "denoise", denoise_paths, *CPU, "denoise.memory_limit_gb=0.01")
    assert code == 0, err


# ---------------------------------------------------------------------------------------- data that are not counts


def test_negative_frames_are_refused_by_noisy_only_preprocess_naming_file_frame_and_value(tmp_path, capsys):
    folder = tmp_path / "mine"
    folder.mkdir()
    stack = np.random.default_rng(0).poisson(20, (3, 64, 64)).astype(np.float32)
    stack[1, 5, 7] = -2.5  # e.g. a dark reference subtracted
    tifffile.imwrite(folder / "stack.tif", stack, photometric="minisblack")
    p = params_file(tmp_path / "p.yaml", download={"source": f"micrographs:{folder}"}, preprocess={"tile_size": 32})
    raw, logs = tmp_path / "raw", tmp_path / "logs"
    code, err = run_here(capsys, "download", {"raw_data_dir": raw, "parameters_file": p, "log_dir": logs})
    assert code == 0, err
    paths = {"raw_data_dir": raw, "data_dir": tmp_path / "data", "parameters_file": p, "log_dir": logs}
    code, err = run_here(capsys, "preprocess", paths)
    one_error(
        code, err, EXIT_BAD_INPUT, "stack.tif: frame 1: expected counts (values >= 0), got a smallest value of -2.5"
    )
    assert not (tmp_path / "data").exists() or not any((tmp_path / "data").iterdir())


def test_negative_frames_are_refused_by_poisson_split_training(tmp_path, capsys):
    rng = np.random.default_rng(1)
    noisy = rng.poisson(5, (6, 32, 32)).astype(np.float32) - 1.0  # whole numbers, but some of them -1
    clean = rng.random((6, 32, 32), np.float32) + 4.0
    norm = {"noisy": {"mean": 4.0, "std": 2.0}, "clean": {"mean": 4.0, "std": 1.0}}
    data = write_data_dir(tmp_path / "data", {s: (noisy, clean) for s in ("train", "val", "test")}, norm)
    p = params_file(tmp_path / "p.yaml", train={"supervision": "poisson_split", "epochs": 1, "device": "cpu"})
    paths = {"data_dir": data, "model_dir": tmp_path / "models", "output_dir": tmp_path / "out"}
    code, err = run_here(capsys, "train", {**paths, "parameters_file": p, "log_dir": tmp_path / "logs"})
    one_error(
        code,
        err,
        EXIT_BAD_INPUT,
        "train.h5: noisy: expected counts (values >= 0), got a smallest value of -1",
        "poisson_split",
    )
    assert not any((tmp_path / "models").rglob("*.h5")) if (tmp_path / "models").exists() else True


def test_the_count_scale_estimate_refuses_what_cannot_be_counts():
    rng = np.random.default_rng(2)
    frame = rng.poisson(10, (32, 32)).astype(np.float64)
    assert filters.estimate_count_scale(frame) == pytest.approx(1.0, rel=0.3)
    frame[0, 0] = -0.75
    with pytest.raises(filters.NotCounts, match="got a smallest value of -0.75"):
        filters.estimate_count_scale(frame)
    frame[0, 0] = np.inf
    with pytest.raises(filters.NotCounts, match="found NaN or infinity"):
        filters.estimate_count_scale(frame)
    summary = consistency.check(frame, np.full((32, 32), 10.0)).summary()  # the check: null, with the reason
    assert summary["deviation"] is None and summary["mean_counts"] is None and not summary["inconsistent"]
    assert (
        "the input is not counts: expected counts (finite values >= 0), found NaN or infinity" in summary["undefined"]
    )


def test_a_beam_aware_filter_given_negative_frames_is_one_line_naming_file_and_method(denoise_paths, capsys):
    """denoise --method wiener on frames that cannot be counts: exit 2, one line naming the file, the parameter and
    the smallest value, and nothing written; a filter that takes any values denoises the same file."""
    frames = np.random.default_rng(0).normal(0.0, 1.0, (2, 48, 48)).astype(np.float32)
    tifffile.imwrite(denoise_paths["input_dir"] / "offset.tif", frames)
    paths = {k: v for k, v in denoise_paths.items() if k != "model_dir"}
    code, err = run_here(capsys, "denoise", paths, "denoise.method=wiener")
    one_error(code, err, EXIT_BAD_INPUT, "offset.tif: denoise.method: wiener needs frames of counts", "value of -")
    assert not (denoise_paths["output_dir"] / "offset.tif").exists()
    code, err = run_here(capsys, "denoise", paths, "denoise.method=gaussian")
    assert code == 0, err
    assert tifffile.imread(denoise_paths["output_dir"] / "offset.tif").shape == (2, 48, 48)
