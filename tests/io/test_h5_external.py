"""HDF5 files that reach outside themselves (emdenoise.io.h5safe): external raw storage, external links, virtual
datasets reading other files and filters that need a plugin are refused with one line naming the file, the
object and its target, for every HDF5 file emdenoise reads (denoise inputs, raw data, split and model files);
nothing is written and the file they point to is never opened. All files are real, written by h5py."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from emdenoise import cli, models
from emdenoise.data.splits import load_split
from emdenoise.errors import EXIT_BAD_INPUT, InputError
from emdenoise.io import h5safe, modelfile
from emdenoise.layout import MODEL_FILE, RAW_FILES

ROOT = Path(__file__).resolve().parents[2]  # the repository
KINDS = ("external storage", "external link", "virtual dataset", "plugin filter")
BITSHUFFLE = 32008  # a registered filter id no HDF5 build has built in: reading it needs a plugin
SELF_CONTAINED = "expected an HDF5 file that holds all its data itself (emdenoise reads no other file through it)"
BUILT_IN = (
    "expected a filter built into HDF5 or h5py: deflate (gzip), shuffle, fletcher32, szip, nbit, scaleoffset, lzf"
)
NORM = {"noisy": {"mean": 0.5, "std": 0.3}, "clean": {"mean": 0.5, "std": 0.25}}


def write_secret(folder: Path, shape: tuple[int, ...]) -> np.ndarray:
    """The same float32 pixels twice in ``folder`` (outside every input): raw in secret.bin, and as the dataset
    "images" of secret.h5."""
    folder.mkdir(parents=True, exist_ok=True)
    secret = (np.random.default_rng(7).random(shape, dtype=np.float32) * 1000).astype(np.float32)
    secret.tofile(folder / "secret.bin")
    with h5py.File(folder / "secret.h5", "w") as fh:
        fh["images"] = secret
    return secret


def write_reaching_out(path: Path, kind: str, secret_dir: Path, shape: tuple[int, ...]) -> str:
    """An HDF5 file whose float32 dataset "images" of ``shape`` takes its pixels from ``secret_dir`` by ``kind``
    (one of KINDS); returns the one line emdenoise is expected to refuse it with."""
    binary, hdf5 = str(secret_dir / "secret.bin"), str(secret_dir / "secret.h5")
    with h5py.File(path, "w") as fh:
        if kind == "external storage":
            fh.create_dataset("images", shape, np.float32, external=[(binary, 0, 4 * math.prod(shape))])
            problem = f"its data are stored in another file, {binary!r} (HDF5 external storage); {SELF_CONTAINED}"
        elif kind == "external link":
            fh["images"] = h5py.ExternalLink(hdf5, "/images")
            problem = f"an external link to {hdf5!r} (object '/images'); {SELF_CONTAINED}"
        elif kind == "virtual dataset":
            layout = h5py.VirtualLayout(shape, np.float32)
            layout[...] = h5py.VirtualSource(hdf5, "images", shape=shape)
            fh.create_virtual_dataset("images", layout)
            problem = f"a virtual dataset reading {hdf5!r} (dataset 'images'); {SELF_CONTAINED}"
        else:  # chunks stored as if bitshuffle had packed them: only a plugin could decode them
            dcpl = h5py.h5p.create(h5py.h5p.DATASET_CREATE)
            dcpl.set_chunk((1, *shape[1:]))
            dcpl.set_filter(BITSHUFFLE, h5py.h5z.FLAG_OPTIONAL, (0, 2))
            dsid = h5py.h5d.create(fh.id, b"images", h5py.h5t.NATIVE_FLOAT, h5py.h5s.create_simple(shape), dcpl=dcpl)
            for i in range(shape[0]):
                dsid.write_direct_chunk(
                    (i,) + (0,) * (len(shape) - 1), np.zeros(shape[1:], np.float32).tobytes(), filter_mask=0
                )
            problem = f"compressed with HDF5 filter {BITSHUFFLE}, which needs a plugin; {BUILT_IN}"
    return f"{path}: /images: {problem}"


def error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if "error:" in line]


def files_under(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file()) if folder.exists() else []


@pytest.mark.parametrize("kind", KINDS[:3])
def test_plain_h5py_reads_the_other_file_through_these_files(tmp_path, kind):
    """The files of these tests are what they claim: libhdf5 left to itself reads the secret through them."""
    secret = write_secret(tmp_path / "secret", (3, 32, 32))
    write_reaching_out(tmp_path / "f.h5", kind, tmp_path / "secret", (3, 32, 32))
    with h5py.File(tmp_path / "f.h5", "r") as fh:
        np.testing.assert_array_equal(fh["images"][()], secret)


def test_the_plugin_filter_file_really_needs_a_plugin(tmp_path):
    write_secret(tmp_path / "secret", (3, 32, 32))
    write_reaching_out(tmp_path / "f.h5", "plugin filter", tmp_path / "secret", (3, 32, 32))
    with h5py.File(tmp_path / "f.h5", "r") as fh:
        assert fh["images"].id.get_create_plist().get_filter(0)[0] == BITSHUFFLE
        with pytest.raises(OSError, match="plugin"):
            fh["images"][0]


# ---------------------------------------------------------------------------------------------- denoise


@pytest.fixture
def workspace(tmp_path, monkeypatch):
    """A trained (random) model, an input folder holding one good image, and a secret folder beside them."""
    monkeypatch.setenv("EMDENOISE_PROGRESS", "0")
    torch.manual_seed(0)
    modelfile.save_model(
        tmp_path / "models" / "dncnn" / MODEL_FILE,
        models.build("dncnn", depth=3),
        {"model": "dncnn", "options": {"depth": 3}, "normalisation": NORM},
    )
    (tmp_path / "in").mkdir()
    np.save(tmp_path / "in" / "good.npy", np.random.default_rng(1).random((32, 32), dtype=np.float32))
    (tmp_path / "p.yaml").write_text("denoise:\n  tile_size: 0\n  device: cpu\n  precision: fp32\n")
    write_secret(tmp_path / "secret", (3, 32, 32))
    return tmp_path


def run_denoise(root: Path) -> int:
    return cli.main(
        [
            "denoise",
            f"--input_dir={root / 'in'}",
            f"--model_dir={root / 'models'}",
            f"--output_dir={root / 'out'}",
            f"--parameters_file={root / 'p.yaml'}",
            f"--log_dir={root / 'logs'}",
        ]
    )


@pytest.mark.parametrize("kind", KINDS)
def test_denoise_refuses_an_input_that_reaches_outside_and_writes_nothing(workspace, capsys, kind):
    expected = write_reaching_out(workspace / "in" / "hostile.h5", kind, workspace / "secret", (3, 32, 32))
    assert run_denoise(workspace) == EXIT_BAD_INPUT
    (line,) = error_lines(capsys.readouterr().err)
    assert line.endswith(f"error: {expected}")
    assert files_under(workspace / "out") == []  # not even good.npy: every input is checked first


def test_denoise_reads_a_virtual_dataset_whose_sources_are_in_the_same_file(workspace, capsys):
    """The control: a virtual dataset mapping another dataset of its own file (source file ".") is no escape."""
    own = np.random.default_rng(2).random((2, 32, 32), dtype=np.float32)
    with h5py.File(workspace / "in" / "own.h5", "w") as fh:
        fh["raw"] = own
        layout = h5py.VirtualLayout(own.shape, np.float32)
        layout[...] = h5py.VirtualSource(".", "raw", shape=own.shape)
        fh.create_virtual_dataset("images", layout)
    assert run_denoise(workspace) == 0, capsys.readouterr().err
    with h5py.File(workspace / "out" / "own.h5", "r") as fh:
        assert fh["images"].shape == own.shape and fh["images"].dtype == np.float32
    assert (workspace / "out" / "good.npy").is_file()


# ---------------------------------------------------------------------------------------------- preprocess


def write_raw(root: Path, n: int = 4, size: int = 32) -> None:
    """A small em_graphene_sim layout: train/ and test/, noisy and clean (n, size, size, 1) float32."""
    rng = np.random.default_rng(3)
    for split in ("train", "test"):
        (root / split).mkdir(parents=True)
        for name in RAW_FILES.values():
            with h5py.File(root / split / name, "w") as fh:
                fh["images"] = rng.random((n, size, size, 1), dtype=np.float32)


@pytest.mark.parametrize("kind", KINDS)
def test_preprocess_refuses_raw_data_that_reach_outside_and_writes_nothing(tmp_path, monkeypatch, capsys, kind):
    monkeypatch.setenv("EMDENOISE_PROGRESS", "0")
    raw, data = tmp_path / "raw", tmp_path / "data"
    write_raw(raw)
    write_secret(tmp_path / "secret", (4, 32, 32, 1))
    expected = write_reaching_out(raw / "train" / RAW_FILES["noisy"], kind, tmp_path / "secret", (4, 32, 32, 1))
    (tmp_path / "p.yaml").write_text("preprocess:\n  val_fraction: 0.25\n  seed: 0\n")
    assert (
        cli.main(
            [
                "preprocess",
                f"--raw_data_dir={raw}",
                f"--data_dir={data}",
                f"--parameters_file={tmp_path / 'p.yaml'}",
                f"--log_dir={tmp_path / 'logs'}",
            ]
        )
        == EXIT_BAD_INPUT
    )
    (line,) = error_lines(capsys.readouterr().err)
    assert line.endswith(f"error: {expected}")
    assert files_under(data) == []


# ---------------------------------------------------------------------------------------------- sealed files


def error_of(action, *args) -> str:
    with pytest.raises(InputError) as err:
        action(*args)
    assert "\n" not in err.value.message
    return err.value.message


def test_sealed_files_changed_to_reach_outside_are_refused_by_the_seal_and_resealed_by_the_check(tmp_path):
    """A split file and a model file given an external link and an externally stored weight: the seal no longer
    matches; sealed again (anyone can compute a sha256), the check after opening refuses them."""
    secret = tmp_path / "secret"
    write_secret(secret, (3, 3, 3))
    split = tmp_path / "data" / "test.h5"
    split.parent.mkdir()
    with h5safe.create_sealed(split) as fh:
        fh["noisy"] = fh["clean"] = np.zeros((2, 16, 16), np.float32)
    assert len(load_split(split.parent, "test")) == 2
    with h5py.File(split, "r+") as fh:  # h5py keeps the user block and its header
        del fh["clean"]
        fh["clean"] = h5py.ExternalLink(str(secret / "secret.h5"), "/images")
    assert "sha256 does not match" in error_of(load_split, split.parent, "test")
    h5safe.seal(split)
    assert error_of(load_split, split.parent, "test") == (
        f"{split}: /clean: an external link to {str(secret / 'secret.h5')!r} (object '/images'); {SELF_CONTAINED}; "
        "run the preprocess task again"
    )

    model = tmp_path / "model.h5"
    modelfile.save_model(
        model, models.build("dncnn", depth=3), {"model": "dncnn", "options": {"depth": 3}, "normalisation": NORM}
    )
    with h5py.File(model, "r+") as fh:
        weight = next(name for name in fh["state"] if name.endswith("weight"))
        shape = fh["state"][weight].shape
        del fh["state"][weight]
        fh["state"].create_dataset(
            weight, shape, np.float32, external=[(str(secret / "secret.bin"), 0, 4 * math.prod(shape))]
        )
    assert "sha256 does not match" in error_of(modelfile.load_model, model)
    h5safe.seal(model)
    assert error_of(modelfile.load_model, model) == (
        f"{model}: /state/{weight}: its data are stored in another file, {str(secret / 'secret.bin')!r} (HDF5 "
        f"external storage); {SELF_CONTAINED}"
    )


# ---------------------------------------------------------------------------------------------- nothing opened

CHECK_ALL = """
import json, sys
import h5py
from emdenoise.io import h5safe
from emdenoise.errors import InputError
messages = []
for path in sys.argv[2:]:
    try:
        h5safe.open_foreign(path).close()
        messages.append(None)
    except InputError as exc:
        messages.append(exc.message)
