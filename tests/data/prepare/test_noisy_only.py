"""Noisy-only data: the micrographs: source, drift alignment by phase correlation, tiles and stacks, the split
by stack, and the dataset card of contract 3."""

from __future__ import annotations

import json
import zipfile

import h5py
import numpy as np
import pytest
from noisy_images import smooth_images, write_micrographs
from support import params_file, run_here

from emdenoise.data.acquire import sources
from emdenoise.data.prepare import noisy_only
from emdenoise.errors import InputError


def test_phase_correlation_finds_the_drift():
    rng = np.random.default_rng(0)
    big = rng.poisson(smooth_images(rng, 1, 80)[0] * 50).astype(np.float32)
    ref = big[4:68, 4:68]
    moving = big[6:70, 1:65]  # moving[y, x] = ref[y + 2, x - 3]: moving[y - 2, x + 3] = ref[y, x]
    (a, b), drift = noisy_only.aligned([ref, moving], "here")
    assert drift.how == "measured" and tuple(np.rint(drift.shifts[1]).astype(int)) == (-2, 3)
    np.testing.assert_array_equal(a, b)  # the shared area, the drift undone
    assert a.shape == (62, 61)
    assert drift.record() == {"align": "measured", "drift_px": np.round(drift.shifts, 2).tolist()}
    (a, b), drift = noisy_only.aligned([ref, moving], "here", "off")  # preprocess.align: off
    assert a is ref and b is moving and drift.record() == {"align": "off", "drift_px": None}


def test_a_drift_beyond_a_quarter_of_the_frame_is_refused_naming_it():
    rng = np.random.default_rng(1)
    big = rng.poisson(smooth_images(rng, 1, 120)[0] * 50).astype(np.float32)
    ref, small, large = big[30:94, 30:94], big[29:93, 31:95], big[50:114, 30:94]  # drifts (1, -1), (-20, 0)
    with pytest.raises(InputError) as err:
        noisy_only.aligned([ref, small, large], "stack.tif")
    assert "stack.tif: frames: expected a drift within a quarter of the frame" in str(err.value)
    assert str(err.value).endswith("found (-20, 0)")  # the offending frame's drift, not the largest tuple


def test_split_keeps_every_stack_together():
    stack = np.array([0, 1, 2, 3, 0, 1, 2, 3, 4])
    train, val = noisy_only.split_stacks(stack, 0.4, seed=1)
    assert sorted(np.concatenate([train, val]).tolist()) == list(range(9))
    assert not set(stack[train]) & set(stack[val]) and len(val) > 0
    with pytest.raises(InputError, match="at least 2 tile positions"):
        noisy_only.split_stacks(np.zeros(3, np.int64), 0.2, 0)


def test_micrographs_source_is_parsed(tmp_path):
    folder = write_micrographs(tmp_path / "in")
    src = sources.parse_source(f"micrographs:{folder}", "")
    assert src.kind == "folder" and src.micrographs and src.location()["micrographs"] is True
    with pytest.raises(InputError, match="download.source: expected micrographs:PATH"):
        sources.parse_source(f"micrographs:{tmp_path / 'missing'}", "")


def _download_preprocess(capsys, tmp, source: str, **preprocess):
    tmp.mkdir(parents=True, exist_ok=True)
    p = params_file(tmp / "p.yaml", download={"source": source}, preprocess={"tile_size": 32, **preprocess})
    code, err = run_here(capsys, "download", {"raw_data_dir": tmp / "raw", "parameters_file": p, "log_dir": tmp / "l"})
    assert code == 0, err
    return run_here(
        capsys,
        "preprocess",
        {"raw_data_dir": tmp / "raw", "data_dir": tmp / "data", "parameters_file": p, "log_dir": tmp / "l"},
    )


@pytest.mark.parametrize("packed", [False, True])
def test_a_folder_or_zip_of_micrographs_becomes_noisy_only_splits(tmp_path, capsys, packed):
    folder = write_micrographs(tmp_path / "in", size=96)
    source = folder
    if packed:
        source = tmp_path / "mine.zip"
        with zipfile.ZipFile(source, "w") as zf:
            for path in folder.iterdir():
                zf.write(path, f"deep/{path.name}")
    code, err = _download_preprocess(capsys, tmp_path, f"micrographs:{source}")
    assert code == 0, err
    card = json.loads((tmp_path / "data" / "dataset_card.json").read_text())
    assert card["has_clean"] is False and card["count_scale"] == 1.0  # whole-number counts
    assert card["count_scale_source"] and card["count_scale_estimate"] > 0 and card["pixel_size_angstrom"] is None
    assert card["normalisation"]["clean"] == card["normalisation"]["noisy"]
    assert card["detector_gain"] is None and card["detector_source"].startswith("whole-number counts")
    stack_entry = next(e for e in card["micrographs"] if e["file"].endswith("stack.tif"))
    assert stack_entry["frames"] == 3 and stack_entry["aligned_shape"] == [94, 92]  # 3 frames drifting (1, 2)
    assert stack_entry["align"] == "measured" and np.allclose(
        stack_entry["drift_px"], [[0, 0], [-1, -2], [-2, -4]], atol=0.5
    )
    total = 0
    for split in ("train", "val"):
        with h5py.File(tmp_path / "data" / f"{split}.h5", "r") as fh:
            assert "clean" not in fh and fh["noisy"].shape[1:] == (32, 32)
            total += len(fh["noisy"])
            frames = fh["frame"][:]
    assert total == 9 + 3 * 4  # single.npy: 3x3 tiles; the stack: 2x2 tiles of each aligned frame
    assert card["splits"]["train"]["n"] + card["splits"]["val"]["n"] == total
    assert frames.min() >= 0


