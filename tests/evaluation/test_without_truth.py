"""Scores without clean truth, verified where the truth exists: on synthetic lattices at several doses the
unbiased MSE of the identity and of Gaussian filters matches the true MSE within its stated standard error
(movie halves and binomial splits alike), the variance correction is what makes it so, and an offset or gain
of the detector is honoured through an injected counts function."""

import math
from pathlib import Path

import numpy as np
import pytest
from noisy_images import atom_image, lattice_sites
from scipy import ndimage

from emdenoise.evaluation import without_truth as wt
from emdenoise.evaluation.metrics import psnr_per_image

SIDE = 96


def _clean() -> np.ndarray:
    return atom_image(SIDE, lattice_sites(SIDE, 6.0), contrast=0.3).astype(np.float64)


def _gaussian(sigma: float):
    if sigma == 0:
        return lambda frames: np.asarray(frames)
    return lambda frames: np.stack([ndimage.gaussian_filter(f, sigma) for f in np.asarray(frames, np.float64)])


def _z_scores(make_pair, denoise, clean, repeats: int) -> np.ndarray:
    """(estimate - true MSE) / stated SE over ``repeats`` fresh noise draws."""
    z = []
    for _ in range(repeats):
        pair = make_pair()
        out = denoise(pair.input[None])[0]
        score = wt.image_score(out, pair)
        z.append((score.umse - float(np.mean((out - clean) ** 2))) / score.umse_se)
    return np.array(z)


@pytest.mark.parametrize("dose", [5.0, 50.0, 500.0])
@pytest.mark.parametrize("sigma", [0.0, 1.0, 2.5])
def test_the_split_estimate_matches_the_true_mse_within_its_error(dose, sigma):
    rng = np.random.default_rng(int(dose) + int(10 * sigma))
    clean = _clean()

    def pair():
        return wt.split_pair(rng.poisson(clean * dose) / dose, rng, 0.5, scale=dose)

    z = _z_scores(pair, _gaussian(sigma), clean, 12)
    assert abs(z.mean()) < 3.0 / math.sqrt(len(z)) + 0.3  # unbiased
    assert np.sum(np.abs(z) > 3.0) <= 1 and np.all(np.abs(z) < 6.0)  # the error bar covers it (tails of a t)
    assert 0.4 < z.std() < 1.6  # and is not grossly wide or narrow


@pytest.mark.parametrize("dose", [5.0, 50.0])
@pytest.mark.parametrize("sigma", [0.0, 1.0])
@pytest.mark.parametrize("variance", ["frames", "poisson"])
def test_the_movie_estimate_matches_the_true_mse_within_its_error(dose, sigma, variance):
    rng = np.random.default_rng(7 + int(dose))
    clean = _clean()

    def pair():
        return wt.movie_pair(rng.poisson(clean * dose, size=(6, SIDE, SIDE)) / dose, variance, scale=dose)

    z = _z_scores(pair, _gaussian(sigma), clean, 10)
    assert abs(z.mean()) < 3.0 / math.sqrt(len(z)) + 0.3
    assert np.sum(np.abs(z) > 3.0) <= 1 and np.all(np.abs(z) < 6.0)


def test_without_the_variance_correction_the_noisy_target_underrates_every_method():
    rng = np.random.default_rng(3)
    clean, dose = _clean(), 20.0
    pair = wt.split_pair(rng.poisson(clean * dose) / dose, rng, 0.5, scale=dose)
    out = ndimage.gaussian_filter(pair.input, 1.0)
    score = wt.image_score(out, pair)
    true = float(np.mean((out - clean) ** 2))
    # the raw MSE against the noisy target is off by the target's variance, x / ((1 - p) s) on average
    assert score.measured_mse - true == pytest.approx(clean.mean() / (0.5 * dose), rel=0.05)
    assert abs(score.umse - true) < 4 * score.umse_se
    assert abs(score.measured_mse - true) > 20 * score.umse_se