with h5py.File(sys.argv[1], "r") as fh:   # plain h5py, after emdenoise opened HDF5 files: no plugin is looked for
    try:
        fh["images"][0]
    except OSError as exc:
        messages.append(str(exc))
print(json.dumps(messages))
"""


def test_no_other_file_and_no_plugin_is_opened_while_checking_or_reading(tmp_path):
    """The targets are FIFOs, and so is the only "plugin" on HDF5_PLUGIN_PATH: opening any of them blocks until
    a writer comes, which never does. So the probe's child, the check after opening and a later read of a
    plugin-filtered dataset (which would dlopen every library on the path) all finish only if none is opened;
    the whole script runs in a child with a time limit, a hang failing the test."""
    secret, plugins = tmp_path / "secret", tmp_path / "plugins"
    secret.mkdir()
    plugins.mkdir()
    for fifo in (secret / "secret.bin", secret / "secret.h5", plugins / "libh5bshuf.so"):
        os.mkfifo(fifo)
    expected, paths = [], []
    for i, kind in enumerate(KINDS):
        paths.append(tmp_path / f"{i}.h5")
        expected.append(write_reaching_out(paths[-1], kind, secret, (3, 32, 32)))
    env = {**os.environ, "HDF5_PLUGIN_PATH": str(plugins)}
    done = subprocess.run(
        [sys.executable, "-c", CHECK_ALL, str(paths[-1]), *map(str, paths)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    *refused, read = json.loads(done.stdout)
    assert refused == expected
    assert "can't find plugin" in read


def test_one_line_names_the_first_object_and_counts_the_others(tmp_path):
    write_secret(tmp_path / "secret", (3, 32, 32))
    path = tmp_path / "f.h5"
    write_reaching_out(path, "virtual dataset", tmp_path / "secret", (3, 32, 32))
    with h5py.File(path, "a") as fh:
        fh["a/link"] = h5py.ExternalLink("elsewhere.h5", "/x")  # dangling: refused all the same
        fh["b/c"] = h5py.ExternalLink("elsewhere.h5", "/y")
        fh["ok"] = h5py.SoftLink("/images")  # a soft link within the file is fine
    assert error_of(h5safe.probe, path) == (
        f"{path}: /a/link: an external link to 'elsewhere.h5' (object '/x'); "
        f"{SELF_CONTAINED} (2 more objects in the file likewise)"
    )
