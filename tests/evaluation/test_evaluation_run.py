"""The evaluation engine: metric definitions (per-image PSNR with the fixed data range, per-image means), dose
bins, and which baselines can be selected."""

import importlib.util
import json
import math

import numpy as np
import pytest
from noisy_images import poisson_noise, smooth_images

from emdenoise.classical import filters as baselines
from emdenoise.data.splits import Split
from emdenoise.errors import InputError
from emdenoise.evaluation import run as evaluation

HAVE_BM3D = importlib.util.find_spec("bm3d") is not None


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
    np.testing.assert_allclose(row.psnr, 10 * math.log10(2.0**2 / 0.01), rtol=1e-5)  # 26.0206 dB
    # R is fixed: a prediction with a different range does not change the scale
    row2 = scorer.add_row("scaled", "classical")
    scorer.score(row2, 0, 10 * clean)
    mse = np.mean((10 * clean - clean) ** 2, axis=(1, 2))
    np.testing.assert_allclose(row2.psnr, 10 * np.log10(4.0 / mse), rtol=1e-4)


def test_psnr_is_averaged_per_image_not_pooled():
    clean = np.zeros((2, 16, 16), np.float32)
    pred = clean + np.array([0.1, 0.01], np.float32)[:, None, None]  # MSE 1e-2 and 1e-4: 20 dB and 40 dB
    scorer = evaluation.Scorer(one_split(pred, clean), data_range=1.0, figure_indices=[])
    row = scorer.add_row("p", "classical")
    scorer.score(row, 0, pred)
    summary = evaluation.summarise(row)
    pooled = 10 * math.log10(1.0 / np.mean((pred - clean) ** 2))  # 22.97 dB
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


def test_bm3d_baselines_need_the_optional_package():
    assert set(baselines.DEFAULT_BASELINES) <= set(baselines.available())
    assert ("bm3d" in baselines.available()) == HAVE_BM3D
    if not HAVE_BM3D:
        assert baselines.missing_package("anscombe_bm3d") == "bm3d"
        with pytest.raises(InputError, match=r"test\.baselines.*pip install emdenoise\[bm3d\].*non-commercial"):
            evaluation.select_baselines(["gaussian", "bm3d"], "p.yaml", None)
