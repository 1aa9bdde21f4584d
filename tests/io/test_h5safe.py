"""Sealed and probed HDF5 files (emdenoise.io.h5safe): a damaged file is a one-line InputError, never a crash."""

from __future__ import annotations

import contextlib
import faulthandler
import hashlib
import logging
import os
import signal
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from support import write_split

from emdenoise import models
from emdenoise.data.prepare import raw as raw_layout
from emdenoise.data.splits import load_split
from emdenoise.errors import InputError
from emdenoise.io import h5safe, micrographs, modelfile

NORM = {"noisy": {"mean": 0.5, "std": 0.3}, "clean": {"mean": 0.5, "std": 0.25}}
SEGFAULT = ("-c", "import os, signal; os.kill(os.getpid(), signal.SIGSEGV)")


def sealed_file(path):
    with h5safe.create_sealed(path) as fh:
        fh.create_dataset("x", data=np.arange(1000, dtype=np.float32), chunks=(100,))
        fh.attrs["note"] = "sealed"
    return path


def flip(path, where: int) -> None:
    data = bytearray(path.read_bytes())
    data[where] ^= 0x01
    path.write_bytes(bytes(data))


def error_of(action, *args) -> str:
    with pytest.raises(InputError) as err:
        action(*args)
    assert "\n" not in err.value.message
    return err.value.message


# ---------------------------------------------------------------------------------------------- sealed files


def test_a_sealed_file_is_plain_hdf5_with_its_sha256_in_the_user_block(tmp_path):
    path = sealed_file(tmp_path / "a.h5")
    data = path.read_bytes()
    header = f"emdenoise-sha256:{hashlib.sha256(data[512:]).hexdigest()}\n".encode()
    assert data[:512] == header.ljust(512, b"\0")
    assert data[512:520] == h5safe.HDF5_SIGNATURE
    h5safe.verify(path)
    with h5py.File(path, "r") as fh:  # h5py alone reads it: libhdf5 skips the user block
        assert fh.userblock_size == 512 and fh.attrs["note"] == "sealed" and fh["x"][-1] == 999
    with h5safe.open_sealed(path) as fh:
        assert fh["x"][0] == 0


@pytest.mark.parametrize("where", [512, 513, 3000, -1])  # the HDF5 signature, the superblock, inside, last byte
def test_one_byte_changed_after_the_user_block_is_refused_naming_the_file(tmp_path, where):
    path = sealed_file(tmp_path / "a.h5")
    flip(path, where)
    assert error_of(h5safe.open_sealed, path) == (
        f"{path}: damaged or not written by emdenoise: its sha256 does not match the one recorded in its header"
    )


def test_a_changed_header_is_refused(tmp_path):
    path = sealed_file(tmp_path / "a.h5")
    data = path.read_bytes()
    digit = data[17:18]
    path.write_bytes(data[:17] + (b"0" if digit != b"0" else b"1") + data[18:])  # another sha256
    assert "sha256 does not match" in error_of(h5safe.verify, path)
    path.write_bytes(data[:17] + b"X" + data[18:])  # not a sha256
    message = error_of(h5safe.verify, path)
    assert message.startswith(f"{path}: damaged or not written by emdenoise: expected the header")
    assert "b'emdenoise-sha256:X" in message


def test_an_hdf5_file_without_the_header_is_refused_where_a_sealed_one_is_expected(tmp_path):
    plain = tmp_path / "plain.h5"
    with h5py.File(plain, "w") as fh:
        fh["x"] = np.zeros(3)
    message = error_of(h5safe.verify, plain)
    assert message.startswith(
        f"{plain}: damaged or not written by emdenoise: expected the header "
        "'emdenoise-sha256:<64 hex digits>' in its first 512 bytes"
    )
    assert "written by another program" in message
    unsealed = tmp_path / "unsealed.h5"  # a user block, but never sealed
    with h5py.File(unsealed, "w", userblock_size=512) as fh:
        fh["x"] = np.zeros(3)
    assert "expected the header" in error_of(h5safe.verify, unsealed)
    not_hdf5 = tmp_path / "pickle.h5"
    not_hdf5.write_bytes(b"\x80\x04\x95" + bytes(600))
    assert "this is not HDF5" in error_of(h5safe.verify, not_hdf5)


