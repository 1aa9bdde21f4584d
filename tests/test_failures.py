"""Faults and hostile input, end to end (issue 6).

- ``kill -9`` at a random moment while download, preprocess, train or denoise is writing: at that moment every
  file at a final name is complete (old or new), and the same command again ends where an uninterrupted run ends;
- two runs into one output folder (exit 3), a lock left by a killed run (blocks nothing), SIGTERM;
- bad input to every task: unreadable parameters files, absurd values, missing input paths, damaged dataset
  cards, frames of absurd declared size: one line, exit 2, before any work;
- read-only output folders and a full disk (a real 1 MiB tmpfs): one line, earlier files intact;
- model files and checkpoints carrying a pickle, from another architecture or another format version: refused
  without running anything;
- download sources answering 403, HTML instead of a bucket listing, or stopping mid-stream;
- random and damaged bytes given to every reader: an InputError, never another exception, never a crash
  (hypothesis; each read in a forked child, so a reader that kills its process fails the test, not pytest).

The real command (``python -m emdenoise``) runs where the process itself matters (kill, lock, disk full: HDF5
must not crash at exit); ``cli.main`` runs in-process where the command line adds nothing but torch's start-up
time. Mounts (a read-only bind, a small tmpfs) need root: without root the read-only cases use chmod and the
full-disk cases are skipped, saying why.
"""

from __future__ import annotations

import contextlib
import errno
import io
import json
import os
import pickle
import random
import select
import shutil
import signal
import socket
import subprocess
import sys
import time
import traceback
import zipfile
from pathlib import Path
from typing import Callable

import h5py
import numpy as np
import pytest
import tifffile
import torch
import yaml
from hypothesis import HealthCheck, given, settings, strategies as st
from local_http import LocalServer

from emdenoise import cli, lock, models
from emdenoise.io import h5safe, micrographs, modelfile
from emdenoise.data import splits as data_mod
from emdenoise import params as params_mod
from emdenoise.errors import EXIT_BAD_INPUT, EXIT_BUSY, EXIT_INTERRUPTED, EXIT_RUNTIME, BusyError, InputError
from emdenoise.data.fetch import RETRY_BASE_ENV
from emdenoise.outputs import STAGING_DIR
from emdenoise.layout import CARD, MAX_FRAME_PIXELS, RAW_FILES
from emdenoise.data import raw as raw_layout
from emdenoise.data.download import key_to_relpath

ROOT = Path(__file__).resolve().parents[1]
ENV = {k: v for k, v in os.environ.items() if k.lower() not in ("http_proxy", "https_proxy", "all_proxy")}
ENV.update({"EMDENOISE_PROGRESS": "0", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", RETRY_BASE_ENV: "0.01"})
NORM = {"noisy": {"mean": 0.5, "std": 0.3}, "clean": {"mean": 0.5, "std": 0.25}}
TRAIN = {"model": "sciml_ae", "epochs": 6, "batch_size": 4, "lr": 3e-3, "device": "cpu", "precision": "fp32"}
VOLATILE = {"created", "seconds", "images_per_s", "frames_per_s"}   # times and speeds: differ run to run


@pytest.fixture(autouse=True)
def _environment(monkeypatch):
    torch.set_num_threads(1)
    monkeypatch.setenv(RETRY_BASE_ENV, "0.01")
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy"):
        monkeypatch.delenv(name, raising=False)       # the test servers are on 127.0.0.1


# -- running the command ------------------------------------------------------------------------------------------
def argv(task: str, paths: dict[str, Path], sets: tuple[str, ...] = ()) -> list[str]:
    return [task, *(f"--{name}={path}" for name, path in paths.items()), *(a for s in sets for a in ("--set", s))]


def run_cmd(task: str, paths: dict[str, Path], *sets: str, timeout: float = 300) -> tuple[int, str]:
    """``python -m emdenoise TASK ...`` in a fresh process: (exit code, stderr)."""
    res = subprocess.run([sys.executable, "-m", "emdenoise", *argv(task, paths, sets)], capture_output=True,
                         text=True, cwd=ROOT, env=ENV, timeout=timeout)
    return res.returncode, res.stderr


def start_cmd(task: str, paths: dict[str, Path], stderr: Path, *sets: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "emdenoise", *argv(task, paths, sets)], cwd=ROOT, env=ENV,
                            stdout=subprocess.DEVNULL, stderr=open(stderr, "w"))


def run_here(capsys, task: str, paths: dict[str, Path], *sets: str) -> tuple[int, str]:
    """The same command through ``cli.main`` in this process: (exit code, stderr)."""
    capsys.readouterr()
    code = cli.main(argv(task, paths, sets))
    return code, capsys.readouterr().err


def one_error(code: int, stderr: str, expected: int, *words: str) -> str:
    """The run failed with ``expected``, printed exactly one ``error:`` line holding ``words``, and no traceback."""
    assert "Traceback" not in stderr, stderr
    lines = [line for line in stderr.splitlines() if "error:" in line]
    assert code == expected, stderr
    assert len(lines) == 1, stderr
    for word in words:
        assert word.lower() in lines[0].lower(), (word, lines[0])
    return lines[0]


def params_file(path: Path, **sections) -> Path:
    path.write_text(yaml.safe_dump(sections))
    return path


# -- data -----------------------------------------------------------------------------------------------------------
def write_raw(raw: Path, n_train: int, n_test: int, size: int = 32, seed: int = 0) -> Path:
    """The em_graphene_sim layout, written with h5py: random float32 images (N, size, size, 1)."""
    rng = np.random.default_rng(seed)
    for split, n in (("train", n_train), ("test", n_test)):
        (raw / split).mkdir(parents=True, exist_ok=True)
        for kind in ("noisy", "clean"):
            with h5py.File(raw / split / RAW_FILES[kind], "w") as fh:
                fh.create_dataset("images", data=rng.random((n, size, size, 1), dtype=np.float32),
                                  chunks=(1, size, size, 1))
    return raw


@pytest.fixture(scope="module")
def processed(tmp_path_factory) -> Path:
    """A small processed data_dir (36 train, 4 val, 8 test pairs of 32x32), made by the preprocess task."""
    tmp = tmp_path_factory.mktemp("processed")
    write_raw(tmp / "raw", 40, 8)
    code = cli.main(argv("preprocess", {"raw_data_dir": tmp / "raw", "data_dir": tmp / "data",
                                        "parameters_file": params_file(tmp / "p.yaml"), "log_dir": tmp / "logs"}))
    assert code == 0
    return tmp / "data"


@pytest.fixture(scope="module")
def big_raw(tmp_path_factory) -> Path:
    """A raw set large enough that preprocess writes for a second or more (1500 + 100 pairs of 64x64)."""
    return write_raw(tmp_path_factory.mktemp("big") / "raw", 1500, 100, size=64, seed=1)


def save_model(model_dir: Path, name: str = "sciml_ae", seed: int = 0, **options) -> Path:
    torch.manual_seed(seed)
    path = model_dir / name / "em_denoise_model.h5"
    modelfile.save_model(path, models.build(name, **options), {"model": name, "options": options,
                                                              "normalisation": NORM, "data_range": 1.0})
    return path


# -- looking at folders ---------------------------------------------------------------------------------------------
def _strip(obj):
    if isinstance(obj, dict):
        return {k: _strip(v) for k, v in obj.items() if k not in VOLATILE}
    if isinstance(obj, list):
        return [_strip(v) for v in obj]
    return obj


def _content(path: Path):
    """Check that ``path`` is complete in its format and return what to compare it by."""
    suffix = path.suffix.lower()
    if suffix == ".json":
        return _strip(json.loads(path.read_text(encoding="utf-8")))
    if suffix in (".h5", ".hdf5"):
        with h5py.File(path, "r") as fh:      # a partial HDF5 file does not open, or its data do not read
            fh.visititems(lambda name, obj: obj[()] if isinstance(obj, h5py.Dataset) else None)
    elif suffix == ".npy":
        np.load(path, allow_pickle=False)
    elif suffix in (".tif", ".tiff"):
        tifffile.imread(path)
    return path.read_bytes()


def final_files(folder: Path) -> dict[str, object]:
    """rel path -> content of every file at a final name under ``folder`` (hidden names, hidden folders and
    ``.part`` files are work in progress), each checked to be complete."""
    if not folder.is_dir():
        return {}
    found = {}
    for path in sorted(folder.rglob("*")):
        rel = path.relative_to(folder)
        if path.is_file() and not any(p.startswith(".") for p in rel.parts) and not path.name.endswith(".part"):
            found[rel.as_posix()] = _content(path)
    return found


def temporaries(folder: Path) -> list[Path]:
    """Files that atomic writers and downloads work in (hidden temporaries, .part files, staging folders)."""
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.rglob("*") if p.is_file() and (
        (p.name.startswith(".") and p.name.endswith(".tmp")) or p.name.endswith(".part")
        or any(part.startswith(".extract-") for part in p.relative_to(folder).parts)))


