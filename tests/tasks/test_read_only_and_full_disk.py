"""Read-only output folders and a full disk (a real 1 MiB tmpfs): one line, earlier files intact. Mounts need root:
without root the read-only cases use chmod and the full-disk cases are skipped, saying why."""

from __future__ import annotations

import errno
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from support import (
    TASK_OUTPUTS,
    TRAIN,
    final_files,
    one_error,
    outputs_untouched,
    params_file,
    read_only,
    run_cmd,
    run_here,
    save_model,
    small_disk,
    task_paths,
    temporaries,
    write_raw,
)

from emdenoise import cli, lock
from emdenoise.errors import EXIT_BAD_INPUT, EXIT_RUNTIME


@pytest.mark.parametrize("task,out", TASK_OUTPUTS + [(task, "log_dir") for task in cli.TASKS])
def test_a_read_only_output_folder_is_refused_before_any_work(tmp_path, capsys, task, out):
    """Earlier files in the folder stay byte for byte, and nothing is added."""
    paths = task_paths(tmp_path, task)
    folder = paths[out]
    (folder / "earlier").mkdir(parents=True)
    (folder / "earlier" / "result.bin").write_bytes(os.urandom(4096))
    (folder / "notes.txt").write_text("an earlier file\n")
    old = final_files(folder)
    with read_only(folder):
        code, err = run_here(capsys, task, paths)
    one_error(code, err, EXIT_BAD_INPUT, str(folder), out)
    assert final_files(folder) == old and sorted(p.name for p in folder.iterdir()) == ["earlier", "notes.txt"]
    assert outputs_untouched({**paths, out: tmp_path / "absent"}, task)


def test_a_read_only_model_folder_met_while_training_is_one_line(tmp_path, capsys, processed):
    models_dir = tmp_path / "models"
    keep = save_model(models_dir, "dncnn", depth=3)
    before = keep.read_bytes()
    (models_dir / "sciml_ae").mkdir()
    paths = {
        "data_dir": processed,
        "parameters_file": params_file(tmp_path / "p.yaml", train={**TRAIN, "epochs": 1}),
        "model_dir": models_dir,
        "output_dir": tmp_path / "out",
        "log_dir": tmp_path / "logs",
    }
    with read_only(models_dir / "sciml_ae"):
        code, err = run_here(capsys, "train", paths)
    one_error(
        code,
        err,
        EXIT_BAD_INPUT,
        str(models_dir / "sciml_ae"),
        "read-only file system" if os.geteuid() == 0 else "permission denied",
    )
    assert keep.read_bytes() == before and list((models_dir / "sciml_ae").iterdir()) == []
    assert not (tmp_path / "out" / "train_metrics.json").exists()


def _fill(folder: Path, leave: int) -> None:
    """Take all but about ``leave`` bytes of the free space of ``folder``'s file system with another file."""
    stat = os.statvfs(folder)
    size = max(stat.f_bavail * stat.f_frsize - leave, 0)
    with open(folder / "other_files.bin", "wb", buffering=0) as fh:
        try:
            while size > 0:
                size -= fh.write(b"\x5a" * min(size, 1 << 16))
        except OSError as exc:  # a file system that counts a little differently: full is full
            assert exc.errno == errno.ENOSPC