def test_the_psnr_is_the_projects_psnr_of_the_estimated_mse():
    rng = np.random.default_rng(4)
    clean, dose, data_range = _clean(), 200.0, 1.3
    pairs = [wt.movie_pair(rng.poisson(clean * dose, size=(4, SIDE, SIDE)) / dose) for _ in range(3)]
    score, outputs = wt.score_method("g", _gaussian(1.0), pairs, data_range)
    true = psnr_per_image(np.stack(outputs), np.stack([clean] * 3), data_range).double().numpy()
    assert score.n == 3 and score.kind == "movie"
    per_image = [wt.image_score(o, p).upsnr(data_range)[0] for o, p in zip(outputs, pairs)]
    assert score.upsnr == pytest.approx(np.mean(per_image))  # per image, then averaged, as the metrics do
    assert abs(score.upsnr - float(true.mean())) < 4 * score.upsnr_se
    assert "2 of 4 frames" in score.dose_note


def test_a_detector_offset_and_gain_are_honoured_through_the_counts_function():
    rng = np.random.default_rng(5)
    clean, dose, offset, gain = _clean(), 30.0, 100.0, 2.5  # values = offset + gain x counts
    counts = rng.poisson(clean * dose)
    values = offset + gain * counts
    pair = wt.split_pair(values, rng, 0.5, to_counts=lambda v: (v - offset) / gain)
    signal = offset + gain * dose * clean  # the signal in the frame's own units
    assert pair.input.mean() == pytest.approx(signal.mean(), rel=0.01)
    assert pair.target.mean() == pytest.approx(signal.mean(), rel=0.01)
    out = ndimage.gaussian_filter(pair.input, 1.0)
    score = wt.image_score(out, pair)
    assert abs(score.umse - float(np.mean((out - signal) ** 2))) < 4 * score.umse_se


def test_ranking_puts_the_better_filter_first():
    rng = np.random.default_rng(6)
    clean, dose = _clean(), 10.0
    pairs = [wt.split_pair(rng.poisson(clean * dose) / dose, rng, 0.5, scale=dose) for _ in range(2)]
    scores = [wt.score_method(name, _gaussian(s), pairs, 1.0)[0] for name, s in (("noisy", 0.0), ("g", 1.5))]
    undefined = wt.Score("zero", "split", -1e-4, 1e-4, None, None, 2, 18, 0.1, 0.1, 1.0, "", undefined=2)
    order = [s.method for s in wt.ranked([*scores, undefined])]
    assert order == ["zero", "g", "noisy"]  # by uMSE: a method within the noise of perfect first
    back = wt.from_summary(wt.summary(scores))
    assert {s.method for s in back} == {"noisy", "g"}
    assert len(wt.table_rows(scores)[0]) == len(wt.TABLE_HEADER) == len(wt.TABLE_ALIGN)


def test_what_cannot_be_scored_says_why():
    rng = np.random.default_rng(0)
    with pytest.raises(wt.CannotScore, match="2 frames"):
        wt.movie_pair(np.ones((1, 32, 32)))
    with pytest.raises(wt.CannotScore, match="2 target frames"):
        wt.movie_pair(np.ones((2, 32, 32)), "frames")
    with pytest.raises(wt.CannotScore, match="needs counts"):
        wt.movie_pair(-np.ones((2, 32, 32)), "poisson")
    with pytest.raises(wt.CannotScore, match="counts"):
        wt.split_pair(-np.ones((32, 32)), rng)
    with pytest.raises(wt.CannotScore, match="all the same"):
        wt.split_pair(np.full((32, 32), 3.0), rng, scale=1.0)


