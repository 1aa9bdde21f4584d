"""The evaluation engine: metric definitions (per-image PSNR with the fixed data range, per-image means), dose
bins, and which baselines can be selected."""

import importlib.util
import json
import math

import numpy as np
import pytest
from noisy_images import poisson_noise, smooth_images

from emdenoise.classical import methods as baselines
from emdenoise.data.splits import Split
from emdenoise.errors import InputError
from emdenoise.evaluation import report
from emdenoise.evaluation import run as evaluation
from emdenoise.evaluation import scorer as scoring
from emdenoise.method import Context, Identity

HAVE_BM3D = importlib.util.find_spec("bm3d") is not None


# --------------------------------------------------------------------------------------------------------------
# Metric definitions
# --------------------------------------------------------------------------------------------------------------


def one_split(noisy, clean, dose=None) -> Split:
    return Split("test", np.asarray(noisy, np.float32), np.asarray(clean, np.float32), dose)


def test_psnr_of_a_constant_offset_is_the_hand_computed_value():
    clean = smooth_images(np.random.default_rng(1), 2, 32)
    scorer = scoring.Scorer(one_split(clean, clean), data_range=2.0, figure_indices=[])
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
    scorer = scoring.Scorer(one_split(pred, clean), data_range=1.0, figure_indices=[])
    row = scorer.add_row("p", "classical")
    scorer.score(row, 0, pred)
    summary = scoring.summarise(row)
    pooled = 10 * math.log10(1.0 / np.mean((pred - clean) ** 2))  # 22.97 dB
    assert summary["psnr_mean"] == pytest.approx(30.0, abs=1e-3)
    assert summary["psnr_std"] == pytest.approx(10.0, abs=1e-3)
    assert abs(summary["psnr_mean"] - pooled) > 5


def test_a_perfect_prediction_is_reported_as_null_not_infinity():
    clean = smooth_images(np.random.default_rng(2), 1, 16)
    scorer = scoring.Scorer(one_split(clean, clean), data_range=1.0, figure_indices=[])
    row = scorer.add_row("exact", "classical")
    scorer.score(row, 0, clean)
    summary = scoring.summarise(row)
    assert summary["psnr_mean"] is None and summary["mse_mean"] == 0.0
    json.dumps(summary, allow_nan=False)


def test_dose_bins_cover_every_image_once():
    rng = np.random.default_rng(3)
    clean = smooth_images(rng, 7, 16)
    dose = np.array([50, 5, 20, 100, 10, 70, 30], np.float32)
    split = one_split(poisson_noise(rng, clean, dose), clean, dose)
    scorer = scoring.Scorer(split, 1.0, [])
    row = scorer.add_row("noisy", "input")
    scorer.score(row, 0, split.noisy)
    bins = scoring.dose_bins(dose, scorer.rows)
    assert sum(b["n"] for b in bins["bins"]) == 7
    assert [b["dose_min"] for b in bins["bins"]] == sorted(b["dose_min"] for b in bins["bins"])
    assert all(a["dose_max"] <= b["dose_min"] for a, b in zip(bins["bins"], bins["bins"][1:]))
    # more dose, less noise: the input's PSNR rises from the lowest to the highest dose bin
    assert bins["methods"]["noisy"][-1] > bins["methods"]["noisy"][0]
    # what the dose is: per pixel at the beam centre (HRTEM), the mean counts of STEM frames stored per their mean
    assert bins["unit"] == "electrons per pixel at the beam centre"
    stem = scoring.dose_bins(dose, scorer.rows, units="counts / mean")
    assert stem["unit"].startswith("mean counts per pixel") and stem["bins"] == bins["bins"]
    assert f"({stem['unit']})" in "\n".join(report._dose_lines(stem, {}))


def test_bm3d_baselines_need_the_optional_package():
    assert set(baselines.DEFAULT_BASELINES) <= set(baselines.available())
    assert ("bm3d" in baselines.available()) == HAVE_BM3D
    if not HAVE_BM3D:
        assert baselines.missing_package("anscombe_bm3d") == "bm3d"
        with pytest.raises(InputError, match=r"test\.baselines.*pip install emdenoise\[bm3d\].*non-commercial"):
            evaluation.select_baselines(["gaussian", "bm3d"], "p.yaml", None)


# --------------------------------------------------------------------------------------------------------------
# The one timed loop
# --------------------------------------------------------------------------------------------------------------


class Halving:
    """A method that halves its frames, recording every context and warm-up it gets."""

    name, kind, settings = "half", "classical", {"factor": 0.5}

    def __init__(self):
        self.contexts: list[Context] = []
        self.warm_ups = 0

    def __call__(self, frames, context):
        self.contexts.append(context)
        return 0.5 * np.asarray(frames, np.float32)

    def warm_up(self, frames, context):
        self.warm_ups += 1