def assert_old_or_new(now: dict, old: dict, new: dict) -> None:
    """Each file is either the one from before the run or the one an uninterrupted run writes."""
    for rel, content in now.items():
        assert content == old.get(rel) or content == new.get(rel), f"{rel} is neither the old nor the new file"


# -- killing --------------------------------------------------------------------------------------------------------
def wait_until(proc: subprocess.Popen, ready: Callable[[], bool], timeout: float = 240) -> None:
    deadline = time.monotonic() + timeout
    while not ready():
        assert proc.poll() is None, f"the run ended (exit {proc.returncode}) before it started writing"
        assert time.monotonic() < deadline, "the run did not start writing in time"
        time.sleep(0.002)


def kill_9(proc: subprocess.Popen, max_delay: float) -> float:
    """SIGKILL ``proc`` after a random delay of up to ``max_delay`` seconds; return the delay."""
    delay = random.uniform(0, max_delay)
    time.sleep(delay)
    assert proc.poll() is None, f"the run finished within {delay:.3f} s, before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    return delay


def _temp_bytes(folder: Path, name: str) -> int:
    """Bytes written so far to the temporary file of ``folder/name`` (0 before it exists)."""
    return sum(p.stat().st_size for p in folder.rglob(f".{name}.*.tmp") if p.is_file()) if folder.is_dir() else 0


def _has_bytes(paths) -> bool:
    return any(p.is_file() and p.stat().st_size > 0 for p in paths)


# -- mounts ----------------------------------------------------------------------------------------------------------
def _mount(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["mount", *args], capture_output=True, text=True)


@contextlib.contextmanager
def read_only(folder: Path):
    """Make ``folder`` read-only for this process: chmod 0555 as a normal user; as root (who writes through
    permissions) a read-only bind mount of the folder onto itself."""
    if os.geteuid() != 0:
        mode = folder.stat().st_mode
        folder.chmod(0o555)
        try:
            yield
        finally:
            folder.chmod(mode)
        return
    if shutil.which("mount") is None or _mount("--bind", str(folder), str(folder)).returncode != 0:
        pytest.skip("running as root, where chmod does not stop writes, and a read-only bind mount is not "
                    "permitted here")
    try:
        assert _mount("-o", "remount,ro,bind", str(folder)).returncode == 0
        yield
    finally:
        subprocess.run(["umount", str(folder)], check=True)