@pytest.mark.parametrize("kind", ["split", "movie"])
def test_the_zoo_model_is_scored_without_truth_as_with_it(kind):
    import emdenoise
    from emdenoise.data.simulate import pairs as simulate

    rng = np.random.default_rng(11)
    clean = np.stack([simulate.clean_image(rng, 128, material="graphene", pixel_size=0.2)[0] for _ in range(4)])
    clean = clean.astype(np.float64)
    data_range, dose = float(np.ptp(clean)), 200.0
    if kind == "split":
        pairs = [wt.split_pair(rng.poisson(c * dose) / dose, rng, 0.5, scale=dose) for c in clean]
    else:
        pairs = [wt.movie_pair(rng.poisson(c * dose, size=(8, *c.shape)) / dose) for c in clean]

    def zoo(frames):
        return emdenoise.denoise(frames, "zoo:hrtem-ffdnet", 0.2, max_deviation=0.0).image

    score, outputs = wt.score_method("zoo", zoo, pairs, data_range)
    noisy, _ = wt.score_method("noisy", lambda f: f, pairs, data_range)
    true_mse = float(np.mean((np.stack(outputs) - clean) ** 2))
    assert abs(score.umse - true_mse) < 4 * score.umse_se
    true_pooled = 10 * math.log10(data_range**2 / true_mse)
    assert score.upsnr_pooled is not None and abs(score.upsnr_pooled - true_pooled) < 4 * score.upsnr_pooled_se
    assert score.umse + 3 * score.umse_se < noisy.umse  # ranked above the noisy input, as the truth says
    assert true_mse < float(np.mean((np.stack([p.input for p in pairs]) - clean) ** 2))


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["split", "movie"])
def test_the_stated_error_is_calibrated_over_many_draws(kind):
    rng = np.random.default_rng(12)
    clean, dose = _clean(), 30.0

    def pair():
        if kind == "split":
            return wt.split_pair(rng.poisson(clean * dose) / dose, rng, 0.5, scale=dose)
        return wt.movie_pair(rng.poisson(clean * dose, size=(4, SIDE, SIDE)) / dose)

    for sigma in (0.0, 1.0, 2.0):
        z = _z_scores(pair, _gaussian(sigma), clean, 300)
        assert abs(z.mean()) < 0.2  # unbiased to a fifth of its error
        assert 0.8 < z.std() < 1.2  # the error bar is the spread of the error (blocks of 24 px here)
        assert np.mean(np.abs(z) > 2.0) < 0.15  # 16 blocks: the tails of a t with 15 degrees (6 % beyond 2)


def test_the_paired_difference_of_two_methods_is_right_and_far_tighter_than_either_score():
    rng = np.random.default_rng(8)
    clean, dose = _clean(), 30.0
    z, ratios = [], []
    for _ in range(12):
        pairs = [wt.split_pair(rng.poisson(clean * dose) / dose, rng, 0.5, scale=dose) for _ in range(2)]
        a, b = _gaussian(1.0)(np.stack([p.input for p in pairs])), _gaussian(2.0)(np.stack([p.input for p in pairs]))
        delta, se = wt.paired_difference(a, b, pairs)
        true = float(np.mean((a - clean) ** 2) - np.mean((b - clean) ** 2))
        z.append((delta - true) / se)
        score_a = wt.combine("a", [wt.image_score(o, p) for o, p in zip(a, pairs)], 1.0, "split", "")
        ratios.append(se / score_a.umse_se)
    z = np.array(z)
    assert abs(z.mean()) < 1.2 and np.sum(np.abs(z) > 3.0) <= 1
    assert max(ratios) < 0.8  # the shared target noise cancels in the difference
    scores = [
        wt.combine(n, [wt.image_score(o, p) for o, p in zip(out, pairs)], 1.0, "split", "")
        for n, out in (("a", a), ("b", b))
    ]
    found = wt.margins({"a": list(a), "b": list(b)}, pairs, scores)
    worse = max(scores, key=lambda s: s.umse).method
    assert list(found) == [worse] and found[worse]["delta_umse"] > 0
    assert "±" in wt.table_rows(scores, found)[1][6]