def _full_disk_case(tmp_path: Path, task: str, capsys) -> tuple[Path, dict[str, Path], tuple[str, ...]]:
    """Fill the folder under test (a 1 MiB tmpfs) with a small good result first; return (folder, paths, sets)
    of a run that needs far more room."""
    logs = tmp_path / "logs"
    if task == "download":
        folder = tmp_path / "raw"
        params = params_file(
            tmp_path / "p.yaml",
            download={"source": "synthetic", "train_images": 4, "test_images": 2, "image_size": 32, "workers": 1},
        )
        paths = {"raw_data_dir": folder, "parameters_file": params, "log_dir": logs}
        assert run_here(capsys, task, paths)[0] == 0
        return folder, paths, ("download.train_images=300", "download.image_size=64")
    if task == "preprocess":
        folder = tmp_path / "data"
        paths = {
            "raw_data_dir": write_raw(tmp_path / "small", 6, 3),
            "data_dir": folder,
            "parameters_file": params_file(tmp_path / "p.yaml"),
            "log_dir": logs,
        }
        assert run_here(capsys, task, paths)[0] == 0
        write_raw(tmp_path / "bigger", 300, 20, size=64)
        return folder, {**paths, "raw_data_dir": tmp_path / "bigger"}, ()
    if task == "train":
        folder = tmp_path / "models"
        save_model(folder, "dncnn", depth=3)  # an earlier model (about 10 kB)
        return (
            folder,
            {
                "data_dir": tmp_path / "data",
                "parameters_file": params_file(tmp_path / "p.yaml", train={**TRAIN, "epochs": 2}),
                "model_dir": folder,
                "output_dir": tmp_path / "out",
                "log_dir": logs,
            },
            (),
        )
    if task in ("test", "study"):
        folder = tmp_path / "out"
        sections = {
            "train": {"dncnn_depth": 3, "precision": "fp32"},
            "test": {
                "baselines": ["gaussian"],
                "tune_images": 2,
                "figure_images": 1,
                "device": "cpu",
                "precision": "fp32",
            },
            "study": {
                "models": ["dncnn"],
                "train_sizes": [4],
                "epochs": 1,
                "batch_size": 4,
                "device": "cpu",
                "baselines": ["gaussian"],
                "dose_bins": 1,
            },
        }
        paths = {
            "data_dir": tmp_path / "data",
            "output_dir": folder,
            "log_dir": logs,
            "parameters_file": params_file(tmp_path / "p.yaml", **sections),
        }
        if task == "test":
            paths["model_dir"] = save_model(tmp_path / "models").parents[1]
        assert run_here(capsys, task, paths)[0] == 0
        # a run with more to write finds the disk full: test with room for its small files, not its figures
        # (all or none of them must change); study with none (its next cell's model files)
        _fill(folder, leave=16 << 10 if task == "test" else 0)
        return (
            folder,
            paths,
            (("test.baselines=[gaussian, median]",) if task == "test" else ("study.train_sizes=[4, 8]",)),
        )
    folder = tmp_path / "out"
    (tmp_path / "in").mkdir()
    np.save(tmp_path / "in" / "small.npy", np.ones((32, 32), np.float32))
    save_model(tmp_path / "models")
    paths = {
        "input_dir": tmp_path / "in",
        "model_dir": tmp_path / "models",
        "output_dir": folder,
        "parameters_file": params_file(tmp_path / "p.yaml", denoise={"device": "cpu", "precision": "fp32"}),
        "log_dir": logs,
    }
    assert run_here(capsys, task, paths)[0] == 0
    for i in range(3):  # 3 x 1 MiB of output
        np.save(tmp_path / "in" / f"big{i}.npy", np.ones((16, 128, 128), np.float32))
    return folder, paths, ()


@pytest.mark.parametrize(
    "task",
    [
        "download",
        "preprocess",
        pytest.param("train", marks=pytest.mark.slow),
        pytest.param("denoise", marks=pytest.mark.slow),
        pytest.param("test", marks=pytest.mark.slow),  # 4-5 s of CPU: at the fast limit
        pytest.param("study", marks=pytest.mark.slow),
    ],
)
def test_a_full_disk_is_one_line_and_earlier_files_stay_intact(tmp_path, capsys, processed, task):
    if task in ("train", "test", "study"):
        shutil.copytree(processed, tmp_path / "data")
    folder = (
        tmp_path
        / {"download": "raw", "preprocess": "data", "train": "models", "denoise": "out", "test": "out", "study": "out"}[
            task
        ]
    )
    with small_disk(folder):
        folder, paths, sets = _full_disk_case(tmp_path, task, capsys)
        old = final_files(folder)
        assert old
        code, err = run_cmd(task, paths, *sets)
        one_error(code, err, EXIT_RUNTIME, str(folder), "no space left")  # exit 1: not a crash (SIGSEGV, SIGBUS)
        now = final_files(folder)  # whatever is at a final name is complete ...
        assert {rel: now[rel] for rel in old} == old  # ... and the earlier files are as they were
        assert temporaries(folder) == [] and not (folder / lock.LOCK_NAME).exists()