@contextlib.contextmanager
def small_disk(folder: Path, size: str = "1m"):
    """A real, tiny file system (tmpfs of ``size``) mounted on ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("a full disk needs a small file system of its own: mounting a tmpfs needs root")
    res = _mount("-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder))
    if res.returncode != 0:
        pytest.skip(f"mounting a tmpfs is not permitted here ({res.stderr.strip()})")
    try:
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], check=True)


# ====================================================================================================================
# Locks
# ====================================================================================================================
def test_a_held_folder_refuses_a_second_holder_naming_the_first(tmp_path):
    folder = tmp_path / "out"
    with lock.hold({"output_dir": folder}, "train"):
        holder = lock.read_holder(folder)
        assert holder["pid"] == os.getpid() and holder["task"] == "train" and holder["host"]
        with pytest.raises(BusyError) as err:
            with lock.hold({"output_dir": folder}, "test"):
                pass
        message = err.value.message
        assert err.value.exit_code == EXIT_BUSY and "\n" not in message
        assert str(folder) in message and f"pid {os.getpid()}" in message and socket.gethostname() in message
    assert not (folder / lock.LOCK_NAME).exists()        # given back and deleted
    with lock.hold({"output_dir": folder}, "test"):       # free again
        pass


def test_a_lock_file_left_behind_blocks_nothing_and_new_folders_are_removed_when_empty(tmp_path):
    folder = tmp_path / "a" / "b"
    folder.mkdir(parents=True)
    (folder / lock.LOCK_NAME).write_text("{not json")     # what a killed run may leave
    with lock.hold({"data_dir": folder}, "preprocess"):
        assert lock.read_holder(folder)["pid"] == os.getpid()
    assert folder.is_dir() and not (folder / lock.LOCK_NAME).exists()

    fresh = tmp_path / "x" / "y" / "z"
    with pytest.raises(RuntimeError):
        with lock.hold({"data_dir": fresh}, "preprocess"):
            assert fresh.is_dir()
            raise RuntimeError("the task failed")
    assert not (tmp_path / "x").exists()                  # a failed run leaves no empty folders behind
    with lock.hold({"data_dir": fresh}, "preprocess"):
        (fresh / "kept.txt").write_text("output")
    assert (fresh / "kept.txt").is_file()


def test_a_lock_file_deleted_under_a_waiting_run_is_not_mistaken_for_the_lock(tmp_path, monkeypatch):
    """Run A releases (deletes the file) after B opened it; C then takes a new file. B must not think it holds."""
    folder = tmp_path / "out"
    folder.mkdir()
    (folder / lock.LOCK_NAME).write_text("")
    real_flock = lock.fcntl.flock
    taken = []

    def flock(fd, op):
        if not taken:                 # between B's open and B's flock: A deletes, C creates and locks anew
            os.unlink(folder / lock.LOCK_NAME)
            taken.append(open(folder / lock.LOCK_NAME, "w"))
            real_flock(taken[0], lock.fcntl.LOCK_EX | lock.fcntl.LOCK_NB)
        return real_flock(fd, op)

    monkeypatch.setattr(lock.fcntl, "flock", flock)
    with pytest.raises(BusyError):
        with lock.hold({"output_dir": folder}, "test"):
            pass
    taken[0].close()


def test_a_file_system_without_locks_runs_unlocked_with_a_warning(tmp_path, monkeypatch, caplog):
    """Lustre mounted without flock answers ENOSYS: a benchmark must still run there."""
    import errno
    import logging

    def flock(fd, op):
        raise OSError(errno.ENOSYS, "Function not implemented")

    monkeypatch.setattr(lock.fcntl, "flock", flock)
    log = logging.getLogger("test_failures.nolock")
    with caplog.at_level(logging.WARNING, logger=log.name):
        with lock.hold({"output_dir": tmp_path / "out"}, "test", log):
            (tmp_path / "out" / "result.json").write_text("{}")
    assert "does not support locks" in caplog.text and "Function not implemented" in caplog.text
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["result.json"]


def test_the_sweep_removes_only_what_atomic_writers_left(tmp_path):
    folder = tmp_path / "out"
    (folder / "m").mkdir(parents=True)
    (folder / "other").mkdir()
    left = [folder / ".train.h5.ab3d_9zq.h5.tmp", folder / "m" / ".em_denoise_model.h5.0a1b2c3d.h5.tmp",
            folder / ".results.md.kk8s7d6f.md.tmp"]
    kept = [folder / ".hidden", folder / "notes.tmp", folder / ".x.h5.abcdefgh.npy.tmp", folder / ".a.abc.tmp",
            folder / "other" / ".val.h5.zzzzzzzz.h5.tmp"]
    (folder / "other" / lock.LOCK_NAME).write_text("")    # another run's folder: not ours to clean
    for path in left + kept:
        path.write_bytes(b"partial")
    assert sorted(lock.sweep_temporaries(folder)) == sorted(left)
    assert all(p.exists() for p in kept) and not any(p.exists() for p in left)


OUTPUTS = [(task, out) for task, spec in cli.TASKS.items() for out in spec.outputs if out != "log_dir"]


def _task_paths(tmp_path: Path, task: str) -> dict[str, Path]:
    spec = cli.TASKS[task]
    paths = {name: tmp_path / name for name in spec.inputs + spec.outputs}
    paths["parameters_file"] = params_file(tmp_path / "p.yaml")
    return paths


@pytest.mark.parametrize("task,out", OUTPUTS)
def test_every_task_refuses_an_output_folder_another_run_is_writing(tmp_path, task, out):
    paths = _task_paths(tmp_path, task)
    with lock.hold({out: paths[out]}, "holder"):
        code, err = run_cmd(task, paths)
    one_error(code, err, EXIT_BUSY, str(paths[out]), f"pid {os.getpid()}", "another emdenoise run")
    others = [paths[o] for o in cli.TASKS[task].outputs if o not in (out, "log_dir")]
    assert not any(p.exists() for p in others)            # folders it created before giving up are gone again


@pytest.mark.parametrize("task,out", OUTPUTS + [(task, "log_dir") for task in cli.TASKS])
def test_an_output_path_with_a_file_in_the_way_is_one_line(tmp_path, capsys, task, out):
    """A path whose parent is a regular file cannot be written even by root."""
    paths = _task_paths(tmp_path, task)
    blocker = tmp_path / "a_file"
    blocker.write_text("in the way")
    paths[out] = blocker / "sub"
    code, err = run_here(capsys, task, paths)
    one_error(code, err, EXIT_BAD_INPUT, out, str(blocker) if out != "log_dir" else str(paths[out]))
    assert blocker.read_text() == "in the way"


# ====================================================================================================================
# Bad input: one line, exit 2, before any work
# ====================================================================================================================
def _ready_inputs(tmp_path: Path, task: str, processed: Path) -> dict[str, Path]:
    """:func:`_task_paths` with every input of ``task`` present and good: a small raw set, the processed set, a
    trained model, a folder holding one image (outputs not there yet)."""
    paths = _task_paths(tmp_path, task)
    for name in cli.TASKS[task].inputs:
        if name == "raw_data_dir":
            write_raw(paths[name], 4, 2)
        elif name == "data_dir":
            paths[name] = processed
        elif name == "model_dir":
            save_model(paths[name])
        elif name == "input_dir":
            paths[name].mkdir()
            np.save(paths[name] / "a.npy", np.ones((32, 32), np.float32))
    return paths


def _outputs_untouched(paths: dict[str, Path], task: str) -> bool:
    return not any(paths[out].exists() for out in cli.TASKS[task].outputs if out != "log_dir")


@pytest.mark.parametrize("how", ["invalid UTF-8", "no read permission"])
@pytest.mark.parametrize("task", list(cli.TASKS))
def test_an_unreadable_parameters_file_is_one_line(tmp_path, capsys, task, how):
    paths = _task_paths(tmp_path, task)
    bad = paths["parameters_file"]
    if how == "invalid UTF-8":
        bad.write_bytes(b"\xff\xfe\x00bad")
    else:
        if os.geteuid() == 0:
            pytest.skip("root reads a file whatever its mode")
        bad.chmod(0)
    code, err = run_here(capsys, task, paths)
    one_error(code, err, EXIT_BAD_INPUT, str(bad), "cannot read parameters file")
    assert _outputs_untouched(paths, task)


SEEDS = [f"{section}.{key}" for section, fields in params_mod.schema().items() for key in fields if key == "seed"]


@pytest.mark.parametrize("key,value", [(key, 2**64) for key in SEEDS]
                         + [("download.dose_max", "1.0e+300"), ("download.timeout", "1.0e+300")])
def test_an_absurd_parameter_value_is_one_line_naming_the_maximum(tmp_path, capsys, key, value):
    """Values that used to crash deep inside torch (a seed of 2**64) or numpy and the socket layer (1e300)."""
    task, name = key.split(".")
    paths = _task_paths(tmp_path, task)
    code, err = run_here(capsys, task, paths, f"{key}={value}")
    one_error(code, err, EXIT_BAD_INPUT, key, params_mod.schema()[task][name].describe())
    assert _outputs_untouched(paths, task)


def test_the_largest_seed_and_huge_image_limits_run(tmp_path, capsys, processed):
    """The seed's maximum works all the way into torch; an image limit with no maximum means all the images."""
    paths = {"data_dir": processed, "parameters_file": params_file(tmp_path / "p.yaml", train={**TRAIN, "epochs": 1}),
             "model_dir": tmp_path / "models", "output_dir": tmp_path / "out", "log_dir": tmp_path / "logs"}
    code, err = run_here(capsys, "train", paths, f"train.seed={params_mod.MAX_SEED}",
                         f"train.max_train_images={10**30}")
    assert code == 0, err
    assert json.loads((tmp_path / "out" / "train_metrics.json").read_text())["n_train"] == 36
    code, err = run_here(capsys, "test", {**paths, "output_dir": tmp_path / "tested"}, "test.baselines=gaussian",
                         "test.device=cpu", f"test.max_test_images={10**30}", f"test.tune_images={10**30}")
    assert code == 0, err
    assert json.loads((tmp_path / "tested" / "test_metrics.json").read_text())["n_images"] == 8


INPUTS = [(task, name) for task, spec in cli.TASKS.items() for name in spec.inputs]


@pytest.mark.parametrize("task,name", INPUTS)
def test_a_missing_input_path_is_one_line_naming_it(tmp_path, capsys, processed, task, name):
    """Every other input present and good: the one that is missing is what the run stops at."""
    paths = _ready_inputs(tmp_path, task, processed)
    paths[name] = tmp_path / "nowhere" / name
    code, err = run_here(capsys, task, paths)
    one_error(code, err, EXIT_BAD_INPUT, str(paths[name]), "not found")
    assert _outputs_untouched(paths, task) and not (tmp_path / "nowhere").exists()


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


@pytest.mark.parametrize("how,field", [("cut short", "JSON"), ("wrong format", "format"),
                                       ("data_range 0", "data_range"), ("std 0", "normalisation.clean")])
@pytest.mark.parametrize("task", ["train", "test", "study"])
def test_a_damaged_dataset_card_is_one_line_naming_the_field(tmp_path, capsys, processed, task, how, field):
    paths = _ready_inputs(tmp_path, task, shutil.copytree(processed, tmp_path / "data"))
    card = paths["data_dir"] / CARD
    _damage_card(card, how)
    code, err = run_here(capsys, task, paths)
    one_error(code, err, EXIT_BAD_INPUT, str(card), field)
    assert _outputs_untouched(paths, task)


HUGE_SIDE = 200_000       # 4e10 pixels per frame: HDF5 datasets with no chunk written (a few kB)
SPARSE_SIDE = 20_000      # 4e8 pixels (1.6 GB as float32) in a sparse file: a few kB on disk