def test_detector_values_get_their_offset_and_gain_in_the_card(tmp_path, capsys):
    import tifffile
    from noisy_images import atom_image, beam, lattice_sites

    rng = np.random.default_rng(3)
    scene = (2.0 - atom_image(256, lattice_sites(256, 12.0), contrast=0.5, width=2.5)) * (0.3 + beam(256))
    frames = np.round(3.3e4 + 7.5 * rng.poisson(40.0 * scene, (2, 256, 256)) + rng.normal(0, 5, (2, 256, 256)))
    (tmp_path / "in").mkdir()
    tifffile.imwrite(tmp_path / "in" / "haadf.tif", frames.astype(np.uint16))
    code, err = _download_preprocess(capsys, tmp_path, f"micrographs:{tmp_path / 'in'}", align="off")
    assert code == 0, err
    card = json.loads((tmp_path / "data" / "dataset_card.json").read_text())
    assert card["count_scale"] is None  # whole numbers, but no counts: the detector model says how to get them
    assert abs(card["detector_gain"] - 7.5) < 3.5 * card["detector_gain_error"] and card["detector_gain_error"] < 1.0
    assert abs(card["detector_offset"] - (3.3e4 - 25 / 7.5)) < 3.5 * card["detector_offset_error"]
    assert card["micrographs"][0]["detector"]["gain"] == card["detector_gain"]  # one file: its own model
    assert "detector model (offset" in err


def test_bad_micrographs_are_one_line_and_write_nothing(tmp_path, capsys):
    small = write_micrographs(tmp_path / "small", size=24)
    code, err = _download_preprocess(capsys, tmp_path / "a", f"micrographs:{small}")
    assert code == 2 and "expected frames of at least 32x32 pixels (the tile size), got 24x24" in err
    assert "Traceback" not in err and not (tmp_path / "a" / "data" / "dataset_card.json").exists()

    bad = tmp_path / "nan"
    bad.mkdir()
    frame = np.ones((40, 40), np.float32)
    frame[3, 3] = np.nan
    np.save(bad / "x.npy", frame)
    code, err = _download_preprocess(capsys, tmp_path / "b", f"micrographs:{bad}")
    assert code == 2 and "x.npy" in err and "expected finite pixel values" in err
    assert not (tmp_path / "b" / "data" / "dataset_card.json").exists()

    empty = tmp_path / "none"
    empty.mkdir()
    (empty / "notes.txt").write_text("no image here")
    p = params_file(tmp_path / "p.yaml", download={"source": f"micrographs:{empty}"})
    paths = {"raw_data_dir": tmp_path / "raw", "parameters_file": p, "log_dir": tmp_path}
    code, err = run_here(capsys, "download", paths)
    assert code == 2 and "download.source: expected micrograph files" in err
    assert not (tmp_path / "raw" / "MANIFEST.json").exists()


def test_the_pixel_size_of_an_imagej_tiff_reaches_the_card_and_the_model_meta(tmp_path, capsys):
    import tifffile

    from emdenoise.training.loop import training_pixel_size

    folder = tmp_path / "in"
    folder.mkdir()
    rng = np.random.default_rng(0)
    frame = rng.poisson(smooth_images(rng, 1, 96)[0] * 30).astype(np.uint16)
    # ImageJ calibration: 0.25 A/px = 0.025 nm/px, i.e. 40 pixels per nm
    tifffile.imwrite(folder / "cal.tif", frame, imagej=True, resolution=(40.0, 40.0), metadata={"unit": "nm"})
    code, err = _download_preprocess(capsys, tmp_path, f"micrographs:{folder}")
    assert code == 0, err
    card = json.loads((tmp_path / "data" / "dataset_card.json").read_text())
    assert card["pixel_size_angstrom"] == pytest.approx(0.25, rel=1e-5)
    assert training_pixel_size(card) == pytest.approx(0.25, rel=1e-5)  # the model file's meta pixel_size
    with h5py.File(tmp_path / "data" / "train.h5", "r") as fh:
        np.testing.assert_allclose(fh["pixel_size"][:], 0.25, rtol=1e-5)


def test_a_plain_folder_of_micrographs_as_the_source_hints_at_micrographs(tmp_path, capsys):
    folder = write_micrographs(tmp_path / "in")
    p = params_file(tmp_path / "p.yaml", download={"source": str(folder)})
    code, err = run_here(
        capsys, "download", {"raw_data_dir": tmp_path / "raw", "parameters_file": p, "log_dir": tmp_path}
    )
    assert code == 2 and "em_graphene_sim layout" in err
    assert 'for your own micrographs (no clean images) give download.source: "micrographs:PATH"' in err
