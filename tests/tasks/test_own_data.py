"""Training on one's own micrographs, end to end through the tasks: a micrographs: folder downloaded,
preprocessed into noisy-only splits, trained self-supervised, and the same frames denoised; and the bad
inputs of that path (one line, nothing written)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from noisy_images import smooth_images, write_micrographs
from support import one_error, params_file, read_frames, run_here

from emdenoise.io import modelfile

TRAIN = {"epochs": 2, "batch_size": 4, "device": "cpu", "precision": "fp32", "patch_size": 16, "lr": 3e-3}


def _prepare(capsys, tmp: Path, folder: Path) -> dict[str, Path]:
    p = params_file(tmp / "p.yaml", download={"source": f"micrographs:{folder}"}, preprocess={"tile_size": 32})
    paths = {"raw_data_dir": tmp / "raw", "parameters_file": p, "log_dir": tmp / "logs"}
    assert run_here(capsys, "download", paths)[0] == 0
    assert run_here(capsys, "preprocess", {**paths, "data_dir": tmp / "data"})[0] == 0
    return {"data_dir": tmp / "data", "log_dir": tmp / "logs"}


def _train(capsys, tmp: Path, paths: dict[str, Path], mode: str, name: str, **train) -> tuple[int, str]:
    p = params_file(tmp / f"{name}.yaml", train={**TRAIN, "supervision": mode, **train})
    return run_here(
        capsys,
        "train",
        {**paths, "parameters_file": p, "model_dir": tmp / name / "models", "output_dir": tmp / name / "out"},
    )


@pytest.fixture(scope="module")
def own(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("own")
    return tmp, write_micrographs(tmp / "in", size=96)


@pytest.mark.parametrize("mode", ["noise2void", "poisson_split", "frame_pairs"])
def test_own_micrographs_train_self_supervised_and_denoise(own, capsys, mode):
    tmp, folder = own
    work = tmp / mode
    paths = _prepare(capsys, work, folder)
    code, err = _train(capsys, work, paths, mode, "run")
    assert code == 0, err
    assert "val PSNR" not in err and f"val loss ({mode})" in err  # no clean images: no PSNR to log, a loss
    metrics = json.loads((work / "run" / "out" / "train_metrics.json").read_text())
    assert all(r["val_psnr"] is None for r in metrics["epochs"])  # no clean images: the val loss decides
    model_file = work / "run" / "models" / "sciml_ae" / "em_denoise_model.h5"
    _, meta = modelfile.load_model(model_file)
    assert meta["supervision"]["mode"] == mode
    p = params_file(work / "d.yaml", denoise={"device": "cpu", "precision": "fp32"})
    code, err = run_here(
        capsys,
        "denoise",
        {
            "input_dir": folder,
            "model_dir": work / "run" / "models",
            "output_dir": work / "denoised",
            "parameters_file": p,
            "log_dir": work / "logs",
        },
    )
    assert code == 0, err
    out = read_frames(work / "denoised" / "stack.tif")
    assert out.shape == (3, 96, 96) and np.isfinite(out).all()
    assert float(out.std()) < float(read_frames(folder / "stack.tif").astype(np.float32).std())  # smoothed


def test_frame_pairs_need_a_stack_and_poisson_split_needs_counts(tmp_path, capsys):
    rng = np.random.default_rng(3)
    singles = tmp_path / "singles"
    singles.mkdir()
    for i in range(2):  # float frames, not whole counts, no stack
        np.save(singles / f"f{i}.npy", (rng.poisson(smooth_images(rng, 1, 64)[0] * 20) / 20).astype(np.float32))
    paths = _prepare(capsys, tmp_path, singles)
    code, err = _train(capsys, tmp_path, paths, "frame_pairs", "fp")
    one_error(code, err, 2, "train.h5", "stacks of at least 2 consecutive frames")
    code, err = _train(capsys, tmp_path, paths, "poisson_split", "ps")
    line = one_error(code, err, 2, "train.h5", "noisy", "whole-number counts", "train.counts_per_unit")
    assert "count_scale_estimate" in line
    for name in ("fp", "ps"):
        assert not (tmp_path / name / "models" / "sciml_ae" / "em_denoise_model.h5").exists()
    code, err = _train(capsys, tmp_path, paths, "poisson_split", "ps2", counts_per_unit=20.0, epochs=1)
    assert code == 0, err  # with the count scale given, it trains
    _, meta = modelfile.load_model(tmp_path / "ps2" / "models" / "sciml_ae" / "em_denoise_model.h5")
    assert meta["supervision"]["count_scale_source"] == "train.counts_per_unit"
    code, err = _train(capsys, tmp_path, paths, "clean", "cl")
    one_error(code, err, 2, "train.h5", "clean", "noisy-only")


def test_the_own_data_parameters_train_ffdnet_on_a_low_dose_movie(tmp_path, capsys):
    """run/own-data.sh's settings (workspace/parameters/own-data.parameters.yaml, made tiny with --set) on a
    drifting, calibrated low-dose movie: aligned, ffdnet trained self-supervised, the pixel size carried."""
    import tifffile

    params = Path(__file__).resolve().parents[2] / "workspace" / "parameters" / "own-data.parameters.yaml"
    rng = np.random.default_rng(5)
    field = smooth_images(rng, 1, 104)[0]
    folder = tmp_path / "in"
    folder.mkdir()
    movie = np.stack([rng.poisson(field[k : k + 96, 2 * k : 2 * k + 96] * 100) for k in range(4)]).astype(np.uint16)
    # an ImageJ hyperstack calibrated at 40 pixels per nm (0.25 A/px): the pixel size reaches the model file
    tifffile.imwrite(folder / "movie.tif", movie, imagej=True, resolution=(40.0, 40.0), metadata={"unit": "nm"})
    sets = (f"download.source=micrographs:{folder}", "preprocess.tile_size=32", "train.epochs=1")
    sets += ("train.patch_size=16", "train.max_train_images=8", "train.device=cpu", "train.precision=fp32")
    paths = {"parameters_file": params, "log_dir": tmp_path / "logs", "raw_data_dir": tmp_path / "raw"}
    assert run_here(capsys, "download", paths, *sets)[0] == 0
    code, err = run_here(capsys, "preprocess", {**paths, "data_dir": tmp_path / "data"}, *sets)
    assert code == 0, err
    card = json.loads((tmp_path / "data" / "dataset_card.json").read_text())
    assert card["micrographs"][0]["align"] == "measured"
    assert np.allclose(card["micrographs"][0]["drift_px"], [[-k, -2 * k] for k in range(4)], atol=0.5)
    out = {"data_dir": tmp_path / "data", "model_dir": tmp_path / "models", "output_dir": tmp_path / "out"}
    code, err = run_here(capsys, "train", {"parameters_file": params, "log_dir": tmp_path / "logs", **out}, *sets)
    assert code == 0, err
    _, meta = modelfile.load_model(tmp_path / "models" / "ffdnet" / "em_denoise_model.h5")
    assert meta["model"] == "ffdnet" and meta["supervision"]["mode"] == "noise2void"
    assert card["pixel_size_angstrom"] == pytest.approx(0.25, rel=1e-5)
    assert meta["pixel_size"] == pytest.approx(0.25, rel=1e-5)


@pytest.mark.slow
def test_poisson_split_trains_on_detector_values_through_the_card_model(tmp_path, capsys):
    """Frames of detector values (offset 33,000, 7.5 units per electron): preprocess fits the detector, the
    card carries it, poisson_split splits the counts above the offset and records it in the model file."""
    import tifffile
    from noisy_images import atom_image, beam, lattice_sites

    rng = np.random.default_rng(8)
    scene = (2.0 - atom_image(128, lattice_sites(128, 10.0), contrast=0.5, width=2.0)) * (0.3 + beam(128))
    frames = np.round(3.3e4 + 7.5 * rng.poisson(40.0 * scene, (4, 128, 128))).astype(np.uint16)
    (tmp_path / "in").mkdir()
    tifffile.imwrite(tmp_path / "in" / "haadf.tif", frames, imagej=True, metadata={"axes": "TYX"})
    paths = _prepare(capsys, tmp_path, tmp_path / "in")
    card = json.loads((tmp_path / "data" / "dataset_card.json").read_text())
    assert card["count_scale"] is None and card["detector_gain"] > 0
    code, err = _train(capsys, tmp_path, paths, "poisson_split", "ps", epochs=1)
    assert code == 0, err
    _, meta = modelfile.load_model(tmp_path / "ps" / "models" / "sciml_ae" / "em_denoise_model.h5")
    entry = meta["supervision"]
    assert entry["count_scale_source"].startswith("dataset card detector model")
    assert entry["count_offset"] == pytest.approx(card["detector_offset"], rel=1e-6)
    assert entry["count_scale_median"] == pytest.approx(1.0 / card["detector_gain"], rel=1e-5)


OWN_DATA_PARAMETERS = Path(__file__).resolve().parents[2] / "workspace" / "parameters" / "own-data.parameters.yaml"


def test_the_own_data_parameters_fine_tune_the_zoo_model():
    from emdenoise import zoo
    from emdenoise.config import params

    train = params.load(OWN_DATA_PARAMETERS).train
    assert train.init_from == "zoo:hrtem-ffdnet" and train.model_names() == ["ffdnet"]
    _, meta = modelfile.load_model(zoo.get(train.init_from).model_file)
    assert meta["model"] == "ffdnet"  # the zoo model is of the architecture the file trains
    check = params.load(OWN_DATA_PARAMETERS.with_name("own-data-check.parameters.yaml")).train
    assert check.init_from == "none"  # the from-scratch control differs from the default in its start alone
    assert {**check.as_dict(), "init_from": None, "supervision": None} == {
        **train.as_dict(),
        "init_from": None,
        "supervision": None,
    }


@pytest.mark.slow
def test_own_data_fine_tunes_the_zoo_model_and_reports_against_the_filters(tmp_path, capsys):
    """The own-data path end to end on three small simulated SrTiO3 frames (counts, truth kept aside): the
    parameters file's fine-tune of zoo:hrtem-ffdnet (poisson_split, a few steps), then the report."""
    import tifffile

    from emdenoise.data.simulate import pairs
    from emdenoise.evaluation import own_data

    for folder in ("in", "truth"):
        (tmp_path / folder).mkdir()
    for k in range(3):
        noisy, clean, _ = pairs.make_pair(
            k, image_size=64, dose=30.0, beam_center_yx=(32, 32), beam_sigma=1e6, material="srtio3", scene="lattice"
        )
        tifffile.imwrite(tmp_path / "in" / f"f{k}.tif", np.rint(noisy * 30).astype(np.uint16))
        tifffile.imwrite(tmp_path / "truth" / f"f{k}.tif", clean * 30)
    sets = (f"download.source=micrographs:{tmp_path / 'in'}", "preprocess.tile_size=32", "train.epochs=2")
    sets += ("train.patch_size=16", "train.max_train_images=8", "train.device=cpu", "train.precision=fp32")
    sets += ("train.supervision=poisson_split",)
    paths = {"parameters_file": OWN_DATA_PARAMETERS, "log_dir": tmp_path / "logs", "raw_data_dir": tmp_path / "raw"}
    assert run_here(capsys, "download", paths, *sets)[0] == 0
    assert run_here(capsys, "preprocess", {**paths, "data_dir": tmp_path / "data"}, *sets)[0] == 0
    out = {"data_dir": tmp_path / "data", "model_dir": tmp_path / "models", "output_dir": tmp_path / "out"}
    code, err = run_here(capsys, "train", {"parameters_file": OWN_DATA_PARAMETERS, **out}, *sets)
    assert code == 0, err
    assert "starting from the weights of" in err and "hrtem-ffdnet" in err
    model = tmp_path / "models" / "ffdnet"
    args = [str(tmp_path / "in"), "--truth", str(tmp_path / "truth"), "--baselines", "gaussian"]
    assert own_data.main([*args, "--model", f"fine-tuned={model}", "--out", str(tmp_path / "c.json")]) == 0
    rows = {row["method"]: row for row in json.loads((tmp_path / "c.json").read_text())["rows"]}
    assert set(rows) == {"fine-tuned", "zoo:hrtem-ffdnet as is", "gaussian"}
    assert all(np.isfinite(row["psnr"]) and len(row["per_frame"]) == 3 for row in rows.values())
    assert "| fine-tuned |" in capsys.readouterr().out