def _huge_frame(folder: Path, kind: str) -> tuple[Path, str]:
    """A small file declaring one frame far over MAX_FRAME_PIXELS; return it and the declared ``HxW``."""
    folder.mkdir(parents=True, exist_ok=True)
    if kind.startswith("h5"):
        shape = {"h5 (N, H, W)": (1, HUGE_SIDE, HUGE_SIDE), "h5 (H, W)": (HUGE_SIDE, HUGE_SIDE)}[kind]
        path = folder / "huge.h5"
        with h5py.File(path, "w") as fh:
            fh.create_dataset("frames", shape=shape, dtype=np.float32, chunks=(1,) * (len(shape) - 2) + (256, 256),
                              compression="gzip")
        return path, f"{HUGE_SIDE}x{HUGE_SIDE}"
    path = folder / f"huge.{kind}"
    if kind == "npy":
        np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(1, SPARSE_SIDE, SPARSE_SIDE)).flush()
    elif kind == "tif":
        tifffile.memmap(path, shape=(SPARSE_SIDE, SPARSE_SIDE), dtype=np.float32, photometric="minisblack").flush()
    else:
        import mrcfile

        mrcfile.new_mmap(path, shape=(1, SPARSE_SIDE, SPARSE_SIDE), mrc_mode=2, overwrite=True).close()
    assert path.stat().st_blocks * 512 < 2**20 or kind.startswith("h5")   # sparse: nothing was allocated
    return path, f"{SPARSE_SIDE}x{SPARSE_SIDE}"


@pytest.mark.parametrize("kind", ["h5 (N, H, W)", "h5 (H, W)", "npy", "tif", "mrc"])
def test_a_frame_of_absurd_declared_size_is_refused_by_denoise(tmp_path, capsys, kind):
    path, declared = _huge_frame(tmp_path / "in", kind)
    paths = {"input_dir": tmp_path / "in", "model_dir": tmp_path / "models", "output_dir": tmp_path / "out",
             "parameters_file": params_file(tmp_path / "p.yaml", denoise={"device": "cpu", "precision": "fp32"}),
             "log_dir": tmp_path / "logs"}
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
    with pytest.raises(InputError, match=declared) as refused:    # the traceback is kept alive meanwhile
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
            fh.create_dataset("images", shape=shape, dtype=np.float32, chunks=(1, 256, 256) + shape[3:],
                              compression="gzip")
        words = [str(path), f"{HUGE_SIDE}x{HUGE_SIDE}", str(MAX_FRAME_PIXELS)]
    paths = {"raw_data_dir": raw, "data_dir": tmp_path / "data", "parameters_file": params_file(tmp_path / "p.yaml"),
             "log_dir": tmp_path / "logs"}
    code, err = run_here(capsys, "preprocess", paths)
    one_error(code, err, EXIT_BAD_INPUT, *words)
    assert not paths["data_dir"].exists()


# ====================================================================================================================
# kill -9, then the same command again
# ====================================================================================================================
@pytest.mark.slow
def test_kill_9_during_a_synthetic_download_while_a_second_run_is_refused(tmp_path, capsys):
    new = {"source": "synthetic", "seed": 1, "train_images": 800, "test_images": 20, "image_size": 64, "workers": 1}
    params = params_file(tmp_path / "new.yaml", download=new)
    old_params = params_file(tmp_path / "old.yaml", download={**new, "seed": 0, "train_images": 4,
                                                              "test_images": 2, "image_size": 32})
    raw, ref, logs = tmp_path / "raw", tmp_path / "ref", tmp_path / "logs"
    paths = {"raw_data_dir": raw, "parameters_file": params, "log_dir": logs}
    assert run_here(capsys, "download", {**paths, "raw_data_dir": ref})[0] == 0            # uninterrupted
    assert run_here(capsys, "download", {**paths, "parameters_file": old_params})[0] == 0  # what was there
    old, expected = final_files(raw), final_files(ref)

    proc = start_cmd("download", paths, tmp_path / "killed.err")
    wait_until(proc, lambda: _has_bytes(temporaries(raw)))
    code, err = run_cmd("download", paths)                # the same command, at the same time
    one_error(code, err, EXIT_BUSY, str(raw), f"pid {proc.pid}", socket.gethostname())
    target = random.uniform(0.2, 0.7) * (ref / "train" / RAW_FILES["noisy"]).stat().st_size
    wait_until(proc, lambda: _temp_bytes(raw / "train", RAW_FILES["noisy"]) >= target)
    kill_9(proc, max_delay=0)

    assert_old_or_new(final_files(raw), old, expected)
    assert set(final_files(raw)) == set(old)
    assert lock.read_holder(raw)["pid"] == proc.pid       # the dead run's lock file is still there ...
    code, err = run_cmd("download", paths)                # ... and blocks nothing
    assert code == 0, err
    assert final_files(raw) == expected                   # byte for byte what an uninterrupted run wrote
    assert temporaries(raw) == [] and not (raw / lock.LOCK_NAME).exists()


@pytest.fixture(scope="module")
def copy_source(tmp_path_factory) -> Path:
    """A local copy of the layout plus a 48 MiB file that sorts (and is copied or extracted) last."""
    src = tmp_path_factory.mktemp("source") / "em_graphene_sim"
    write_raw(src, 6, 3, seed=5)
    (src / "zz_extra").mkdir()
    (src / "zz_extra" / "blob.bin").write_bytes(os.urandom(48 << 20))
    archive = src.parent / "em.zip"
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_STORED) as zf:
        for path in sorted(src.rglob("*")):
            if path.is_file():
                zf.write(path, f"em_graphene_sim/{path.relative_to(src).as_posix()}")
    return src


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["folder", "zip"])
def test_kill_9_during_a_local_copy_then_the_same_command_finishes_it(tmp_path, capsys, copy_source, kind):
    source = copy_source if kind == "folder" else copy_source.parent / "em.zip"
    params = params_file(tmp_path / "p.yaml", download={"source": str(source)})
    raw, ref, logs = tmp_path / "raw", tmp_path / "ref", tmp_path / "logs"
    paths = {"raw_data_dir": raw, "parameters_file": params, "log_dir": logs}
    assert run_here(capsys, "download", {**paths, "raw_data_dir": ref})[0] == 0
    write_raw(raw, 6, 3, seed=6)                           # an earlier copy of other data
    old, expected = final_files(raw), final_files(ref)
    assert expected["zz_extra/blob.bin"] == (copy_source / "zz_extra" / "blob.bin").read_bytes()

    proc = start_cmd("download", paths, tmp_path / "killed.err")
    if kind == "folder":
        wait_until(proc, lambda: _has_bytes([raw / "zz_extra" / "blob.bin.part"]))
    else:
        wait_until(proc, lambda: _has_bytes(raw.glob(".extract-*/**/blob.bin")))
    kill_9(proc, max_delay=0.01)

    now = final_files(raw)
    assert_old_or_new(now, old, expected)
    assert "zz_extra/blob.bin" not in now                 # the big file was never at its final name
    assert temporaries(raw)                               # the work in progress was cut off
    code, err = run_cmd("download", paths)
    assert code == 0, err
    assert final_files(raw) == expected
    assert temporaries(raw) == []                         # .part files renamed, the staging folder removed


@pytest.mark.slow
def test_kill_9_during_preprocess_then_the_same_command_finishes_it(tmp_path, capsys, big_raw):
    data, ref, logs = tmp_path / "data", tmp_path / "ref", tmp_path / "logs"
    paths = {"raw_data_dir": big_raw, "data_dir": data, "parameters_file": params_file(tmp_path / "p.yaml"),
             "log_dir": logs}
    assert run_here(capsys, "preprocess", {**paths, "data_dir": ref}, "preprocess.seed=1")[0] == 0
    assert run_here(capsys, "preprocess", paths, "preprocess.seed=0")[0] == 0
    old, expected = final_files(data), final_files(ref)
    assert old["train.h5"] != expected["train.h5"]

    proc = start_cmd("preprocess", paths, tmp_path / "killed.err", "preprocess.seed=1")
    target = random.uniform(0.05, 0.7) * (ref / "train.h5").stat().st_size
    wait_until(proc, lambda: _temp_bytes(data, "train.h5") >= target)
    kill_9(proc, max_delay=0)

    assert_old_or_new(final_files(data), old, expected)
    code, err = run_cmd("preprocess", paths, "preprocess.seed=1")
    assert code == 0, err
    assert "temporary file(s) left by an interrupted run" in err
    assert final_files(data) == expected and temporaries(data) == []


