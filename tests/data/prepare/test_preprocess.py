"""The preprocess task on small real HDF5 (and TIFF) files: layout, split, dataset card, and bad input."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
import tifffile

from emdenoise import cli
from emdenoise.data.prepare.run import split_rows
from emdenoise.data.splits import load_card, load_split
from emdenoise.layout import DATASET_CARD_KEYS, MANIFEST, RAW_FILES

N_TRAIN, N_TEST, SIZE = 20, 6, 32
REPO = Path(__file__).resolve().parents[3]


# ---------------------------------------------------------------------------------------------------------------
# Building raw datasets


def write_images(path: Path, images: np.ndarray, dose: np.ndarray | None = None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with h5py.File(path, "w") as fh:
        ds = fh.create_dataset("images", data=images)
        if dose is not None:
            ds.attrs["dose"] = dose


def make_raw(
    root: Path,
    *,
    n_train: int = N_TRAIN,
    n_test: int = N_TEST,
    size: int = SIZE,
    dose: bool = True,
    channels_last: bool = True,
    seed: int = 0,
) -> dict[str, np.ndarray]:
    """A raw em_graphene_sim layout with random pairs; returns the arrays written, as (N, H, W) float32."""
    rng = np.random.default_rng(seed)
    arrays = {}
    for split, n in (("train", n_train), ("test", n_test)):
        clean = rng.uniform(0.2, 1.5, size=(n, size, size)).astype(np.float32)
        noisy = (clean * rng.uniform(0.5, 1.0, size=(n, 1, 1)) + rng.normal(0, 0.3, clean.shape)).astype(np.float32)
        doses = rng.uniform(5, 100, size=n).astype(np.float32)
        for kind, images in (("noisy", noisy), ("clean", clean)):
            write_images(
                root / split / RAW_FILES[kind],
                images[..., None] if channels_last else images,
                doses if dose and kind == "noisy" else None,
            )
        arrays.update({f"{split}_noisy": noisy, f"{split}_clean": clean, f"{split}_dose": doses})
    return arrays


def write_params(path: Path, val_fraction: float = 0.1, seed: int = 0) -> Path:
    path.write_text(f"preprocess:\n  val_fraction: {val_fraction}\n  seed: {seed}\n", encoding="utf-8")
    return path


@pytest.fixture
def env(tmp_path, monkeypatch):
    """Paths for one run: raw/, data/, logs/, params.yaml (written with the defaults of the test)."""
    monkeypatch.setenv("EMDENOISE_PROGRESS", "0")
    paths = {
        "raw": tmp_path / "raw",
        "data": tmp_path / "data",
        "logs": tmp_path / "logs",
        "params": write_params(tmp_path / "params.yaml"),
    }
    return paths


def run_preprocess(env, data: Path | None = None, params: Path | None = None) -> int:
    return cli.main(
        [
            "preprocess",
            f"--raw_data_dir={env['raw']}",
            f"--data_dir={data or env['data']}",
            f"--parameters_file={params or env['params']}",
            f"--log_dir={env['logs']}",
        ]
    )


def error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if "error:" in line]


# ---------------------------------------------------------------------------------------------------------------
# A good run


def test_layout_split_and_card(env, capsys):
    raw = make_raw(env["raw"])
    (env["raw"] / MANIFEST).write_text(json.dumps({"source": "unit-test", "files": []}), encoding="utf-8")
    assert run_preprocess(env) == 0

    data = env["data"]
    assert sorted(p.name for p in data.iterdir()) == ["dataset_card.json", "test.h5", "train.h5", "val.h5"]
    rows = {}
    for split, raw_split in (("train", "train"), ("val", "train"), ("test", "test")):
        with h5py.File(data / f"{split}.h5", "r") as fh:
            assert sorted(fh.keys()) == ["clean", "dose", "index", "noisy"]
            for key in ("noisy", "clean"):
                ds = fh[key]
                assert ds.dtype == np.float32 and ds.ndim == 3 and ds.shape[1:] == (SIZE, SIZE)
                assert ds.chunks == (1, SIZE, SIZE) and ds.compression is None
            index = fh["index"][:]
            assert fh["index"].dtype == np.int64
            rows[split] = index
            # every pair is the raw pair at its index, and the dose came along
            np.testing.assert_array_equal(fh["noisy"][:], raw[f"{raw_split}_noisy"][index])
            np.testing.assert_array_equal(fh["clean"][:], raw[f"{raw_split}_clean"][index])
            np.testing.assert_array_equal(fh["dose"][:], raw[f"{raw_split}_dose"][index])

    # train and val partition the raw training rows; test is the raw test set in order
    assert len(rows["val"]) == 2 and len(rows["train"]) == N_TRAIN - 2
    assert sorted(np.concatenate([rows["train"], rows["val"]]).tolist()) == list(range(N_TRAIN))
    assert rows["test"].tolist() == list(range(N_TEST))
    assert rows["train"].tolist() != sorted(rows["train"].tolist())  # stored in shuffled order

    card = load_card(data)
    assert set(DATASET_CARD_KEYS) <= set(card)
    assert card["image_shape"] == [SIZE, SIZE]
    assert {k: v["n"] for k, v in card["splits"].items()} == {"train": N_TRAIN - 2, "val": 2, "test": N_TEST}
    assert card["splits"]["val"]["file"] == "val.h5"
    for split, raw_split in (("train", "train"), ("val", "train"), ("test", "test")):
        for key in ("noisy", "clean"):
            expected = raw[f"{raw_split}_{key}"][rows[split]]
            assert card["value_range"][split][key] == pytest.approx([expected.min(), expected.max()])
    for key in ("noisy", "clean"):
        train = raw[f"train_{key}"][rows["train"]].astype(np.float64)
        assert card["normalisation"][key]["mean"] == pytest.approx(train.mean(), rel=1e-9)
        assert card["normalisation"][key]["std"] == pytest.approx(train.std(), rel=1e-9)
    assert card["data_range"] == pytest.approx(float(raw["test_clean"].max() - raw["test_clean"].min()))
    assert "clean test" in card["data_range_definition"]
    assert card["has_dose"] is True and card["source"] == "unit-test"
    assert card["preprocess"] == {"val_fraction": 0.1, "seed": 0, "raw_data_dir": str(env["raw"].resolve())}

    # emdenoise.data.splits reads it all back
    val = load_split(data, "val")
    np.testing.assert_array_equal(val.clean, raw["train_clean"][rows["val"]])
    np.testing.assert_array_equal(val.dose, raw["train_dose"][rows["val"]])
    assert len(load_split(data, "train", max_images=5)) == 5

    log_text = (env["logs"] / "preprocess.log").read_text(encoding="utf-8")
    assert "clean [min, max]" in log_text and "preprocess: done" in log_text


def test_three_dimensional_raw_without_dose(env):
    raw = make_raw(env["raw"], dose=False, channels_last=False)
    assert run_preprocess(env) == 0
    card = load_card(env["data"])
    assert card["has_dose"] is False and card["source"] is None
    with h5py.File(env["data"] / "test.h5", "r") as fh:
        assert "dose" not in fh
    test = load_split(env["data"], "test")
    assert test.dose is None
    np.testing.assert_array_equal(test.noisy, raw["test_noisy"])


def test_split_is_deterministic_by_seed(env, tmp_path):
    make_raw(env["raw"])

    def train_rows(name: str, seed: int) -> list[int]:
        data = tmp_path / name
        assert run_preprocess(env, data=data, params=write_params(tmp_path / f"{name}.yaml", 0.25, seed)) == 0
        with h5py.File(data / "train.h5", "r") as fh, h5py.File(data / "val.h5", "r") as fv:
            assert len(fv["index"]) == 5
            return fh["index"][:].tolist() + fv["index"][:].tolist()

    first = train_rows("a", seed=3)
    assert train_rows("b", seed=3) == first
    assert train_rows("c", seed=4) != first


@pytest.mark.parametrize(
    "n, fraction, n_val", [(20, 0.1, 2), (20, 0.0, 1), (20, 0.9, 18), (2, 0.9, 1), (10, 0.25, 3), (1000, 0.1, 100)]
)
def test_split_sizes(n, fraction, n_val):
    train, val = split_rows(n, fraction, seed=0)
    assert len(val) == n_val and len(train) == n - n_val
    assert sorted(np.concatenate([train, val]).tolist()) == list(range(n))


def test_subprocess_run(env):
    make_raw(env["raw"], n_train=6, n_test=3)
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "emdenoise",
            "preprocess",
            f"--raw_data_dir={env['raw']}",
            f"--data_dir={env['data']}",
            f"--parameters_file={env['params']}",
            f"--log_dir={env['logs']}",
        ],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=120,
        env={**os.environ, "EMDENOISE_PROGRESS": "0"},
    )
    assert proc.returncode == 0, proc.stderr
    card = load_card(env["data"])
    assert {k: v["n"] for k, v in card["splits"].items()} == {"train": 5, "val": 1, "test": 3}
    assert (env["logs"] / "preprocess.log").is_file()


def test_failed_run_keeps_previous_outputs(env, capsys):
    make_raw(env["raw"])
    assert run_preprocess(env) == 0
    before = {p.name: p.read_bytes() for p in env["data"].iterdir()}
    with h5py.File(env["raw"] / "test" / RAW_FILES["clean"], "r+") as fh:
        fh["images"][3, 5, 5, 0] = np.inf
    assert run_preprocess(env) == 2
    assert "images[3]" in capsys.readouterr().err
    assert {p.name: p.read_bytes() for p in env["data"].iterdir()} == before  # no temp files left either


# ---------------------------------------------------------------------------------------------------------------
# Bad raw data: exit 2 and one line naming the file


def _remove(raw: Path, split: str, kind: str) -> None:
    (raw / split / RAW_FILES[kind]).unlink()


def _rewrite(raw: Path, split: str, kind: str, images: np.ndarray) -> None:
    write_images(raw / split / RAW_FILES[kind], images)


def _set_nan(raw: Path, split: str, kind: str, index: int) -> None:
    with h5py.File(raw / split / RAW_FILES[kind], "r+") as fh:
        fh["images"][index, 7, 9, 0] = np.nan


def _group(raw: Path, split: str, kind: str) -> None:
    path = raw / split / RAW_FILES[kind]
    path.unlink()
    with h5py.File(path, "w") as fh:
        fh.create_group("images").create_dataset("data", data=np.zeros((N_TRAIN, SIZE, SIZE), np.float32))


def _rename_dataset(raw: Path, split: str, kind: str) -> None:
    with h5py.File(raw / split / RAW_FILES[kind], "r+") as fh:
        fh.move("images", "data")


def _truncate(raw: Path, split: str, kind: str) -> None:
    path = raw / split / RAW_FILES[kind]
    size = path.stat().st_size
    with open(path, "r+b") as fh:
        fh.truncate(size // 2)


BAD_INPUTS = {
    "missing test split": (lambda r: _remove(r, "test", "clean"), "test", "clean", "file not found"),
    "mismatched counts": (
        lambda r: _rewrite(r, "train", "clean", np.ones((N_TRAIN - 1, SIZE, SIZE, 1), np.float32)),
        "train",
        "clean",
        f"expected {N_TRAIN} images",
    ),
    "three channels": (
        lambda r: _rewrite(r, "train", "noisy", np.ones((N_TRAIN, SIZE, SIZE, 3), np.float32)),
        "train",
        "noisy",
        f"got shape ({N_TRAIN}, {SIZE}, {SIZE}, 3)",
    ),
    "nan in train": (lambda r: _set_nan(r, "train", "noisy", 13), "train", "noisy", "images[13]"),
    "nan in test": (lambda r: _set_nan(r, "test", "clean", 4), "test", "clean", "images[4]"),
    "group not dataset": (lambda r: _group(r, "train", "noisy"), "train", "noisy", "expected a dataset, got a group"),
    "no images dataset": (lambda r: _rename_dataset(r, "test", "noisy"), "test", "noisy", "named 'images'"),
    "empty dataset": (
        lambda r: _rewrite(r, "test", "noisy", np.zeros((0, SIZE, SIZE, 1), np.float32)),
        "test",
        "noisy",
        "at least one image",
    ),
    "truncated file": (lambda r: _truncate(r, "train", "clean"), "train", "clean", "readable HDF5"),
    "constant clean test": (
        lambda r: _rewrite(r, "test", "clean", np.full((N_TEST, SIZE, SIZE, 1), 0.7, np.float32)),
        "test",
        "clean",
        "data range",
    ),
    "test size differs": (
        lambda r: [_rewrite(r, "test", k, np.ones((N_TEST, 16, 16, 1), np.float32)) for k in ("noisy", "clean")],
        "test",
        "noisy",
        "like the train split",
    ),
    "one training pair": (
        lambda r: [
            _rewrite(r, "train", k, np.random.rand(1, SIZE, SIZE, 1).astype(np.float32)) for k in ("noisy", "clean")
        ],
        "train",
        "noisy",
        "at least 2 training pairs",
    ),
    "text dataset": (
        lambda r: _rewrite(r, "train", "clean", np.array([b"abc"] * N_TRAIN)),
        "train",
        "clean",
        "real-valued",
    ),
}


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_raw_data(env, capsys, case):
    make_raw(env["raw"])
    damage, split, kind, expected = BAD_INPUTS[case]
    damage(env["raw"])
    assert run_preprocess(env) == 2
    errors = error_lines(capsys.readouterr().err)
    assert len(errors) == 1, errors
    assert str(env["raw"] / split / RAW_FILES[kind]) in errors[0]
    assert expected in errors[0]
    assert "Traceback" not in errors[0]
    assert not env["data"].exists() or list(env["data"].iterdir()) == []


def test_missing_raw_folder(env, capsys):
    assert run_preprocess(env) == 2
    (line,) = error_lines(capsys.readouterr().err)
    assert str(env["raw"]) in line and "download" in line


def test_output_folder_is_a_file(env, capsys):
    make_raw(env["raw"], n_train=4, n_test=2)
    env["data"].write_text("not a folder", encoding="utf-8")
    assert run_preprocess(env) == 2
    (line,) = error_lines(capsys.readouterr().err)
    assert str(env["data"]) in line and "output folder" in line


# ---------------------------------------------------------------------------------------------------------------
# The optional inference TIFF pairs


def make_inference(
    raw: Path, names: list[str], truth_names: list[str] | None = None, size: int = SIZE, seed: int = 1
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    rng = np.random.default_rng(seed)
    pairs = {}
    for folder in ("raw", "truth"):
        (raw / "inference" / folder).mkdir(parents=True, exist_ok=True)
    for name in names:
        noisy = rng.normal(1, 0.2, (size, size)).astype(np.float32)
        clean = rng.normal(1, 0.1, (size, size)).astype(np.float32)
        tifffile.imwrite(raw / "inference" / "raw" / name, noisy)
        pairs[name] = (noisy, clean)
    for name in truth_names if truth_names is not None else names:
        tifffile.imwrite(
            raw / "inference" / "truth" / name, pairs.get(name, (None, np.ones((size, size), np.float32)))[1]
        )
    return pairs


def test_inference_pairs(env):
    make_raw(env["raw"])
    pairs = make_inference(env["raw"], ["c.tif", "a.tif", "b.tiff"])
    assert run_preprocess(env) == 0
    inference = load_split(env["data"], "inference")
    names = ["a.tif", "b.tiff", "c.tif"]
    np.testing.assert_array_equal(inference.noisy, np.stack([pairs[n][0] for n in names]))
    np.testing.assert_array_equal(inference.clean, np.stack([pairs[n][1] for n in names]))
    with h5py.File(env["data"] / "inference.h5", "r") as fh:
        assert [n.decode() for n in fh["name"][:]] == names
        assert fh["noisy"].chunks == (1, SIZE, SIZE)
    card = load_card(env["data"])
    assert card["splits"]["inference"] == {"file": "inference.h5", "n": 3}
    clean = np.stack([p[1] for p in pairs.values()])
    assert card["value_range"]["inference"]["clean"] == pytest.approx([clean.min(), clean.max()])

    # a rerun on raw data without the inference folder leaves no stale inference split behind
    for folder in ("raw", "truth"):
        for path in (env["raw"] / "inference" / folder).iterdir():
            path.unlink()
        (env["raw"] / "inference" / folder).rmdir()
    assert run_preprocess(env) == 0
    assert not (env["data"] / "inference.h5").exists()
    assert "inference" not in load_card(env["data"])["splits"]


@pytest.mark.parametrize("case", ["mismatched names", "missing truth folder", "wrong size"])
def test_bad_inference_pairs(env, capsys, case):
    make_raw(env["raw"])
    if case == "mismatched names":
        make_inference(env["raw"], ["a.tif", "b.tif"], truth_names=["a.tif", "x.tif"])
        where, expected = env["raw"] / "inference" / "truth", "no clean image for b.tif"
    elif case == "missing truth folder":
        make_inference(env["raw"], ["a.tif"], truth_names=[])
        (env["raw"] / "inference" / "truth").rmdir()
        where, expected = env["raw"] / "inference" / "truth", "folder not found"
    else:
        make_inference(env["raw"], ["a.tif"], size=SIZE + 4)
        where, expected = env["raw"] / "inference" / "raw" / "a.tif", f"got {SIZE + 4}x{SIZE + 4}"
    assert run_preprocess(env) == 2
    (line,) = error_lines(capsys.readouterr().err)
    assert str(where) in line and expected in line
    assert not (env["data"] / "dataset_card.json").exists()


# ---------------------------------------------------------------------------------------------------------------
# The embedded synthetic generator goes through the same code


def test_synthetic_dataset(env):
    writer = pytest.importorskip("emdenoise.data.simulate.writer")
    settings = writer.GeneratorSettings.of(seed=0, train_images=8, test_images=4, image_size=64)
    writer.write_dataset(env["raw"], settings)
    assert run_preprocess(env) == 0
    card = load_card(env["data"])
    assert card["image_shape"] == [64, 64]
    assert {k: v["n"] for k, v in card["splits"].items()} == {"train": 7, "val": 1, "test": 4}
    assert card["data_range"] > 0 and card["has_dose"] is True
    train = load_split(env["data"], "train")
    assert train.noisy.shape == (7, 64, 64) and np.isfinite(train.noisy).all()
    assert card["normalisation"]["clean"]["mean"] == pytest.approx(
        float(train.clean.astype(np.float64).mean()), rel=1e-6
    )


def test_synthetic_atoms_pixel_size_and_generalisation_split_are_carried(env):
    writer = pytest.importorskip("emdenoise.data.simulate.writer")
    settings = writer.GeneratorSettings.of(seed=2, train_images=6, test_images=2, image_size=48, generalisation_count=3)
    writer.write_dataset(env["raw"], settings, workers=1)
    assert run_preprocess(env) == 0
    card = load_card(env["data"])
    assert card["has_atoms"] is True
    assert card["splits"]["generalisation"] == {"file": "generalisation.h5", "n": 3}
    raw = {}
    for split in ("train", "generalisation"):
        with (
            h5py.File(env["raw"] / split / RAW_FILES["noisy"], "r") as fn,
            h5py.File(env["raw"] / split / RAW_FILES["clean"], "r") as fc,
        ):
            raw[split] = {
                "pixel_size": fn["images"].attrs["pixel_size"],
                **{name: fc[name][()] for name in ("atom_offsets", "atom_yx", "atom_vacant", "atom_z")},
            }
    train_pixels = raw["train"]["pixel_size"][load_split_index(env["data"], "train")]
    assert card["pixel_size_angstrom"] == pytest.approx(float(np.median(train_pixels)), rel=1e-6)
    assert card["pixel_size_range_angstrom"] == pytest.approx([float(train_pixels.min()), float(train_pixels.max())])
    for name, split in (("train", "train"), ("val", "train"), ("generalisation", "generalisation")):
        with h5py.File(env["data"] / f"{name}.h5", "r") as fh:
            index = fh["index"][()]
            np.testing.assert_array_equal(fh["pixel_size"][()], raw[split]["pixel_size"][index])
            offsets = fh["atom_offsets"][()]
            assert offsets[0] == 0 and len(offsets) == len(index) + 1
            r = raw[split]
            for j, i in enumerate(index):  # image j of the split is raw image i: the same columns
                mine, theirs = slice(offsets[j], offsets[j + 1]), slice(r["atom_offsets"][i], r["atom_offsets"][i + 1])
                for key in ("atom_yx", "atom_vacant", "atom_z"):
                    np.testing.assert_array_equal(fh[key][mine], r[key][theirs])
    # Without the raw generalisation folder, the processed one from before is stale and goes.
    for name in RAW_FILES.values():
        (env["raw"] / "generalisation" / name).unlink()
    assert run_preprocess(env) == 0
    assert "generalisation" not in load_card(env["data"])["splits"]
    assert not (env["data"] / "generalisation.h5").exists()


def load_split_index(data_dir: Path, split: str) -> np.ndarray:
    with h5py.File(data_dir / f"{split}.h5", "r") as fh:
        return fh["index"][()]


def test_splits_without_atoms_or_pixel_size_say_so(env):
    make_raw(env["raw"], n_train=6, n_test=3)
    assert run_preprocess(env) == 0
    card = load_card(env["data"])
    assert card["has_atoms"] is False and card["pixel_size_angstrom"] is None
    with h5py.File(env["data"] / "train.h5", "r") as fh:
        assert "pixel_size" not in fh and "atom_offsets" not in fh


def test_the_old_card_goes_first_and_the_new_card_is_moved_into_place_last(env, capsys, monkeypatch):
    make_raw(env["raw"], n_train=6, n_test=3)
    assert run_preprocess(env) == 0
    steps: list[str] = []
    real_replace, real_unlink = os.replace, Path.unlink

    def replace(src, dest, **kw):
        if Path(src).parent.name == ".staging" and Path(dest).parent.name != ".staging":
            steps.append(f"put {Path(dest).name}")
        return real_replace(src, dest, **kw)

    def unlink(self, missing_ok=False):
        if self.parent == env["data"]:
            steps.append(f"remove {self.name}")
        return real_unlink(self, missing_ok=missing_ok)

    monkeypatch.setattr(os, "replace", replace)
    monkeypatch.setattr(Path, "unlink", unlink)
    assert run_preprocess(env, params=write_params(env["params"], seed=1)) == 0
    card = [i for i, step in enumerate(steps) if "dataset_card.json" in step]
    assert steps[card[0]] == "remove dataset_card.json" and steps[-1] == "put dataset_card.json"
    assert sorted(steps[card[0] + 1 : -1]) == ["put test.h5", "put train.h5", "put val.h5"]
    assert not (env["data"] / ".staging").exists()
