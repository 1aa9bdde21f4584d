"""Helpers shared by the tests: running a task (in-process or as the real command) with the one-line-error
assertion, parameters files, raw data, tiny model files, looking at output folders, killing runs, read-only
folders and small disks. Fixtures built on them are in conftest.py."""

from __future__ import annotations

import contextlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import h5py
import numpy as np
import pytest
import tifffile
import torch
import yaml

from emdenoise import cli, models
from emdenoise.data.acquire.fetch import RETRY_BASE_ENV
from emdenoise.io import h5safe, modelfile
from emdenoise.layout import CARD, CARD_FORMAT, DATASET_CARD_KEYS, RAW_FILES, SPLIT_FILE
from emdenoise.outputs import write_json_atomic

ROOT = Path(__file__).resolve().parents[1]  # the repository
ENV = {k: v for k, v in os.environ.items() if k.lower() not in ("http_proxy", "https_proxy", "all_proxy")}
ENV.update({"EMDENOISE_PROGRESS": "0", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", RETRY_BASE_ENV: "0.01"})
NORM = {"noisy": {"mean": 0.5, "std": 0.3}, "clean": {"mean": 0.5, "std": 0.25}}
TRAIN = {"model": "sciml_ae", "epochs": 6, "batch_size": 4, "lr": 3e-3, "device": "cpu", "precision": "fp32"}
VOLATILE = {"created", "seconds", "images_per_s", "frames_per_s"}  # times and speeds: differ run to run


# -- running the command ------------------------------------------------------------------------------------------
def argv(task: str, paths: dict[str, Path], sets: tuple[str, ...] = ()) -> list[str]:
    return [task, *(f"--{name}={path}" for name, path in paths.items()), *(a for s in sets for a in ("--set", s))]


def run_cmd(task: str, paths: dict[str, Path], *sets: str, timeout: float = 300) -> tuple[int, str]:
    """``python -m emdenoise TASK ...`` in a fresh process: (exit code, stderr)."""
    res = subprocess.run(
        [sys.executable, "-m", "emdenoise", *argv(task, paths, sets)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=ENV,
        timeout=timeout,
    )
    return res.returncode, res.stderr


def start_cmd(task: str, paths: dict[str, Path], stderr: Path, *sets: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "emdenoise", *argv(task, paths, sets)],
        cwd=ROOT,
        env=ENV,
        stdout=subprocess.DEVNULL,
        stderr=open(stderr, "w"),
    )


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
    path.parent.mkdir(parents=True, exist_ok=True)
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
                fh.create_dataset(
                    "images", data=rng.random((n, size, size, 1), dtype=np.float32), chunks=(1, size, size, 1)
                )
    return raw


def save_model(
    model_dir: Path, name: str = "sciml_ae", seed: int = 0, extra_meta: dict | None = None, **options
) -> Path:
    """A real (untrained) model file; ``extra_meta`` adds meta keys (e.g. ``{"pixel_size": 0.2}``)."""
    torch.manual_seed(seed)
    path = model_dir / name / "em_denoise_model.h5"
    modelfile.save_model(
        path,
        models.build(name, **options),
        {"model": name, "options": options, "normalisation": NORM, "data_range": 1.0, **(extra_meta or {})},
    )
    return path


# -- looking at folders ---------------------------------------------------------------------------------------------
def _strip(obj):
    if isinstance(obj, dict):
        return {k: _strip(v) for k, v in obj.items() if k not in VOLATILE}
    if isinstance(obj, list):
        return [_strip(v) for v in obj]
    return obj


def content_of(path: Path):
    """Check that ``path`` is complete in its format and return what to compare it by."""
    suffix = path.suffix.lower()
    if suffix == ".json":
        return _strip(json.loads(path.read_text(encoding="utf-8")))
    if suffix in (".h5", ".hdf5"):
        with h5py.File(path, "r") as fh:  # a partial HDF5 file does not open, or its data do not read
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
            found[rel.as_posix()] = content_of(path)
    return found


def temporaries(folder: Path) -> list[Path]:
    """Files that atomic writers and downloads work in (hidden temporaries, .part files, staging folders)."""
    if not folder.is_dir():
        return []
    return sorted(
        p
        for p in folder.rglob("*")
        if p.is_file()
        and (
            (p.name.startswith(".") and p.name.endswith(".tmp"))
            or p.name.endswith(".part")
            or any(part.startswith(".extract-") or part == ".abtem-chunks" for part in p.relative_to(folder).parts)
        )
    )


def assert_old_or_new(now: dict, old: dict, new: dict) -> None:
    """Each file is either the one from before the run or the one an uninterrupted run writes."""
    for rel, content in now.items():
        assert content == old.get(rel) or content == new.get(rel), f"{rel} is neither the old nor the new file"


def read_frames(path: Path) -> np.ndarray:
    """The frames of a denoised output file (TIFF, NPY, or the HDF5 ``frames`` dataset)."""
    if path.suffix == ".tif":
        return tifffile.imread(path)
    if path.suffix == ".npy":
        return np.load(path)
    with h5py.File(path, "r") as fh:
        return fh["frames"][()]


# -- several processes ----------------------------------------------------------------------------------------------
def torchrun(args: list[str], cwd: Path, timeout: float = 240, nproc: int = 2) -> subprocess.CompletedProcess:
    """``torchrun --standalone --nproc_per_node=NPROC ARGS`` on the CPU (a free rendezvous port each time), one
    thread per process, no progress bars."""
    env = {**os.environ, "EMDENOISE_PROGRESS": "0", "OMP_NUM_THREADS": "1"}
    for name in ("WORLD_SIZE", "RANK", "LOCAL_RANK"):
        env.pop(name, None)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}", *args]
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


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


def temp_bytes(folder: Path, name: str) -> int:
    """Bytes written so far to the temporary file of ``folder/name`` (0 before it exists)."""
    return sum(p.stat().st_size for p in folder.rglob(f".{name}.*.tmp") if p.is_file()) if folder.is_dir() else 0


def has_bytes(paths) -> bool:
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
        pytest.skip(
            "running as root, where chmod does not stop writes, and a read-only bind mount is not permitted here"
        )
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


# -- a task's paths ----------------------------------------------------------------------------------------------
# every (task, output folder) pair but the logs
TASK_OUTPUTS = [(task, out) for task, spec in cli.TASKS.items() for out in spec.outputs if out != "log_dir"]


def task_paths(tmp_path: Path, task: str) -> dict[str, Path]:
    """Every path of ``task`` under ``tmp_path`` (nothing created) and a parameters file of defaults."""
    spec = cli.TASKS[task]
    paths = {name: tmp_path / name for name in spec.inputs + spec.outputs}
    paths["parameters_file"] = params_file(tmp_path / "p.yaml")
    return paths


def ready_inputs(tmp_path: Path, task: str, processed: Path) -> dict[str, Path]:
    """:func:`task_paths` with every input of ``task`` present and good: a small raw set, the processed set, a
    trained model, a folder holding one image (outputs not there yet)."""
    paths = task_paths(tmp_path, task)
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


def outputs_untouched(paths: dict[str, Path], task: str) -> bool:
    return not any(paths[out].exists() for out in cli.TASKS[task].outputs if out != "log_dir")


# -- processed data folders (the data_dir layout of emdenoise.layout) without running download and preprocess --
def write_split(path: Path, noisy, clean, dose=None, extra: dict | None = None) -> None:
    """One split file, sealed as preprocess seals it: ``noisy``, ``clean`` (N, H, W), one image per chunk,
    ``dose`` when given, and the ``extra`` datasets (name -> array: atoms, pixel_size)."""
    with h5safe.create_sealed(path) as fh:
        for key, images in (("noisy", noisy), ("clean", clean)):
            images = np.asarray(images, dtype=np.float32)
            fh.create_dataset(key, data=images, chunks=(1, *images.shape[1:]) if len(images) else None)
        if dose is not None:
            fh.create_dataset("dose", data=np.asarray(dose, dtype=np.float32))
        for key, values in (extra or {}).items():
            fh.create_dataset(key, data=np.asarray(values))


def write_data_dir(root: Path, splits: dict[str, tuple], normalisation: dict, data_range: float | None = None) -> Path:
    """Write ``{split: (noisy, clean[, dose[, extra datasets]])}`` and a dataset card with every key of the
    contract.

    ``data_range`` defaults to the contract's definition: max - min of the clean test images.
    """
    root.mkdir(parents=True, exist_ok=True)
    entries, ranges, doses = {}, {}, []
    for split, (noisy, clean, *rest) in splits.items():
        dose = rest[0] if rest else None
        write_split(root / SPLIT_FILE.format(split=split), noisy, clean, dose, rest[1] if len(rest) > 1 else None)
        entries[split] = {"file": SPLIT_FILE.format(split=split), "n": len(clean)}
        ranges[split] = {
            "noisy": [float(np.min(noisy)), float(np.max(noisy))],
            "clean": [float(np.min(clean)), float(np.max(clean))],
        }
        doses.append(dose is not None)
    if data_range is None:
        data_range = ranges["test"]["clean"][1] - ranges["test"]["clean"][0]
    card = {
        "format": CARD_FORMAT,
        "image_shape": list(np.shape(splits["test"][1])[1:]),
        "splits": entries,
        "value_range": ranges,
        "normalisation": normalisation,
        "data_range": float(data_range),
        "data_range_definition": "max - min of the clean test set",
        "has_dose": all(doses),
        "source": None,
        "pixel_size_angstrom": None,
        "has_atoms": False,
    }
    assert set(card) == set(DATASET_CARD_KEYS)
    write_json_atomic(root / CARD, card)
    return root


# -- images and spectra ---------------------------------------------------------------------------------------------


def power_spectrum(img: np.ndarray) -> np.ndarray:
    """|FFT|^2 of the mean-removed, Hann-windowed image (little leakage), zero frequency at [0, 0]."""
    window = np.hanning(img.shape[0])[:, None] * np.hanning(img.shape[1])[None, :]
    return np.abs(np.fft.fft2((img - img.mean()) * window)) ** 2


def radial_mean(values: np.ndarray) -> np.ndarray:
    """Mean of an FFT-ordered square array over rings one frequency bin wide: entry i is |k| in [i-0.5, i+0.5)."""
    size = values.shape[0]
    f = np.fft.fftfreq(size) * size
    ring = np.rint(np.hypot(f[:, None], f[None, :])).astype(int).ravel()
    sums = np.bincount(ring, values.ravel().astype(np.float64))
    return sums / np.maximum(np.bincount(ring), 1)
