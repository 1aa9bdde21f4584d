"""The test task, the classical baselines and the report: metrics definitions, tuning, outputs, figures."""

import csv
import importlib.util
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
from scipy.stats import poisson

from support import write_data_dir, write_split

from emdenoise import cli
from emdenoise.engine import baselines
from emdenoise.data.splits import Split
from emdenoise.errors import EXIT_BAD_INPUT, InputError
from emdenoise.layout import CARD
from emdenoise.engine.metrics import psnr_per_image, ssim_per_image
from emdenoise.engine import evaluation

HAVE_BM3D = importlib.util.find_spec("bm3d") is not None


# --------------------------------------------------------------------------------------------------------------
# Small data made here: smooth images with Poisson noise, and the processed data_dir layout
# --------------------------------------------------------------------------------------------------------------

def smooth_images(rng, n: int, size: int) -> np.ndarray:
    """Smooth, non-negative images of order 1: a few random low-frequency cosines plus a bright disc."""
    y, x = np.mgrid[0:size, 0:size] / size
    images = []
    for _ in range(n):
        img = np.full((size, size), 0.6)
        for _ in range(3):
            fy, fx = rng.uniform(0.5, 3.0, 2)
            img += 0.12 * np.cos(2 * np.pi * (fy * y + fx * x) + rng.uniform(0, 2 * np.pi))
        cy, cx = rng.uniform(0.3, 0.7, 2)
        img += 0.3 * (((y - cy) ** 2 + (x - cx) ** 2) < 0.04)
        images.append(img)
    return np.clip(np.array(images), 0.05, None).astype(np.float32)


def poisson_noise(rng, clean: np.ndarray, dose) -> np.ndarray:
    dose = np.broadcast_to(np.asarray(dose, dtype=np.float64).reshape(-1, 1, 1), clean.shape)
    return (rng.poisson(clean * dose) / dose).astype(np.float32)


def make_data_dir(root: Path, n_test: int = 6, n_val: int = 4, size: int = 40, seed: int = 0) -> Path:
    """A processed data_dir (val.h5, test.h5, dataset_card.json) with doses spread over 5..200."""
    rng = np.random.default_rng(seed)
    splits = {}
    for split, n in (("val", n_val), ("test", n_test)):
        clean = smooth_images(rng, n, size)
        dose = np.geomspace(5, 200, n)
        splits[split] = (poisson_noise(rng, clean, dose), clean, dose)
    return write_data_dir(root / "processed", splits, {"noisy": {"mean": 0.6, "std": 0.2},
                                                       "clean": {"mean": 0.6, "std": 0.2}})


def write_params(path: Path, **test_section) -> Path:
    lines = ["test:"] + [f"  {k}: {json.dumps(v)}" for k, v in test_section.items()]
    path.write_text("\n".join(lines) + "\n")
    return path


def run_test_task(tmp_path: Path, data_dir: Path, **test_section) -> tuple[int, Path, Path]:
    """Run the test task in this process; return (exit code, output_dir, log file)."""
    params = write_params(tmp_path / "p.yaml", **test_section)
    out, logs = tmp_path / "out", tmp_path / "logs"
    (tmp_path / "models").mkdir(exist_ok=True)  # no trained model in it: the baselines only
    code = cli.main(["test", f"--data_dir={data_dir}", f"--model_dir={tmp_path / 'models'}",
                     f"--parameters_file={params}", f"--output_dir={out}", f"--log_dir={logs}"])
    return code, out, logs / "test.log"


# --------------------------------------------------------------------------------------------------------------
# Metric definitions
# --------------------------------------------------------------------------------------------------------------

def one_split(noisy, clean, dose=None) -> Split:
    return Split("test", np.asarray(noisy, np.float32), np.asarray(clean, np.float32), dose)


def test_psnr_of_a_constant_offset_is_the_hand_computed_value():
    clean = smooth_images(np.random.default_rng(1), 2, 32)
    scorer = evaluation.Scorer(one_split(clean, clean), data_range=2.0, figure_indices=[])
    row = scorer.add_row("offset", "classical")
    scorer.score(row, 0, clean + 0.1)
    np.testing.assert_allclose(row.mse, 0.01, rtol=1e-4)
    np.testing.assert_allclose(row.psnr, 10 * math.log10(2.0 ** 2 / 0.01), rtol=1e-5)  # 26.0206 dB
    # R is fixed: a prediction with a different range does not change the scale
    row2 = scorer.add_row("scaled", "classical")
    scorer.score(row2, 0, 10 * clean)
    mse = np.mean((10 * clean - clean) ** 2, axis=(1, 2))
    np.testing.assert_allclose(row2.psnr, 10 * np.log10(4.0 / mse), rtol=1e-4)


