"""The denoise task under torchrun: two real CPU processes (gloo) share the files, rank 0 commits, and the
outputs are those of one process (pixel for pixel, byte-equal: each file is denoised whole by one process
with the same code and thread count); a failing process fails the whole run and nothing is committed."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest
import tifffile
from support import ROOT, argv, final_files, read_frames, run_cmd, save_model, task_paths, temporaries, torchrun

from emdenoise.layout import MODEL_FILE
from emdenoise.runtime import distributed

# where the provenance differs between two runs of the same command: when, where to, and how fast
SETS = ("denoise.device=cpu", "denoise.pattern=**/*")
RUN_SPECIFIC = {"created", "seconds", "frames_per_s", "file", "device"}


def _inputs(folder: Path) -> None:
    """Four files of 1 to 4 frames (TIFF and NPY, one in a subfolder): the processes get two each."""
    rng = np.random.default_rng(0)
    (folder / "sub").mkdir(parents=True)
    tifffile.imwrite(folder / "a.tif", rng.random((4, 40, 36), dtype=np.float32), photometric="minisblack")
    np.save(folder / "b.npy", rng.random((3, 40, 36), dtype=np.float32))
    np.save(folder / "sub" / "c.npy", rng.random((2, 24, 40), dtype=np.float32))
    tifffile.imwrite(folder / "sub" / "d.tif", rng.random((40, 36), dtype=np.float32), photometric="minisblack")


def _paths(tmp_path: Path, out: str) -> dict[str, Path]:
    paths = task_paths(tmp_path, "denoise")
    paths["model_dir"], paths["input_dir"] = tmp_path / "models", tmp_path / "in"
    paths["output_dir"], paths["log_dir"] = tmp_path / out, tmp_path / f"{out}-logs"
    return paths


def _strip(obj):
    if isinstance(obj, dict):
        return {k: _strip(v) for k, v in obj.items() if k not in RUN_SPECIFIC}
    return [_strip(v) for v in obj] if isinstance(obj, list) else obj


@pytest.fixture
def prepared(tmp_path) -> Path:
    save_model(tmp_path / "models", "sciml_ae")
    _inputs(tmp_path / "in")
    return tmp_path


@pytest.mark.slow  # each run starts two interpreters that import torch
def test_two_processes_denoise_like_one(prepared):
    tmp_path = prepared
    code, err = run_cmd("denoise", _paths(tmp_path, "one"), *SETS)
    assert code == 0, err
    done = torchrun(["-m", "emdenoise", *argv("denoise", _paths(tmp_path, "two"), SETS)], ROOT)
    assert done.returncode == 0, done.stderr[-4000:]
    one, two = tmp_path / "one", tmp_path / "two"
    outputs = ["a.tif", "b.npy", "sub/c.npy", "sub/d.tif"]
    assert sorted(final_files(two)) == sorted(final_files(one)) == sorted(outputs + [f"{o}.json" for o in outputs])
    for rel in outputs:
        assert np.array_equal(read_frames(two / rel), read_frames(one / rel)), rel
        first, second = (json.loads((folder / f"{rel}.json").read_text()) for folder in (one, two))
        assert _strip(second) == _strip(first)
    assert temporaries(two) == [] and not list(two.rglob(".staging"))
    # the files were shared out, each denoised once: rank 0's log names only its share, the summary all
    assert "denoised 10 frame(s)" in done.stderr


@pytest.mark.slow
def test_a_failing_process_fails_the_run_and_nothing_is_committed(prepared):
    """A NaN frame in a file of the second process's share: the run fails, the first process says another
    one failed, no output reaches its final name (finished files stay staged for the next run)."""
    tmp_path = prepared
    frames = np.load(tmp_path / "in" / "b.npy")
    frames[2, 5, 5] = np.nan
    np.save(tmp_path / "in" / "b.npy", frames)
    files = [4, 3, 2, 1]  # frames of a.tif, b.npy, sub/c.npy, sub/d.tif, in the order the task sorts them
    owners = distributed.assign(files, distributed.World(0, 2))
    assert owners[1] == 1  # b.npy is the second process's
    paths = _paths(tmp_path, "two")
    done = torchrun(["-m", "emdenoise", *argv("denoise", paths, SETS)], ROOT)
    assert done.returncode != 0
    ours = done.stderr.split("torch/distributed/elastic")[0]  # before torchrun's own report (a traceback)
    errors = [line for line in ours.splitlines() if "error:" in line]
    assert "Traceback" not in ours and len(errors) == 2, ours
    assert any("b.npy: frame 2: expected finite pixel values" in line for line in errors), errors  # rank 1
    assert any("another process of this run failed" in line for line in errors), errors  # rank 0
    assert final_files(paths["output_dir"]) == {}
    assert temporaries(paths["output_dir"]) == []
    assert (tmp_path / "models" / "sciml_ae" / MODEL_FILE).is_file()


def test_the_slurm_script_runs_denoise_under_torchrun_on_every_node(tmp_path):
    """run/slurm-multinode.sbatch with TASK=denoise (DRY_RUN: the command it would give srun)."""
    (tmp_path / "parameters").mkdir()
    (tmp_path / "parameters" / "p.yaml").write_text("{}\n")
    env = {**os.environ, "DRY_RUN": "1", "TASK": "denoise", "SLURM_JOB_NUM_NODES": "3", "GPUS_PER_NODE": "4"}
    script = str(ROOT / "run" / "slurm-multinode.sbatch")
    res = subprocess.run(["bash", script, "parameters/p.yaml", str(tmp_path)], env=env, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    assert "srun --nodes=3 --ntasks-per-node=1 --kill-on-bad-exit=1 --gres=gpu:4" in res.stdout
    assert '-m emdenoise "$TASK"' in res.stdout and "TASK=denoise" in res.stdout and "NPROC=4" in res.stdout
    bad = subprocess.run(
        ["bash", script, "parameters/p.yaml", str(tmp_path)],
        env={**env, "TASK": "test"},
        capture_output=True,
        text=True,
    )
    assert bad.returncode == 2 and "expected train or denoise" in bad.stderr