@pytest.mark.slow
def test_kill_9_during_training_then_the_same_command_resumes_to_the_same_result(tmp_path, capsys, processed):
    params = params_file(tmp_path / "p.yaml", train=TRAIN)
    models_dir, out, logs = tmp_path / "models", tmp_path / "out", tmp_path / "logs"
    paths = {"data_dir": processed, "parameters_file": params, "model_dir": models_dir, "output_dir": out,
             "log_dir": logs}
    ref = {**paths, "model_dir": tmp_path / "ref_models", "output_dir": tmp_path / "ref_out"}
    assert run_here(capsys, "train", ref)[0] == 0
    ref_rows = json.loads((tmp_path / "ref_out" / "train_metrics.json").read_text())["epochs"]

    proc = start_cmd("train", paths, tmp_path / "killed.err")
    checkpoint = models_dir / "sciml_ae" / "checkpoint_last.h5"
    epoch = random.choice([2, 3])                          # then within about one epoch
    wait_until(proc, lambda: f"epoch {epoch}/{TRAIN['epochs']}:" in (tmp_path / "killed.err").read_text())
    kill_9(proc, max_delay=float(np.mean([row["seconds"] for row in ref_rows])))

    final_files(models_dir)                               # every file at a final name is complete
    final_files(out)
    done = modelfile.checkpoint_info(checkpoint)["epoch"]
    assert 1 <= done < TRAIN["epochs"]
    modelfile.load_model(models_dir / "sciml_ae" / STAGING_DIR / "em_denoise_model.h5")   # moved at the end
    code, err = run_here(capsys, "train", paths)          # the same command again
    assert code == 0, err
    assert f"resuming from {checkpoint} after epoch {done}" in err

    rows = json.loads((out / "train_metrics.json").read_text())["epochs"]
    assert [r["epoch"] for r in rows] == [r["epoch"] for r in ref_rows] == list(range(1, TRAIN["epochs"] + 1))
    for row, ref_row in zip(rows, ref_rows):
        for key in ("train_loss", "val_psnr", "val_ssim", "lr"):
            assert row[key] == pytest.approx(ref_row[key], rel=1e-4), (row["epoch"], key)
    for name in ("em_denoise_model.h5", "em_denoise_model_last.h5"):
        a, _ = modelfile.load_model(models_dir / "sciml_ae" / name)
        b, _ = modelfile.load_model(tmp_path / "ref_models" / "sciml_ae" / name)
        for key, value in a.state_dict().items():
            torch.testing.assert_close(value, b.state_dict()[key], rtol=1e-4, atol=1e-5)
    assert temporaries(models_dir) == [] and not (models_dir / lock.LOCK_NAME).exists()


def _denoise_inputs(folder: Path, n_files: int = 6, frames: int = 12, side: int = 96) -> None:
    rng = np.random.default_rng(2)
    folder.mkdir(parents=True)
    for i in range(n_files):
        stack = rng.normal(0.5, 0.2, (frames, side, side)).astype(np.float32)
        kind = ("tif", "npy", "h5")[i % 3]
        path = folder / f"f{i}.{kind}"
        if kind == "tif":
            tifffile.imwrite(path, stack, photometric="minisblack")
        elif kind == "npy":
            np.save(path, stack)
        else:
            with h5py.File(path, "w") as fh:
                fh.create_dataset("frames", data=stack)


def _denoised(path: Path) -> np.ndarray:
    if path.suffix == ".tif":
        return tifffile.imread(path)
    if path.suffix == ".npy":
        return np.load(path)
    with h5py.File(path, "r") as fh:
        return fh["frames"][()]


@pytest.mark.slow
def test_kill_9_during_denoise_then_the_same_command_keeps_what_is_done(tmp_path, capsys):
    save_model(tmp_path / "models")
    _denoise_inputs(tmp_path / "in")
    params = params_file(tmp_path / "p.yaml", denoise={"tile_size": 64, "tile_overlap": 16, "batch_size": 4,
                                                       "device": "cpu", "precision": "fp32"})
    out = tmp_path / "out"
    paths = {"input_dir": tmp_path / "in", "model_dir": tmp_path / "models", "parameters_file": params,
             "output_dir": out, "log_dir": tmp_path / "logs"}
    assert run_here(capsys, "denoise", {**paths, "output_dir": tmp_path / "ref"})[0] == 0
    per_file = np.mean([json.loads(p.read_text())["seconds"] for p in (tmp_path / "ref").glob("*.json")])

    proc = start_cmd("denoise", paths, tmp_path / "killed.err")
    files = random.choice([1, 2, 3])                       # then within about one more file
    wait_until(proc, lambda: len(list((out / STAGING_DIR).glob("*.json"))) >= files)
    kill_9(proc, max_delay=float(per_file))

    final_files(out)                                      # complete outputs only ...
    assert final_files(out / STAGING_DIR)                 # ... the finished ones staged, moved at the end
    code, err = run_here(capsys, "denoise", paths)
    assert code == 0, err
    assert "up to date" in err                            # finished files were kept, not computed again
    for path in sorted((tmp_path / "in").iterdir()):
        np.testing.assert_allclose(_denoised(out / path.name), _denoised(tmp_path / "ref" / path.name),
                                   rtol=1e-5, atol=1e-6)
    assert temporaries(out) == []


@pytest.mark.slow
def test_sigterm_unwinds_like_ctrl_c_and_leaves_no_temporary_file(tmp_path, capsys, big_raw):
    data = tmp_path / "data"
    paths = {"raw_data_dir": big_raw, "data_dir": data, "parameters_file": params_file(tmp_path / "p.yaml"),
             "log_dir": tmp_path / "logs"}
    assert run_here(capsys, "preprocess", paths, "preprocess.seed=0")[0] == 0
    old = final_files(data)
    proc = start_cmd("preprocess", paths, tmp_path / "term.err", "preprocess.seed=1")
    wait_until(proc, lambda: _has_bytes(temporaries(data)))
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=60)
    one_error(proc.returncode, (tmp_path / "term.err").read_text(), EXIT_INTERRUPTED, "interrupted (SIGTERM)")
    assert final_files(data) == old
    assert temporaries(data) == [] and not (data / lock.LOCK_NAME).exists()


# ====================================================================================================================
# Read-only folders and a full disk
# ====================================================================================================================
@pytest.mark.parametrize("task,out", OUTPUTS + [(task, "log_dir") for task in cli.TASKS])
def test_a_read_only_output_folder_is_refused_before_any_work(tmp_path, capsys, task, out):
    """Earlier files in the folder stay byte for byte, and nothing is added."""
    paths = _task_paths(tmp_path, task)
    folder = paths[out]
    (folder / "earlier").mkdir(parents=True)
    (folder / "earlier" / "result.bin").write_bytes(os.urandom(4096))
    (folder / "notes.txt").write_text("an earlier file\n")
    old = final_files(folder)
    with read_only(folder):
        code, err = run_here(capsys, task, paths)
    one_error(code, err, EXIT_BAD_INPUT, str(folder), out)
    assert final_files(folder) == old and sorted(p.name for p in folder.iterdir()) == ["earlier", "notes.txt"]
    assert _outputs_untouched({**paths, out: tmp_path / "absent"}, task)


def test_a_read_only_model_folder_met_while_training_is_one_line(tmp_path, capsys, processed):
    models_dir = tmp_path / "models"
    keep = save_model(models_dir, "dncnn", depth=3)
    before = keep.read_bytes()
    (models_dir / "sciml_ae").mkdir()
    paths = {"data_dir": processed, "parameters_file": params_file(tmp_path / "p.yaml", train={**TRAIN, "epochs": 1}),
             "model_dir": models_dir, "output_dir": tmp_path / "out", "log_dir": tmp_path / "logs"}
    with read_only(models_dir / "sciml_ae"):
        code, err = run_here(capsys, "train", paths)
    one_error(code, err, EXIT_BAD_INPUT, str(models_dir / "sciml_ae"),
              "read-only file system" if os.geteuid() == 0 else "permission denied")
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
        except OSError as exc:            # a file system that counts a little differently: full is full
            assert exc.errno == errno.ENOSPC


