"""Random and damaged bytes given to every reader: an InputError, never another exception, never a crash
(hypothesis; each read in a forked child, so a reader that kills its process fails the test, not pytest)."""

from __future__ import annotations

import contextlib
import json
import os
import select
import signal
import traceback
from collections.abc import Callable
from pathlib import Path

import h5py
import numpy as np
import pytest
import tifffile
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from support import NORM

from emdenoise import models
from emdenoise.data import splits as data_mod
from emdenoise.data.prepare import raw as raw_layout
from emdenoise.errors import InputError
from emdenoise.io import h5safe, micrographs, modelfile

MAGIC = {
    ".tif": b"II*\x00",
    ".npy": b"\x93NUMPY\x01\x00",
    ".h5": b"\x89HDF\r\n\x1a\n",
    ".png": b"\x89PNG\r\n\x1a\n",
    ".mrc": b"",
}


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
    timeout = h5safe.PROBE_TIMEOUT_S + 60  # a hung probe is the reader's InputError, and comes first
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: leave without running pytest's clean-up
        try:
            os.setpgid(0, 0)  # a group of its own, for the probe's process too
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


@pytest.mark.slow
@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
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
    modelfile.save_checkpoint(
        checkpoint, model, optimizer, None, {"model": "dncnn", "options": {"depth": 3}, "fingerprint": "f", "epoch": 1}
    )
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


# the two HDF5 readers probe each damaged file in a child interpreter: over 5 s of CPU, so slow
READERS = [
    pytest.param("raw images", marks=pytest.mark.slow),
    "processed split",
    "model file",
    "checkpoint",
    "tiff for denoise",
    "tiff for preprocess",
    "npy for denoise",
    pytest.param("hdf5 for denoise", marks=pytest.mark.slow),
]


# Where a byte is changed: mostly in the first 4 KiB, where small HDF5 and TIFF files keep their metadata (the
# structure a reader must walk), sometimes anywhere.
places = st.one_of(st.integers(0, 4095), st.integers(0, 2**31))
# Each example reads in a forked child (about 30 ms), and the HDF5 readers of foreign files probe in a child
# interpreter of their own (about 0.3 s): a fixed (derandomized) 30 examples per reader here. Raise max_examples
# for a deeper search: 1500 per reader (12000 files) passed with no crash, hang or other exception.


@pytest.mark.parametrize("which", READERS)
@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    changes=st.lists(st.tuples(places, st.integers(0, 255)), min_size=1, max_size=8),
    keep=st.one_of(st.none(), st.floats(0, 1)),
)
def test_damaged_files_given_to_every_reader(fuzz_dir, intact_files, which, changes, keep):
    """Bytes changed at random places, and the file perhaps cut short: read fully, or an InputError."""
    source, reader = intact_files[which]
    data = bytearray(source.read_bytes())
    for where, value in changes:
        data[where % len(data)] = value
    if keep is not None:
        data = data[: int(keep * len(data))]
    path = fuzz_dir / f"damaged{''.join(source.suffixes)}"
    if which == "processed split":
        path = fuzz_dir / "damaged" / "test.h5"
        path.parent.mkdir(exist_ok=True)
    path.write_bytes(bytes(data))
    _expect_input_error(reader, path)