def test_one_loop_runs_any_method_in_batches_with_its_context():
    rng = np.random.default_rng(4)
    clean = smooth_images(rng, 5, 16)
    dose = np.array([10, 20, 30, 40, 50], np.float32)
    split = one_split(poisson_noise(rng, clean, dose), clean, dose)
    scorer = scoring.Scorer(split, 1.0, [], pixel_size=0.2)
    method = Halving()
    row = evaluation.run_method(method, scorer, batch_size=2)
    assert method.warm_ups == 1 and len(method.contexts) == 3  # batches of 2, 2, 1
    assert [c.pixel_size for c in method.contexts] == [0.2, 0.2, 0.2]
    np.testing.assert_array_equal(method.contexts[2].dose, [50.0])
    expected = scoring.psnr_per_image(0.5 * split.noisy, clean, 1.0).double().numpy()
    np.testing.assert_allclose(row.psnr, expected, rtol=1e-6)
    assert row.params == {"factor": 0.5} and row.kind == "classical" and row.seconds > 0


def test_the_identity_row_is_the_input_scored_and_costs_nothing():
    rng = np.random.default_rng(5)
    clean = smooth_images(rng, 3, 16)
    split = one_split(poisson_noise(rng, clean, 20), clean)
    scorer = scoring.Scorer(split, 1.0, [])
    evaluation.run_method(Identity(), scorer, batch_size=2)
    summary = scorer.summary("noisy")
    expected = scoring.psnr_per_image(split.noisy, clean, 1.0).double().numpy()
    assert summary.kind == "input" and summary.psnr_mean == pytest.approx(float(expected.mean()))
    assert summary.seconds_per_image == 0.0 and summary.images_per_s is None


def test_a_classical_method_runs_in_the_loop_as_it_runs_alone():
    rng = np.random.default_rng(6)
    clean = smooth_images(rng, 3, 16)
    split = one_split(poisson_noise(rng, clean, 20), clean)
    scorer = scoring.Scorer(split, 1.0, [0])
    median = baselines.build("median", Context())
    evaluation.run_method(median, scorer, batch_size=2)
    np.testing.assert_array_equal(scorer.rows["median"].figure[0], median.apply(split.noisy[0]))
    assert scorer.rows["median"].params["size"] == 3


def test_a_beam_aware_baseline_on_values_that_cannot_be_counts_is_one_line():
    """test.baselines with bragg on a split holding negative values: one InputError naming the split file, the
    parameter and the smallest value (it was an 'unexpected ValueError')."""
    import logging

    from emdenoise.data.splits import Split
    from emdenoise.errors import InputError
    from emdenoise.evaluation.run import tune_baseline

    rng = np.random.default_rng(0)
    clean = np.ones((2, 32, 32), np.float32)
    val = Split("val", (clean + rng.normal(0, 0.5, clean.shape)).astype(np.float32) - 1, clean)
    with pytest.raises(InputError) as err:
        tune_baseline("bragg", val, 1.0, logging.getLogger("t"))
    assert err.value.message.startswith("val.h5: test.baselines: bragg needs images of counts")
    assert "smallest value of -" in err.value.message and "\n" not in err.value.message
    assert tune_baseline("gaussian", val, 1.0, logging.getLogger("t")).name == "gaussian"  # any values


# --------------------------------------------------------------------------------------------------------------
# A pretrained model of the zoo as a method
# --------------------------------------------------------------------------------------------------------------


def test_pretrained_resamples_a_batch_outside_its_pixel_sizes_as_denoise_does():
    from emdenoise import zoo

    path = zoo.get("hrtem-ffdnet").model_file
    model = evaluation.Pretrained("zoo:hrtem-ffdnet", evaluation.load_model(path, "cpu", "fp32"), path, 2)
    low, high = model.denoiser.meta["pixel_size_range"]
    frames = poisson_noise(np.random.default_rng(0), smooth_images(np.random.default_rng(1), 2, 32), 500.0)
    plain = evaluation.Network("plain", model.denoiser, path, 2)(frames, Context())
    assert model.kind == "pretrained" and "not trained by this run" in model.settings["source"]
    assert model.sampling((32, 32), (low + high) / 2).status == "matched"
    assert model.sampling((32, 32), None).status == "unknown"
    far = model.sampling((32, 32), 2 * high)
    assert far.status == "resampled" and far.shape == (64, 64) and far.model_pixel_size == pytest.approx(high)
    np.testing.assert_array_equal(model(frames, Context(pixel_size=(low + high) / 2)), plain)  # inside: as it is
    np.testing.assert_array_equal(model(frames, Context()), plain)  # unknown pixel size: as it is
    resampled = model(frames, Context(pixel_size=2 * high))
    assert resampled.shape == frames.shape and np.isfinite(resampled).all()
    assert np.abs(resampled - plain).max() > 1e-3  # the model saw the frames at its own sampling


def test_find_zoo_names_rows_by_prefix_and_refuses_unknown_names():
    assert set(evaluation.find_zoo("all", "p.yaml")) >= {"zoo:hrtem-ffdnet"}
    assert evaluation.find_zoo(["none"], "p.yaml") == {}
    with pytest.raises(InputError, match="test.zoo"):
        evaluation.find_zoo(["no-such-model"], "p.yaml")