def _full_disk_case(tmp_path: Path, task: str, capsys) -> tuple[Path, dict[str, Path], tuple[str, ...]]:
    """Fill the folder under test (a 1 MiB tmpfs) with a small good result first; return (folder, paths, sets)
    of a run that needs far more room."""
    logs = tmp_path / "logs"
    if task == "download":
        folder = tmp_path / "raw"
        params = params_file(tmp_path / "p.yaml", download={"source": "synthetic", "train_images": 4,
                                                            "test_images": 2, "image_size": 32, "workers": 1})
        paths = {"raw_data_dir": folder, "parameters_file": params, "log_dir": logs}
        assert run_here(capsys, task, paths)[0] == 0
        return folder, paths, ("download.train_images=300", "download.image_size=64")
    if task == "preprocess":
        folder = tmp_path / "data"
        paths = {"raw_data_dir": write_raw(tmp_path / "small", 6, 3), "data_dir": folder,
                 "parameters_file": params_file(tmp_path / "p.yaml"), "log_dir": logs}
        assert run_here(capsys, task, paths)[0] == 0
        write_raw(tmp_path / "bigger", 300, 20, size=64)
        return folder, {**paths, "raw_data_dir": tmp_path / "bigger"}, ()
    if task == "train":
        folder = tmp_path / "models"
        save_model(folder, "dncnn", depth=3)              # an earlier model (about 10 kB)
        return folder, {"data_dir": tmp_path / "data", "parameters_file": params_file(
            tmp_path / "p.yaml", train={**TRAIN, "epochs": 2}), "model_dir": folder,
            "output_dir": tmp_path / "out", "log_dir": logs}, ()
    if task in ("test", "study"):
        folder = tmp_path / "out"
        sections = {"train": {"dncnn_depth": 3, "precision": "fp32"},
                    "test": {"baselines": ["gaussian"], "tune_images": 2, "figure_images": 1, "device": "cpu",
                             "precision": "fp32"},
                    "study": {"models": ["dncnn"], "train_sizes": [4], "epochs": 1, "batch_size": 4, "device": "cpu",
                              "baselines": ["gaussian"], "dose_bins": 1}}
        paths = {"data_dir": tmp_path / "data", "output_dir": folder, "log_dir": logs,
                 "parameters_file": params_file(tmp_path / "p.yaml", **sections)}
        if task == "test":
            paths["model_dir"] = save_model(tmp_path / "models").parents[1]
        assert run_here(capsys, task, paths)[0] == 0
        # a run with more to write finds the disk full: test with room for its small files, not its figures
        # (all or none of them must change); study with none (its next cell's model files)
        _fill(folder, leave=16 << 10 if task == "test" else 0)
        return folder, paths, (("test.baselines=[gaussian, median]",) if task == "test" else
                               ("study.train_sizes=[4, 8]",))
    folder = tmp_path / "out"
    (tmp_path / "in").mkdir()
    np.save(tmp_path / "in" / "small.npy", np.ones((32, 32), np.float32))
    save_model(tmp_path / "models")
    paths = {"input_dir": tmp_path / "in", "model_dir": tmp_path / "models", "output_dir": folder,
             "parameters_file": params_file(tmp_path / "p.yaml", denoise={"device": "cpu", "precision": "fp32"}),
             "log_dir": logs}
    assert run_here(capsys, task, paths)[0] == 0
    for i in range(3):                                     # 3 x 1 MiB of output
        np.save(tmp_path / "in" / f"big{i}.npy", np.ones((16, 128, 128), np.float32))
    return folder, paths, ()


@pytest.mark.parametrize("task", ["download", "preprocess", pytest.param("train", marks=pytest.mark.slow),
                                  pytest.param("denoise", marks=pytest.mark.slow), "test",
                                  pytest.param("study", marks=pytest.mark.slow)])
def test_a_full_disk_is_one_line_and_earlier_files_stay_intact(tmp_path, capsys, processed, task):
    if task in ("train", "test", "study"):
        shutil.copytree(processed, tmp_path / "data")
    folder = tmp_path / {"download": "raw", "preprocess": "data", "train": "models", "denoise": "out", "test": "out",
                         "study": "out"}[task]
    with small_disk(folder):
        folder, paths, sets = _full_disk_case(tmp_path, task, capsys)
        old = final_files(folder)
        assert old
        code, err = run_cmd(task, paths, *sets)
        one_error(code, err, EXIT_RUNTIME, str(folder), "no space left")   # exit 1: not a crash (SIGSEGV, SIGBUS)
        now = final_files(folder)                          # whatever is at a final name is complete ...
        assert {rel: now[rel] for rel in old} == old       # ... and the earlier files are as they were
        assert temporaries(folder) == [] and not (folder / lock.LOCK_NAME).exists()


# ====================================================================================================================
# Pickles and foreign model files: refused, nothing executed
# ====================================================================================================================
class _Boom:
    """Unpickling this creates the file ``marker``: proof that a loader ran a pickle."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def _torch_style_zip(payload: bytes) -> bytes:
    """The layout torch.save writes: a zip holding archive/data.pkl."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("archive/data.pkl", payload)
        zf.writestr("archive/version", "3\n")
    return buf.getvalue()


@contextlib.contextmanager
def _sealed_again(path: Path):
    with h5py.File(path, "r+") as fh:
        yield fh
    h5safe.seal(path)


def _replace(fh: h5py.File, name: str, value) -> None:
    del fh[name]
    fh[name] = value


def _damage(path: Path, how: str, marker: Path) -> str:
    """Damage an emdenoise HDF5 file ``how``; return a word the error must name. A file changed with h5py is
    sealed again, so that the loader's checks behind the seal's are what must refuse it."""
    payload = pickle.dumps(_Boom(marker))
    if how == "pickle file":
        path.write_bytes(payload)
        return "not HDF5"
    if how == "torch.save zip":
        path.write_bytes(_torch_style_zip(payload))
        return "not HDF5"
    with _sealed_again(path) as fh:
        first = sorted(fh["state"])[0]
        if how == "pickle in the weights":
            _replace(fh, f"state/{first}", np.void(payload))
            return f"state/{first}"
        if how == "pickle in the tensors":
            _replace(fh, "tensors/0", np.array([payload], dtype=f"S{len(payload)}"))
            return "tensors/0"
        if how == "pickle in the payload":
            fh.attrs["payload"] = np.void(payload)
            return "payload"
        if how == "newer format":
            fh.attrs["format"] = fh.attrs["format"].rsplit("/", 1)[0] + "/2"
            return "another emdenoise version"
        if how == "other architecture":
            fh.attrs["model"] = "dncnn"
            return "state/"
    raise AssertionError(how)


@pytest.fixture(scope="module")
def trained(processed, tmp_path_factory) -> tuple[Path, Path]:
    """(folder, parameters) of a finished 1-epoch training run."""
    tmp = tmp_path_factory.mktemp("trained")
    params = params_file(tmp / "p.yaml", train={**TRAIN, "epochs": 1})
    assert cli.main(argv("train", {"data_dir": processed, "parameters_file": params, "model_dir": tmp / "models",
                                   "output_dir": tmp / "out", "log_dir": tmp / "logs"})) == 0
    return tmp, params


@pytest.mark.parametrize("how", ["pickle file", "torch.save zip", "pickle in the weights", "pickle in the tensors",
                                 "pickle in the payload", "newer format"])