def test_psnr_is_averaged_per_image_not_pooled():
    clean = np.zeros((2, 16, 16), np.float32)
    pred = clean + np.array([0.1, 0.01], np.float32)[:, None, None]   # MSE 1e-2 and 1e-4: 20 dB and 40 dB
    scorer = evaluation.Scorer(one_split(pred, clean), data_range=1.0, figure_indices=[])
    row = scorer.add_row("p", "classical")
    scorer.score(row, 0, pred)
    summary = evaluation.summarise(row)
    pooled = 10 * math.log10(1.0 / np.mean((pred - clean) ** 2))      # 22.97 dB
    assert summary["psnr_mean"] == pytest.approx(30.0, abs=1e-3)
    assert summary["psnr_std"] == pytest.approx(10.0, abs=1e-3)
    assert abs(summary["psnr_mean"] - pooled) > 5


def test_a_perfect_prediction_is_reported_as_null_not_infinity():
    clean = smooth_images(np.random.default_rng(2), 1, 16)
    scorer = evaluation.Scorer(one_split(clean, clean), data_range=1.0, figure_indices=[])
    row = scorer.add_row("exact", "classical")
    scorer.score(row, 0, clean)
    summary = evaluation.summarise(row)
    assert summary["psnr_mean"] is None and summary["mse_mean"] == 0.0
    json.dumps(summary, allow_nan=False)


def test_dose_bins_cover_every_image_once():
    rng = np.random.default_rng(3)
    clean = smooth_images(rng, 7, 16)
    dose = np.array([50, 5, 20, 100, 10, 70, 30], np.float32)
    split = one_split(poisson_noise(rng, clean, dose), clean, dose)
    scorer = evaluation.Scorer(split, 1.0, [])
    row = scorer.add_row("noisy", "input")
    scorer.score(row, 0, split.noisy)
    bins = evaluation.dose_bins(dose, scorer.rows)
    assert sum(b["n"] for b in bins["bins"]) == 7
    assert [b["dose_min"] for b in bins["bins"]] == sorted(b["dose_min"] for b in bins["bins"])
    assert all(a["dose_max"] <= b["dose_min"] for a, b in zip(bins["bins"], bins["bins"][1:]))
    # more dose, less noise: the input's PSNR rises from the lowest to the highest dose bin
    assert bins["methods"]["noisy"][-1] > bins["methods"]["noisy"][0]


# --------------------------------------------------------------------------------------------------------------
# Baselines
# --------------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["gaussian", "median", "tv", "nlm"])
def test_every_classical_baseline_beats_the_noisy_input(name):
    rng = np.random.default_rng(4)
    val_clean, test_clean = smooth_images(rng, 3, 48), smooth_images(rng, 2, 48)
    val_noisy, test_noisy = poisson_noise(rng, val_clean, 20), poisson_noise(rng, test_clean, 20)
    r = float(test_clean.max() - test_clean.min())
    tuned = baselines.tune(name, val_noisy, val_clean, r)
    out = np.stack([tuned(img) for img in test_noisy])
    assert out.shape == test_noisy.shape and out.dtype == np.float32
    gain = psnr_per_image(out, test_clean, r).mean() - psnr_per_image(test_noisy, test_clean, r).mean()
    assert gain > 3.0, f"{name}: only {gain:.2f} dB better than the noisy input"
    assert ssim_per_image(out, test_clean, r).mean() > ssim_per_image(test_noisy, test_clean, r).mean()


def test_tuning_picks_the_best_grid_value_and_smooths_more_at_low_dose():
    rng = np.random.default_rng(5)
    clean = smooth_images(rng, 3, 48)
    r = float(clean.max() - clean.min())
    low = baselines.tune("gaussian", poisson_noise(rng, clean, 3), clean, r)
    high = baselines.tune("gaussian", poisson_noise(rng, clean, 3000), clean, r)
    grid = baselines.get("gaussian").grid
    for tuned in (low, high):
        assert tuned.value in grid and set(tuned.grid_psnr) == set(grid)
        assert tuned.tune_psnr == max(tuned.grid_psnr.values())
        assert tuned.params()["sigma"] == tuned.value and tuned.params()["tuned_on_val_images"] == 3
    assert low.value > high.value