def test_an_exception_leaves_the_file_unsealed_and_seal_wants_a_user_block(tmp_path):
    path = tmp_path / "a.h5"
    with pytest.raises(RuntimeError), h5safe.create_sealed(path) as fh:
        fh["x"] = np.zeros(3)
        raise RuntimeError("the writer failed")
    assert "expected the header" in error_of(h5safe.verify, path)
    plain = tmp_path / "plain.h5"
    with h5py.File(plain, "w") as fh:
        fh["x"] = np.zeros(3)
    before = plain.read_bytes()
    with pytest.raises(ValueError, match="user block"):
        h5safe.seal(plain)
    assert plain.read_bytes() == before  # the superblock was not overwritten


def test_every_reader_of_sealed_files_checks_the_seal(tmp_path):
    model = models.build("dncnn", depth=3)
    path = tmp_path / "model.h5"
    modelfile.save_model(path, model, {"model": "dncnn", "options": {"depth": 3}, "normalisation": NORM})
    checkpoint = tmp_path / "checkpoint.h5"
    modelfile.save_checkpoint(
        checkpoint,
        model,
        torch.optim.SGD(model.parameters(), lr=0.1),
        None,
        {"model": "dncnn", "options": {"depth": 3}, "fingerprint": "f", "epoch": 1},
    )
    split = tmp_path / "data" / "test.h5"
    split.parent.mkdir()
    write_split(split, np.zeros((2, 16, 16)), np.ones((2, 16, 16)))
    assert modelfile.checkpoint_info(checkpoint)["epoch"] == 1 and len(load_split(split.parent, "test")) == 2
    for file in (path, checkpoint, split):
        flip(file, -1)
    for message in (
        error_of(modelfile.load_model, path),
        error_of(modelfile.checkpoint_info, checkpoint),
        error_of(modelfile.load_checkpoint, checkpoint, model),
    ):
        assert "sha256 does not match" in message
    assert error_of(load_split, split.parent, "test") == (
        f"{split}: damaged or not written by emdenoise: its sha256 does not match the one recorded in its header; "
        "run the preprocess task again"
    )
    plain = tmp_path / "plain" / "test.h5"  # a split file from elsewhere (or an older emdenoise)
    plain.parent.mkdir()
    with h5py.File(plain, "w") as fh:
        fh["noisy"] = fh["clean"] = np.zeros((2, 16, 16), np.float32)
    assert "expected the header" in error_of(load_split, plain.parent, "test")


# ---------------------------------------------------------------------------------------------- foreign files


def foreign_file(path):
    """A foreign HDF5 file with every kind of thing the probe walks: nested groups, attributes everywhere, a
    compressed chunked dataset, a hard-link cycle, soft links (one dangling). (External links, which the probe
    refuses, are in test_h5_external.py.)"""
    with h5py.File(path, "w") as fh:
        fh.attrs["root"] = 1
        group = fh.create_group("a/b")
        group.attrs["list"] = np.arange(5)
        ds = group.create_dataset(
            "images", data=np.ones((4, 32, 32), np.float32), chunks=(1, 32, 32), compression="gzip"
        )
        ds.attrs["dose"] = np.arange(4, dtype=np.float32)
        group["up"] = fh["a"]  # a cycle: a/b/up is a
        fh["soft"] = h5py.SoftLink("/a/b/images")
        fh["dangling"] = h5py.SoftLink("/nothing")
    return path


def test_the_walk_reads_every_attribute_once_and_ends_on_cycles(tmp_path, monkeypatch):
    path = foreign_file(tmp_path / "f.h5")
    read = []
    real = h5py.AttributeManager.__getitem__

    def spy(self, name):
        read.append((Path(h5py.h5f.get_name(self._id).decode()).name, name))
        return real(self, name)

    monkeypatch.setattr(h5py.AttributeManager, "__getitem__", spy)
    with h5py.File(path, "r") as fh:
        h5safe._walk(fh)
    assert sorted(read) == [("f.h5", "dose"), ("f.h5", "list"), ("f.h5", "root")]