def test_a_damaged_checkpoint_is_refused_without_running_it(tmp_path, capsys, processed, trained, how):
    shutil.copytree(trained[0] / "models", tmp_path / "models")
    checkpoint = tmp_path / "models" / "sciml_ae" / "checkpoint_last.h5"
    marker = tmp_path / "pwned"
    word = _damage(checkpoint, how, marker)
    model_before = (tmp_path / "models" / "sciml_ae" / "em_denoise_model.h5").read_bytes()
    code, err = run_here(capsys, "train", {"data_dir": processed, "parameters_file": trained[1],
                                           "model_dir": tmp_path / "models", "output_dir": tmp_path / "out",
                                           "log_dir": tmp_path / "logs"})
    one_error(code, err, EXIT_BAD_INPUT, str(checkpoint), word)
    assert not marker.exists()
    assert (tmp_path / "models" / "sciml_ae" / "em_denoise_model.h5").read_bytes() == model_before


@pytest.mark.parametrize("how", ["pickle file", "torch.save zip", "pickle in the weights", "newer format",
                                 "other architecture"])
@pytest.mark.parametrize("task", ["test", "denoise"])
def test_a_damaged_model_file_is_refused_by_test_and_denoise(tmp_path, capsys, processed, task, how):
    model = save_model(tmp_path / "models")
    marker = tmp_path / "pwned"
    word = _damage(model, how, marker)
    out = tmp_path / "out"
    if task == "test":
        paths = {"data_dir": processed, "model_dir": tmp_path / "models", "output_dir": out,
                 "parameters_file": params_file(tmp_path / "p.yaml", test={"baselines": "none", "device": "cpu",
                                                                           "precision": "fp32"})}
    else:
        (tmp_path / "in").mkdir()
        np.save(tmp_path / "in" / "a.npy", np.ones((32, 32), np.float32))
        paths = {"input_dir": tmp_path / "in", "model_dir": tmp_path / "models", "output_dir": out,
                 "parameters_file": params_file(tmp_path / "p.yaml", denoise={"device": "cpu",
                                                                              "precision": "fp32"})}
    code, err = run_here(capsys, task, {**paths, "log_dir": tmp_path / "logs"})
    one_error(code, err, EXIT_BAD_INPUT, str(model), word)
    assert not marker.exists()
    assert final_files(out) == {}                          # nothing written


# ====================================================================================================================
# Download sources that misbehave
# ====================================================================================================================
ACCESS_DENIED = (b'<?xml version="1.0" encoding="UTF-8"?><Error><Code>AccessDenied</Code>'
                 b'<Message>Access Denied</Message></Error>')
XHTML = b"<html><head><title>Sign in</title></head><body><p>Please sign in</p></body></html>"
HTML = b'<!DOCTYPE html><html><head><meta charset="utf-8"><title>Portal</title></head><body>Login<br></body></html>'


