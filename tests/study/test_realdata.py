"""The "Real data" page's machinery (emdenoise.study.realdata, realdata_page) on synthetic frames: the brute-force
drift, one method run, timed and checked, and the page, figure and results.json it writes (the real files go
through it in run/realdata.sh; tests/io and tests/inference cover them)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from emdenoise.study import realdata, realdata_page


def lattice(size: int = 96, shift=(0, 0), seed: int = 0) -> np.ndarray:
    """Poisson counts of a square lattice of Gaussian columns, the field moved by ``shift`` (dy, dx)."""
    y, x = np.mgrid[:size, :size].astype(float)
    y, x = y + shift[0], x + shift[1]
    clean = 5 + 20 * (np.cos(np.pi * y / 11) * np.cos(np.pi * x / 13)) ** 2 + 0.03 * x
    return np.random.default_rng(seed).poisson(clean).astype(np.float32)


def test_the_brute_force_drift_finds_a_whole_pixel_shift():
    first, moved = lattice(), lattice(shift=(-3, 5), seed=1)  # moved[y + dy, x + dx] shows first[y, x]
    assert realdata.best_whole_drift(first, moved, reach=6) == (3, -5)


@pytest.fixture
def sample() -> realdata.Sample:
    spec = realdata.Spec(
        "synthetic", "Synthetic lattice", "realdata", "synthetic/lattice.tif", "96x96", "this test", publish=True
    )
    frame = lattice()
    # at 0.3 A/px the gaussian filter's default is 1 px, well below the lattice's period
    return realdata.Sample(spec, Path(spec.name), (96, 96), "float32", 0.3, "test", frame, reference=lattice(seed=2))


def test_a_method_on_a_sample_is_timed_checked_and_compared_with_the_reference(sample):
    outcome = realdata.run_method(sample, "gaussian")
    assert outcome.image.shape == (96, 96) and outcome.seconds > 0
    assert outcome.check["deviance_ratio"] is not None and "inconsistent" in outcome.check
    # smoothing brings the estimate nearer the reference's signal than the noisy frame is
    assert outcome.frame_correlation > realdata.correlation(sample.region, sample.reference)


def test_the_page_names_every_method_and_writes_a_gray_figure(sample, tmp_path):
    sample.outcomes = [realdata.run_method(sample, m) for m in ("gaussian", "median")]
    sample.outcomes.append(realdata.Outcome("bm3d", note="not run here: pip install emdenoise[bm3d]"))
    page = tmp_path / "docs" / "real-data.md"
    realdata_page.write([sample], tmp_path / "docs" / "real-data", page, "bash run/realdata.sh")
    text = page.read_text()
    for method in ("gaussian", "median", "bm3d"):
        assert f"| `{method}` |" in text
    assert "not run here" in text and "uPSNR without truth" in text
    assert "](real-data/synthetic.png)" in text and "`bash run/realdata.sh`" in text
    with Image.open(tmp_path / "docs" / "real-data" / "synthetic.png") as png:
        assert png.mode == "L"
    numbers = json.loads((tmp_path / "docs" / "real-data" / "results.json").read_text())
    gaussian = numbers["files"]["synthetic"]["methods"]["gaussian"]
    assert gaussian["check"] == sample.outcomes[0].check and gaussian["seconds"] > 0


def test_a_file_we_may_not_publish_gets_no_figure_on_the_page(sample, tmp_path):
    sample.spec = dataclasses.replace(sample.spec, publish=False)
    sample.outcomes = [realdata.run_method(sample, "gaussian")]
    page = tmp_path / "docs" / "real-data.md"
    realdata_page.write([sample], tmp_path / "docs" / "real-data", page, "bash run/realdata.sh")
    text = page.read_text()
    assert "synthetic.png)" not in text and "does not let us publish pictures of it" in text
    assert not (tmp_path / "docs" / "real-data" / "synthetic.png").exists()
    assert (tmp_path / "docs" / "real-data" / realdata_page.LOCAL / "synthetic.png").is_file()


def test_a_single_frame_is_scored_without_truth_by_a_split_of_its_counts(sample):
    sample.outcomes = [realdata.run_method(sample, m) for m in ("gaussian", realdata.ZOO_RESCALED)]
    realdata.score_sample(sample)
    gaussian, rescaled = sample.outcomes
    assert sample.score_kind == "split" and sample.score_check["ratio"] is not None
    # the lattice's counts are Poisson: the fitted gain is 1 within its error, and smoothing beats the noisy frame
    assert abs(sample.detector["gain"] - 1.0) < 4 * sample.detector["gain_error"] + 0.1
    assert gaussian.score["upsnr"] > sample.noisy_score[0]
    assert rescaled.score == {}  # no method denoise names: not scored
    text = "\n".join(realdata_page.method_table(sample))
    assert f"{gaussian.score['upsnr']:.2f} ±" in text


def test_each_file_gets_the_stem_model_of_its_imaging_mode_first_in_the_figure(sample):
    abf = dataclasses.replace(sample.spec, imaging="abf")
    assert realdata.methods(abf)[:2] == [realdata.STEM_ZOO["abf"], realdata.ZOO]
    assert realdata.STEM_ZOO["haadf"] not in realdata.methods(abf)
    assert set(realdata.STEM_ZOO.values()) <= set(realdata.methods())  # warm-up: every model
    sample.outcomes = [realdata.run_method(sample, m) for m in ("gaussian", realdata.ZOO, realdata.STEM_ZOO["haadf"])]
    assert [o.method for o in realdata_page._shown(sample)] == [realdata.STEM_ZOO["haadf"], realdata.ZOO, "gaussian"]
    stem = sample.outcomes[2]  # as denoise applies it: back in the counts' units, at their level
    assert float(stem.image.mean()) == pytest.approx(float(sample.region.mean()), rel=0.05)


def test_a_row_below_the_noise_estimates_reach_is_named_the_best_not_left_out(sample):
    """A uMSE <= 0 has no uPSNR; when it is the lowest of all (every margin is taken against it) the page says it
    is the best rather than showing a dash and naming the best of the rest."""
    image = sample.region
    best = realdata.Outcome("zoo:abf-unet", image, 0.1, score={"upsnr": None, "umse": -5.0, "margin": None})
    margin = {"vs": "zoo:abf-unet", "delta_umse": 900.0, "se": 50.0}
    other = realdata.Outcome("tv", image, 0.1, score={"upsnr": 30.0, "upsnr_se": 0.1, "umse": 895.0, "margin": margin})
    sample.outcomes, sample.noisy_score, sample.score_kind = [best, other], [20.0, 0.1], "movie"
    assert "| uMSE ≤ 0: the lowest |" in "\n".join(realdata_page.method_table(sample))
    (line,) = realdata_page._score_lines([sample])
    assert "best `zoo:abf-unet` (its uMSE ≤ 0" in line and "`tv`, 900 ± 50 higher" in line


def _scored(sample: realdata.Sample, upsnr: dict[str, float | None], lowest: str) -> realdata.Sample:
    """``sample`` with outcomes of these uPSNRs (None: uMSE <= 0), each margin taken against ``lowest``."""
    outcomes = [
        realdata.Outcome(m, score={"upsnr": v, "margin": None if m == lowest else {"vs": lowest, "delta_umse": 1.0}})
        for m, v in upsnr.items()
    ]
    return dataclasses.replace(sample, outcomes=outcomes, noisy_score=(20.0, 0.1))


def test_the_stem_verdict_names_the_best_filter_and_the_margin(sample):
    """Behind: the dB to the best filter (the HRTEM zoo row is no filter); ahead: the lowest uMSE of every row."""
    behind = _scored(sample, {"zoo:haadf-unet": 25.0, "zoo:hrtem-unet": 30.0, "tv": 26.5, "gaussian": 26.0}, "tv")
    ahead = _scored(
        dataclasses.replace(sample, spec=dataclasses.replace(sample.spec, key="other")),
        {"zoo:haadf-unet": None, "tv": 24.0},
        "zoo:haadf-unet",
    )
    verdict = realdata_page._stem_verdict([behind, ahead])
    assert verdict == "Ahead of every filter on other; behind the best filter on synthetic by 1.50 dB (`tv`)."
    said = realdata_page._zoo_against_noisy([behind, ahead], None)
    assert said == (
        "synthetic 25.00 dB (noisy 20.00, best filter `tv` 26.50); "
        "other the lowest uMSE of every row (≤ 0: no uPSNR; noisy 20.00)"
    )