def test_gain_offset_fit_recovers_an_affine_map():
    rng = np.random.default_rng(6)
    f = rng.normal(size=(2, 8, 8))
    gain, offset = baselines.fit_gain_offset(f, 2.5 * f - 0.3)
    assert gain == pytest.approx(2.5) and offset == pytest.approx(-0.3)
    assert baselines.fit_gain_offset(np.ones((4, 4)), np.full((4, 4), 7.0)) == (0.0, 7.0)


@pytest.mark.parametrize("scale", [5.0, 50.0])
def test_count_scale_is_estimated_from_the_image(scale):
    rng = np.random.default_rng(7)
    clean = smooth_images(rng, 1, 128)[0]
    noisy = rng.poisson(clean * scale) / scale
    assert baselines.estimate_count_scale(noisy) == pytest.approx(scale, rel=0.1)


def test_noise_sigma_of_gaussian_noise():
    rng = np.random.default_rng(8)
    image = smooth_images(rng, 1, 128)[0] + rng.normal(0, 0.05, (128, 128))
    assert baselines.noise_sigma(image) == pytest.approx(0.05, rel=0.1)


def test_inverse_anscombe_is_unbiased_for_poisson_counts():
    for lam in (0.5, 2.0, 10.0, 50.0):
        k = np.arange(0, int(lam + 20 * math.sqrt(lam) + 30))
        expected = np.sum(poisson.pmf(k, lam) * baselines.anscombe(k))
        assert float(baselines.inverse_anscombe_unbiased(expected)) == pytest.approx(lam, rel=0.02, abs=0.01)
        if lam == 2.0:  # the algebraic inverse is biased at low counts: that is why the unbiased one is used
            assert abs((expected / 2) ** 2 - 3 / 8 - lam) > 0.2
    zero = baselines.anscombe(np.array(0.0))
    assert float(baselines.inverse_anscombe_unbiased(zero)) == pytest.approx(0.0, abs=1e-9)
    assert float(baselines.inverse_anscombe_unbiased(np.array(0.5))) == 0.0


def test_bm3d_baselines_need_the_optional_package():
    assert set(baselines.DEFAULT_BASELINES) <= set(baselines.available())
    assert ("bm3d" in baselines.available()) == HAVE_BM3D
    if not HAVE_BM3D:
        assert baselines.missing_package("anscombe_bm3d") == "bm3d"
        with pytest.raises(InputError, match=r"test\.baselines.*pip install emdenoise\[bm3d\].*non-commercial"):
            evaluation.select_baselines(["gaussian", "bm3d"], "p.yaml", None)


@pytest.mark.skipif(not HAVE_BM3D, reason="the optional bm3d package is not installed")
@pytest.mark.slow
def test_anscombe_bm3d_beats_gaussian_on_poisson_images():
    rng = np.random.default_rng(9)
    clean = smooth_images(rng, 2, 64)
    noisy = poisson_noise(rng, clean, 10)
    r = float(clean.max() - clean.min())
    scores = {}
    for name in ("gaussian", "anscombe_bm3d"):
        tuned = baselines.tune(name, noisy[:1], clean[:1], r)
        scores[name] = float(psnr_per_image(tuned(noisy[1]), clean[1], r)[0])
    assert scores["anscombe_bm3d"] > scores["gaussian"]


# --------------------------------------------------------------------------------------------------------------
# The task, end to end
# --------------------------------------------------------------------------------------------------------------

REQUIRED_ROW_KEYS = {"psnr_mean", "psnr_std", "ssim_mean", "ssim_std", "mse_mean", "images_per_s",
                     "seconds_per_image", "kind", "params"}


