"""Model files and checkpoints carrying a pickle, from another architecture or another format version: refused
without running anything."""

from __future__ import annotations

import contextlib
import io
import pickle
import shutil
import zipfile
from pathlib import Path

import h5py
import numpy as np
import pytest
from support import TRAIN, argv, final_files, one_error, params_file, run_here, save_model

from emdenoise import cli
from emdenoise.errors import EXIT_BAD_INPUT
from emdenoise.io import h5safe


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
    assert (
        cli.main(
            argv(
                "train",
                {
                    "data_dir": processed,
                    "parameters_file": params,
                    "model_dir": tmp / "models",
                    "output_dir": tmp / "out",
                    "log_dir": tmp / "logs",
                },
            )
        )
        == 0
    )
    return tmp, params


@pytest.mark.parametrize(
    "how",
    [
        "pickle file",
        "torch.save zip",
        "pickle in the weights",
        "pickle in the tensors",
        "pickle in the payload",
        "newer format",
    ],
)
def test_a_damaged_checkpoint_is_refused_without_running_it(tmp_path, capsys, processed, trained, how):
    shutil.copytree(trained[0] / "models", tmp_path / "models")
    checkpoint = tmp_path / "models" / "sciml_ae" / "checkpoint_last.h5"
    marker = tmp_path / "pwned"
    word = _damage(checkpoint, how, marker)
    model_before = (tmp_path / "models" / "sciml_ae" / "em_denoise_model.h5").read_bytes()
    code, err = run_here(
        capsys,
        "train",
        {
            "data_dir": processed,
            "parameters_file": trained[1],
            "model_dir": tmp_path / "models",
            "output_dir": tmp_path / "out",
            "log_dir": tmp_path / "logs",
        },
    )
    one_error(code, err, EXIT_BAD_INPUT, str(checkpoint), word)
    assert not marker.exists()
    assert (tmp_path / "models" / "sciml_ae" / "em_denoise_model.h5").read_bytes() == model_before


@pytest.mark.parametrize(
    "how", ["pickle file", "torch.save zip", "pickle in the weights", "newer format", "other architecture"]
)
@pytest.mark.parametrize("task", ["test", "denoise"])
def test_a_damaged_model_file_is_refused_by_test_and_denoise(tmp_path, capsys, processed, task, how):
    model = save_model(tmp_path / "models")
    marker = tmp_path / "pwned"
    word = _damage(model, how, marker)
    out = tmp_path / "out"
    if task == "test":
        paths = {
            "data_dir": processed,
            "model_dir": tmp_path / "models",
            "output_dir": out,
            "parameters_file": params_file(
                tmp_path / "p.yaml", test={"baselines": "none", "device": "cpu", "precision": "fp32"}
            ),
        }
    else:
        (tmp_path / "in").mkdir()
        np.save(tmp_path / "in" / "a.npy", np.ones((32, 32), np.float32))
        paths = {
            "input_dir": tmp_path / "in",
            "model_dir": tmp_path / "models",
            "output_dir": out,
            "parameters_file": params_file(tmp_path / "p.yaml", denoise={"device": "cpu", "precision": "fp32"}),
        }
    code, err = run_here(capsys, task, {**paths, "log_dir": tmp_path / "logs"})
    one_error(code, err, EXIT_BAD_INPUT, str(model), word)
    assert not marker.exists()
    assert final_files(out) == {}  # nothing written