def test_an_intact_foreign_file_passes_the_probe(tmp_path):
    path = foreign_file(tmp_path / "f.h5")
    with h5safe.open_foreign(path) as fh:
        assert fh["soft"].shape == (4, 32, 32)


def dies_walking(path) -> bool:
    """Whether a process that walks ``path`` as the probe does (in-process, in a forked child) dies."""
    pid = os.fork()
    if pid == 0:
        try:
            faulthandler.disable()  # the crash is expected: no Python stack dump in the test log
            signal.alarm(60)  # a hang counts as dying too
            with h5py.File(path, "r") as fh:
                h5safe._walk(fh)
        finally:
            os._exit(0)
    return os.WIFSIGNALED(os.waitpid(pid, 0)[1])


def test_a_file_that_really_crashes_libhdf5_is_a_one_line_input_error(tmp_path):
    """A real crash, no simulation: one changed byte in the datatype of a variable-length string attribute (its
    class bits) makes HDF5 2.0 die with SIGSEGV reading the attribute. Skipped where this HDF5 writes the file
    differently or survives the change; the simulated crash below still runs there."""
    path = tmp_path / "crash.h5"
    with h5py.File(path, "w") as fh:
        fh.attrs["format"] = "emdenoise-checkpoint/1"
    data = bytearray(path.read_bytes())
    at = data.index(b"format\0\0") + 8  # the attribute's datatype: version 1, class 9 (variable length)
    if data[at : at + 2] != b"\x19\x01":
        pytest.skip(f"HDF5 {h5py.version.hdf5_version} lays the attribute out differently")
    data[at + 1] = 0xFF  # its class bits
    path.write_bytes(bytes(data))
    if not dies_walking(path):
        pytest.skip(f"HDF5 {h5py.version.hdf5_version} survives this damage")
    expected = (
        f"{path}: damaged HDF5 file: the HDF5 library crashed (SIGSEGV) reading its structure; expected an "
        "intact HDF5 file"
    )
    assert error_of(h5safe.probe, path) == expected
    assert error_of(micrographs.open_input, path) == expected  # the denoise task's HDF5 reader, in this process


def test_a_probe_that_dies_by_a_signal_is_a_one_line_input_error(tmp_path):
    """Simulated, on an intact file: the child is one that kills itself with SIGSEGV, as libhdf5 does when it
    reads out of bounds; the parent's side (exit status to one line) is the real one, on any HDF5 version."""
    path = foreign_file(tmp_path / "f.h5")
    assert error_of(h5safe.probe, path, SEGFAULT) == (
        f"{path}: damaged HDF5 file: the HDF5 library crashed "
        "(SIGSEGV) reading its structure; expected an intact HDF5 file"
    )
    message = error_of(h5safe.probe, path, ("-c", "import sys; sys.exit('MemoryError: out of memory')"))
    assert message == (
        f"{path}: damaged HDF5 file: the HDF5 library failed (exit 1: MemoryError: out of memory) "
        "reading its structure; expected an intact HDF5 file"
    )


def test_the_foreign_readers_probe_the_file_before_opening_it(tmp_path, monkeypatch):
    """The raw-data reader of preprocess and the HDF5 input of denoise: a crashing probe (simulated as in the
    test above) is their one-line InputError."""
    probe = h5safe.probe
    monkeypatch.setattr(h5safe, "probe", lambda path: probe(path, SEGFAULT))
    path = foreign_file(tmp_path / "f.h5")
    with contextlib.ExitStack() as stack:
        message = error_of(raw_layout.open_raw_images, path, stack, logging.getLogger("test_h5safe"))
    assert message.startswith(f"{path}: damaged HDF5 file: the HDF5 library crashed (SIGSEGV)")
    assert error_of(micrographs.open_input, path) == message
    monkeypatch.setattr(h5safe, "probe", probe)
    with micrographs.open_input(path) as src:  # the real probe lets it through
        assert [image.name for image in src.images] == ["a/b/images"]