def test_test_task_with_baselines_only_writes_every_output(tmp_path):
    data_dir = make_data_dir(tmp_path)
    code, out, log = run_test_task(tmp_path, data_dir, baselines=["gaussian", "median"], tune_images=3,
                                   figure_images=2, batch_size=4)
    assert code == 0, log.read_text()
    metrics = json.loads((out / "test_metrics.json").read_text())
    card = json.loads((data_dir / CARD).read_text())
    assert metrics["data_range"] == card["data_range"] and metrics["n_images"] == 6
    assert metrics["data_range_definition"] and metrics["device"] == "cpu"
    assert list(metrics["methods"]) == ["noisy", "gaussian", "median"]
    for name, row in metrics["methods"].items():
        assert REQUIRED_ROW_KEYS <= set(row), name
        assert all(math.isfinite(row[k]) for k in ("psnr_mean", "ssim_mean", "mse_mean"))
    assert metrics["methods"]["noisy"]["kind"] == "input"
    assert metrics["methods"]["gaussian"]["kind"] == "classical"
    assert metrics["methods"]["gaussian"]["images_per_s"] > 0
    assert metrics["methods"]["gaussian"]["params"]["sigma"] in baselines.get("gaussian").grid

    # the noisy row is the input scored against the CLEAN test images, per image, with the card's R
    with h5py.File(data_dir / "test.h5") as fh:
        noisy, clean = fh["noisy"][:], fh["clean"][:]
    r = card["data_range"]
    expected = psnr_per_image(noisy, clean, r).numpy()
    assert metrics["methods"]["noisy"]["psnr_mean"] == pytest.approx(float(expected.mean()), abs=1e-4)
    assert metrics["methods"]["noisy"]["ssim_mean"] == pytest.approx(
        float(ssim_per_image(noisy, clean, r).mean()), abs=1e-4)
    assert metrics["methods"]["noisy"]["mse_mean"] == pytest.approx(float(np.mean((noisy - clean) ** 2)),
                                                                    rel=1e-4)
    assert metrics["methods"]["gaussian"]["psnr_mean"] > metrics["methods"]["noisy"]["psnr_mean"]

    bins = metrics["psnr_by_dose"]
    assert sum(b["n"] for b in bins["bins"]) == 6 and set(bins["methods"]) == set(metrics["methods"])

    with open(out / "per_image.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert list(rows[0]) == ["index", "dose", "method", "psnr", "ssim", "mse"]
    assert len(rows) == 6 * 3
    noisy_csv = [float(r_["psnr"]) for r_ in rows if r_["method"] == "noisy"]
    np.testing.assert_allclose(noisy_csv, expected, atol=1e-4)

    table = (out / "results.md").read_text()
    assert f"R = {metrics['data_range']:.6g}" in table and "6 test images" in table
    ranked = [line.split("|")[2].strip() for line in table.splitlines() if line[:3] in ("| 1", "| 2", "| 3")]
    psnrs = [metrics["methods"][m]["psnr_mean"] for m in ranked]
    assert psnrs == sorted(psnrs, reverse=True) and ranked[-1] == "noisy"
    assert "gain/offset fitted on the validation split" in table
    assert "gaussian" in log.read_text()  # the table is logged

    import matplotlib.image
    for name in ("comparison.png", "psnr_bar.png"):
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        image = matplotlib.image.imread(out / name)
        assert image.shape[0] > 100 and image.shape[1] > 100 and image.std() > 0.01
    # no temporary files left behind by the atomic writes
    assert sorted(p.name for p in out.iterdir()) == ["comparison.png", "per_image.csv", "psnr_bar.png",
                                                     "results.md", "test_metrics.json"]


def test_nothing_to_evaluate_is_an_input_error_naming_model_dir(tmp_path):
    data_dir = make_data_dir(tmp_path, n_test=2, n_val=1)
    code, out, log = run_test_task(tmp_path, data_dir, baselines="none")
    assert code == EXIT_BAD_INPUT
    error = [line for line in log.read_text().splitlines() if "error:" in line]
    assert len(error) == 1 and str(tmp_path / "models") in error[0] and "test.models" in error[0]
    assert not out.exists()


def test_a_named_model_that_was_not_trained_is_an_input_error(tmp_path):
    data_dir = make_data_dir(tmp_path, n_test=2, n_val=1)
    code, out, log = run_test_task(tmp_path, data_dir, models=["unet"], baselines="none")
    assert code == EXIT_BAD_INPUT
    assert "unet" in log.read_text() and "em_denoise_model.h5" in log.read_text()


def test_an_empty_val_split_cannot_tune_the_baselines(tmp_path):
    data_dir = make_data_dir(tmp_path, n_test=2, n_val=1)
    write_split(data_dir / "val.h5", np.zeros((0, 40, 40), np.float32), np.zeros((0, 40, 40), np.float32))
    code, _, log = run_test_task(tmp_path, data_dir, baselines=["gaussian"])
    assert code == EXIT_BAD_INPUT and "val.h5" in log.read_text()


@pytest.mark.skipif(HAVE_BM3D, reason="checks the message shown when the optional bm3d package is missing")
def test_bm3d_without_the_package_exits_2_with_one_line(tmp_path, capsys):
    data_dir = make_data_dir(tmp_path, n_test=2, n_val=1)
    code, out, _ = run_test_task(tmp_path, data_dir, baselines=["gaussian", "anscombe_bm3d"])
    assert code == EXIT_BAD_INPUT
    stderr = capsys.readouterr().err
    errors = [line for line in stderr.splitlines() if "error:" in line]
    assert len(errors) == 1 and "Traceback" not in stderr
    assert "test.baselines" in errors[0] and "pip install emdenoise[bm3d]" in errors[0]
    assert "non-commercial" in errors[0] and "anscombe_bm3d" in errors[0]
    assert not out.exists()


def test_the_test_task_scores_a_saved_model(tmp_path):
    modelio = pytest.importorskip("emdenoise.io.modelfile")
    import torch

    from emdenoise import models
    torch.manual_seed(0)
    net = models.build("sciml_ae")
    data_dir = make_data_dir(tmp_path, n_test=5, n_val=2, size=32)
    card = json.loads((data_dir / CARD).read_text())
    modelio.save_model(tmp_path / "models" / "sciml_ae" / "em_denoise_model.h5", net,
                       {"model": "sciml_ae", "options": {}, "normalisation": card["normalisation"],
                        "data_range": card["data_range"]})
    code, out, log = run_test_task(tmp_path, data_dir, baselines=["gaussian"], batch_size=2, figure_images=1,
                                   device="cpu", precision="fp32", tune_images=2)
    assert code == 0, log.read_text()
    metrics = json.loads((out / "test_metrics.json").read_text())
    row = metrics["methods"]["sciml_ae"]
    assert row["kind"] == "deep" and REQUIRED_ROW_KEYS <= set(row)
    assert row["params"]["model"] == "sciml_ae" and row["params"]["parameters"] == 122_737
    assert metrics["precision"] == "fp32" and set(metrics["methods"]) == {"noisy", "gaussian", "sciml_ae"}
    assert all(math.isfinite(row[k]) for k in ("psnr_mean", "ssim_mean", "mse_mean", "images_per_s"))
    with open(out / "per_image.csv", newline="") as fh:
        assert sum(r["method"] == "sciml_ae" for r in csv.DictReader(fh)) == 5
    assert (out / "comparison.png").stat().st_size > 0
    # a rerun without figures removes the old comparison figure, which no longer matches the metrics
    code, out, log = run_test_task(tmp_path, data_dir, baselines=["gaussian"], batch_size=2, figure_images=0,
                                   device="cpu", precision="fp32", tune_images=2)
    assert code == 0, log.read_text()
    assert not (out / "comparison.png").exists() and (out / "psnr_bar.png").exists()


# --------------------------------------------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------------------------------------------

def test_figures_are_drawn_when_the_matplotlib_config_folder_is_unusable(tmp_path):
    not_a_folder = tmp_path / "home"
    not_a_folder.write_text("a file where HOME should be a folder")
    out = tmp_path / "bar.png"
    env = {k: v for k, v in os.environ.items() if k not in ("MPLCONFIGDIR", "XDG_CONFIG_HOME")}
    env["HOME"] = str(not_a_folder)
    code = ("import sys; from emdenoise import report; report.psnr_bar_chart(sys.argv[1], {'n_images': 2, "
            "'data_range': 1.0, 'methods': {'noisy': {'kind': 'input', 'psnr_mean': 10.0, 'psnr_std': 1.0}, "
            "'tv': {'kind': 'classical', 'psnr_mean': 20.0, 'psnr_std': 2.0}}})")
    res = subprocess.run([sys.executable, "-c", code, str(out)], capture_output=True, text=True, env=env)
    assert res.returncode == 0, res.stderr
    assert "Matplotlib" not in res.stderr and "writable" not in res.stderr
    assert out.read_bytes()[:4] == b"\x89PNG"