class Server:
    """A small HTTP server: S3-ish buckets that answer wrongly, and a zip that supports Range and can be told to
    stop mid-stream."""

    def __init__(self, archive: bytes):
        self.archive = archive
        self.cut = True                  # em.zip: send half of it, then close; requests to resume get nothing
        self.ranges: list[str | None] = []
        self.httpd = LocalServer(self.handle)
        self.url = self.httpd.url

    def close(self):
        self.httpd.stop()

    @staticmethod
    def send(h, status: int, body: bytes, content_type: str = "application/xml", headers: dict | None = None):
        h.send_response(status)
        h.send_header("Content-Type", content_type)
        h.send_header("Content-Length", str(len(body)))
        for key, value in (headers or {}).items():
            h.send_header(key, value)
        h.end_headers()
        h.wfile.write(body)

    def handle(self, h):
        path = h.path.split("?", 1)[0]
        if path == "/denied":
            return self.send(h, 403, ACCESS_DENIED)
        if path == "/xhtml":
            return self.send(h, 200, XHTML, "text/html")
        if path == "/html":
            return self.send(h, 200, HTML, "text/html")
        if path == "/files/page.zip":
            return self.send(h, 200, HTML, "text/html")
        if path != "/files/em.zip":
            return self.send(h, 404, b"")
        data, asked = self.archive, h.headers.get("Range")
        if asked != "bytes=0-0":
            self.ranges.append(asked)
        start = int(asked.split("=")[1].split("-")[0]) if asked else 0
        end = len(data) - 1 if asked != "bytes=0-0" else 0
        status = 206 if asked else 200
        headers = {"ETag": '"v1"', "Accept-Ranges": "bytes"}
        if asked:
            headers["Content-Range"] = f"bytes {start}-{end}/{len(data)}"
        body = data[start:end + 1]
        if not self.cut or asked == "bytes=0-0":
            return self.send(h, status, body, "application/zip", headers)
        h.send_response(status)
        for key, value in {**headers, "Content-Length": str(len(body))}.items():
            h.send_header(key, value)
        h.end_headers()
        h.wfile.write(body[:len(body) // 2] if not asked else b"")      # then the connection drops
        h.wfile.flush()
        h.close_connection = True
        h.connection.shutdown(socket.SHUT_RDWR)


@pytest.fixture(scope="module")
def layout_zip(tmp_path_factory) -> tuple[bytes, dict[str, bytes]]:
    folder = write_raw(tmp_path_factory.mktemp("zip") / "em", 6, 3, seed=7)
    files = {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as zf:
        for rel, data in files.items():
            zf.writestr(rel, data)
    return buf.getvalue(), files


@pytest.fixture
def server(layout_zip):
    srv = Server(layout_zip[0])
    yield srv
    srv.close()


@pytest.mark.parametrize("source,code,words", [
    ("denied/data", EXIT_BAD_INPUT, ["/denied", "access denied", "403", "AccessDenied"]),
    ("xhtml/data", EXIT_BAD_INPUT, ["/xhtml", "not an S3 bucket listing", "<html>"]),
    ("html/data", EXIT_BAD_INPUT, ["/html", "not an S3 bucket listing", "not XML"]),
    ("files/page.zip", EXIT_BAD_INPUT, ["page.zip", "expected a readable zip archive"]),
])
def test_a_source_answering_403_or_html_is_one_line_and_changes_nothing(tmp_path, capsys, server, source, code,
                                                                         words):
    raw = write_raw(tmp_path / "raw", 4, 2)              # an earlier download
    old = final_files(raw)
    params = params_file(tmp_path / "p.yaml", download={"source": f"{server.url}/{source}", "retries": 2})
    got, err = run_here(capsys, "download", {"raw_data_dir": raw, "parameters_file": params,
                                             "log_dir": tmp_path / "logs"})
    one_error(got, err, code, *words)
    assert final_files(raw) == old and temporaries(raw) == []


def test_a_download_that_stops_mid_stream_fails_in_one_line_then_resumes(tmp_path, capsys, server, layout_zip):
    raw = tmp_path / "raw"
    params = params_file(tmp_path / "p.yaml", download={"source": f"{server.url}/files/em.zip", "retries": 2})
    paths = {"raw_data_dir": raw, "parameters_file": params, "log_dir": tmp_path / "logs"}
    code, err = run_here(capsys, "download", paths)
    one_error(code, err, EXIT_RUNTIME, "em.zip", "connection lost", "run download again")
    part = raw / "em.zip.part"
    assert part.stat().st_size == len(layout_zip[0]) // 2   # what arrived is kept for the next run ...
    assert final_files(raw) == {}                            # ... and nothing took a final name
    server.cut = False
    server.ranges.clear()
    code, err = run_here(capsys, "download", paths)
    assert code == 0, err
    assert server.ranges == [f"bytes={len(layout_zip[0]) // 2}-"]   # resumed, not started again
    got = final_files(raw)
    assert {rel: got[rel] for rel in layout_zip[1]} == layout_zip[1] and temporaries(raw) == []


@settings(max_examples=300, deadline=None)
@given(rest=st.text(alphabet="a./\\\x00", max_size=12))
def test_no_listed_key_can_land_outside_raw_data_dir(rest):
    prefix = "ms/em/"
    try:
        rel = key_to_relpath(prefix, prefix + rest, "listing")
    except InputError as exc:
        assert "\n" not in exc.message and "outside raw_data_dir" in exc.message
        return
    if rel is not None:
        assert os.path.normpath(os.path.join("/raw", rel)).startswith("/raw/")
        assert "\x00" not in rel


# ====================================================================================================================
# Readers given random or damaged bytes: an InputError, never another exception
# ====================================================================================================================
MAGIC = {".tif": b"II*\x00", ".npy": b"\x93NUMPY\x01\x00", ".h5": b"\x89HDF\r\n\x1a\n", ".png": b"\x89PNG\r\n\x1a\n",
         ".mrc": b""}


@pytest.fixture(scope="module")
def fuzz_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("fuzz")


def _read_images(path: Path) -> None:
    with micrographs.open_input(path) as src:
        for image in src.images:
            for _ in src.iter_frames(image):
                pass


def _outcome(reader: Callable[[Path], object], path: Path) -> list[str]:
    """What ``reader(path)`` did: ["read"], ["InputError", message] or ["exception", traceback]."""
    try:
        reader(path)
    except InputError as exc:
        return ["InputError", exc.message]
    except BaseException:
        return ["exception", traceback.format_exc()]
    return ["read"]


def _outcome_in_a_forked_child(reader: Callable[[Path], object], path: Path) -> list[str]:
    """:func:`_outcome` in a forked child process, sent back as JSON: a reader that kills its process (libhdf5
    dies with SIGSEGV on some damaged metadata) or never returns (libhdf5 can loop forever too) fails the test,
    and hypothesis reports the example, instead of taking pytest down with it or hanging it."""
    timeout = h5safe.PROBE_TIMEOUT_S + 60                 # a hung probe is the reader's InputError, and comes first
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:                                          # the child: leave without running pytest's clean-up
        try:
            os.setpgid(0, 0)                              # a group of its own, for the probe's process too
            os.close(read_end)
            with os.fdopen(write_end, "w") as pipe:
                pipe.write(json.dumps(_outcome(reader, path)))
        finally:
            os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end) as pipe:
        hung = not select.select([pipe], [], [], timeout)[0]
        if hung:
            os.killpg(pid, signal.SIGKILL)
        sent = pipe.read()
    status = os.waitpid(pid, 0)[1]
    if hung:
        pytest.fail(f"the reader did not finish within {timeout} s reading {path}")
    if os.WIFSIGNALED(status):
        pytest.fail(f"the reader crashed its process ({signal.Signals(os.WTERMSIG(status)).name}) reading {path}")
    return json.loads(sent)


def _expect_input_error(reader: Callable[[Path], object], path: Path) -> None:
    """``reader(path)`` reads the file or raises a one-line InputError naming it: no other exception, no crash."""
    outcome = _outcome_in_a_forked_child(reader, path)
    if outcome[0] == "exception":
        pytest.fail(f"expected an InputError or a good read of {path}, got:\n{outcome[1]}")
    if outcome[0] == "InputError":
        assert "\n" not in outcome[1] and str(path) in outcome[1], outcome[1]


@settings(max_examples=100, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(suffix=st.sampled_from(sorted(MAGIC)), magic=st.booleans(), body=st.binary(max_size=3000))
def test_random_bytes_given_to_the_image_readers(fuzz_dir, suffix, magic, body):
    path = fuzz_dir / f"random{suffix}"
    path.write_bytes((MAGIC[suffix] if magic else b"") + body)
    _expect_input_error(_read_images, path)


def _raw_reader(path: Path) -> None:
    import logging

    with contextlib.ExitStack() as stack:
        images = raw_layout.open_raw_images(path, stack, logging.getLogger("test_failures"))
        images.read(np.arange(images.n))


def _load_checkpoint(path: Path) -> None:
    modelfile.checkpoint_info(path)
    model = models.build("dncnn", depth=3)
    modelfile.load_checkpoint(path, model, torch.optim.Adam(model.parameters()))


@pytest.fixture(scope="module")
def intact_files(fuzz_dir) -> dict[str, tuple[Path, Callable[[Path], object]]]:
    """One intact file per reader, and the reader."""
    rng = np.random.default_rng(0)
    files = {}
    raw = fuzz_dir / "intact_raw.h5"
    with h5py.File(raw, "w") as fh:
        fh.create_dataset("images", data=rng.random((6, 32, 32, 1), dtype=np.float32), chunks=(1, 32, 32, 1))
        fh["images"].attrs["dose"] = np.arange(6, dtype=np.float32)
    files["raw images"] = (raw, _raw_reader)
    split = fuzz_dir / "test.h5"
    with h5safe.create_sealed(split) as fh:
        for key in ("noisy", "clean"):
            fh.create_dataset(key, data=rng.random((4, 32, 32), dtype=np.float32), chunks=(1, 32, 32))
        fh.create_dataset("dose", data=np.ones(4, np.float32))
    files["processed split"] = (split, lambda p: data_mod.load_split(p.parent, p.stem))
    model = models.build("dncnn", depth=3)
    model_path = fuzz_dir / "model.h5"
    modelfile.save_model(model_path, model, {"model": "dncnn", "options": {"depth": 3}, "normalisation": NORM})
    files["model file"] = (model_path, modelfile.load_model)
    optimizer = torch.optim.Adam(model.parameters())
    model(torch.rand(1, 1, 16, 16)).mean().backward()
    optimizer.step()
    checkpoint = fuzz_dir / "checkpoint.h5"
    modelfile.save_checkpoint(checkpoint, model, optimizer, None, {"model": "dncnn", "options": {"depth": 3},
                                                                 "fingerprint": "f", "epoch": 1})
    files["checkpoint"] = (checkpoint, _load_checkpoint)
    tif = fuzz_dir / "stack.tif"
    tifffile.imwrite(tif, rng.random((3, 32, 32), dtype=np.float32), photometric="minisblack")
    files["tiff for denoise"] = (tif, _read_images)
    files["tiff for preprocess"] = (tif, lambda p: raw_layout.read_tiff(p, (32, 32)))
    npy = fuzz_dir / "stack.npy"
    np.save(npy, rng.random((3, 32, 32), dtype=np.float32))
    files["npy for denoise"] = (npy, _read_images)
    h5 = fuzz_dir / "frames.h5"
    with h5py.File(h5, "w") as fh:
        fh.create_dataset("frames", data=rng.random((3, 32, 32), dtype=np.float32))
    files["hdf5 for denoise"] = (h5, _read_images)
    return files


READERS = ["raw images", "processed split", "model file", "checkpoint", "tiff for denoise", "tiff for preprocess",
           "npy for denoise", "hdf5 for denoise"]


# Where a byte is changed: mostly in the first 4 KiB, where small HDF5 and TIFF files keep their metadata (the
# structure a reader must walk), sometimes anywhere.
places = st.one_of(st.integers(0, 4095), st.integers(0, 2**31))
# Each example reads in a forked child (about 30 ms), and the HDF5 readers of foreign files probe in a child
# interpreter of their own (about 0.3 s): a fixed (derandomized) 30 examples per reader here. Raise max_examples
# for a deeper search: 1500 per reader (12000 files) passed with no crash, hang or other exception.


@pytest.mark.parametrize("which", READERS)
@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(changes=st.lists(st.tuples(places, st.integers(0, 255)), min_size=1, max_size=8),
       keep=st.one_of(st.none(), st.floats(0, 1)))
def test_damaged_files_given_to_every_reader(fuzz_dir, intact_files, which, changes, keep):
    """Bytes changed at random places, and the file perhaps cut short: read fully, or an InputError."""
    source, reader = intact_files[which]
    data = bytearray(source.read_bytes())
    for where, value in changes:
        data[where % len(data)] = value
    if keep is not None:
        data = data[:int(keep * len(data))]
    path = fuzz_dir / f"damaged{''.join(source.suffixes)}"
    if which == "processed split":
        path = fuzz_dir / "damaged" / "test.h5"
        path.parent.mkdir(exist_ok=True)
    path.write_bytes(bytes(data))
    _expect_input_error(reader, path)