def test_the_identity_check_passes_when_the_assumptions_hold_and_fails_when_frames_differ():
    rng = np.random.default_rng(9)
    clean, dose = _clean(), 50.0
    identity = _gaussian(0.0)

    def check(pairs):
        score, _ = wt.score_method("noisy", identity, pairs, 1.0)
        return wt.identity_check(pairs, [score])

    splits = [wt.split_pair(rng.poisson(clean * dose) / dose, rng, 0.5, scale=dose) for _ in range(3)]
    movies = [wt.movie_pair(rng.poisson(clean * dose, size=(6, SIDE, SIDE)) / dose) for _ in range(3)]
    for pairs in (splits, movies):
        found = check(pairs)
        assert abs(found["z"]) < 3.5 and found["ratio"] == pytest.approx(1.0, abs=0.05)
        assert "the assumptions hold" in wt.check_lines(found)[1]
    # frames that do not hold the same signal (a pixel of drift left in some): within each half, the variance
    # over frames holds the drift too (uMSE below it); between halves, the identity's error does (above it)
    shifted = ndimage.shift(clean, (1.0, 1.0), order=3, mode="nearest")
    for order, sign in (("ccsscc", -1), ("scscsc", +1)):  # even frames are x1, odd ones y2
        frames = np.stack([rng.poisson((clean if k == "c" else shifted) * dose) / dose for k in order])
        found = check([wt.movie_pair(frames)])
        assert sign * found["z"] > 3 and "FAIL" in wt.check_lines(found)[1]
    assert wt.identity_check(splits, []) is None  # no identity row, no check


REAL_MOVIE = Path(__file__).resolve().parents[2].parent / "shared" / "realdata" / "srtio3_abf_movie"


@pytest.mark.slow
def test_a_real_movie_is_ranked_and_its_assumptions_checked():
    """The real ABF-STEM movie (5 frames, never copied here): smoothing ranks above the noisy input beyond the
    paired error, and the identity check reports that its frames, registered to whole pixels, do not hold the
    same signal (docs/explanation/metrics.md)."""
    import emdenoise

    path = REAL_MOVIE / "abf_movie_5x512x512.tif"
    if not path.is_file():
        pytest.skip(f"{path} not here (the shared real micrographs)")
    scores = emdenoise.score(path, ["noisy", "gaussian", "median"], pixel_size=0.092)
    assert scores.kind == "movie" and scores.scores[-1].method == "noisy"
    noisy = scores.margins["noisy"]
    assert noisy["delta_umse"] > 10 * noisy["se"]
    assert scores.check is not None and scores.check["ratio"] < 0.9 and scores.check["z"] < -3


def test_a_split_of_detector_values_on_an_offset_scores_like_the_counts_under_them():
    """A frame of readings ``offset + gain x counts``: the split finds the offset itself, and the score of the
    noisy input in detector units is the score of the counts times gain^2 (the same uPSNR against the same range)."""
    rng = np.random.default_rng(3)
    y, x = np.mgrid[:128, :128].astype(float)
    lam = 40 + 30 * (np.cos(2 * np.pi * y / 9) * np.cos(2 * np.pi * x / 11)) ** 2
    counts = rng.poisson(lam).astype(float)
    readings = 30000 + 8.0 * counts
    on_counts = wt.split_pair(counts, np.random.default_rng(0), scale=1.0)
    on_readings = wt.split_pair(readings, np.random.default_rng(0))
    signal = on_readings.target.mean() - 30000
    assert signal == pytest.approx(8.0 * on_counts.target.mean(), rel=0.05)  # the offset found, not counted
    # the fitted offset is known to a few counts (its error), which moves the variance by some per cent
    assert on_readings.variance.mean() == pytest.approx(64 * on_counts.variance.mean(), rel=0.2)
    # a score treating the readings as counts (no offset) would take the variance for about 8 x 30000 / 40 x larger
    assert (
        wt.split_pair(readings, np.random.default_rng(0), scale=1 / 8.0).variance.mean()
        > 10 * on_readings.variance.mean()
    )
