"""The own-data report (emdenoise.evaluation.own_data): the affine-fit PSNR, the filters at their best setting,
the models as ``denoise`` applies them, the starting model added, and the hook for scores without truth."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from emdenoise.data.simulate import pairs
from emdenoise.errors import InputError
from emdenoise.evaluation import own_data


def _frames(n: int, size: int, dose: float) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """``n`` counted SrTiO3 frames under a flat beam and their truths (expected counts), one file each."""
    frames, truth = {}, {}
    for k in range(n):
        noisy, clean, _ = pairs.make_pair(
            k,
            image_size=size,
            dose=dose,
            beam_center_yx=(size / 2, size / 2),
            beam_sigma=1e6,
            material="srtio3",
            scene="lattice",
        )
        frames[f"f{k}.npy"] = np.rint(noisy * dose)[None].astype(np.float32)
        truth[f"f{k}.npy"] = (clean * dose)[None]
    return frames, truth


def test_affine_psnr_ignores_gain_and_offset_and_matches_a_hand_case():
    truth = np.random.default_rng(0).random((16, 16))
    assert own_data.affine_psnr(3.0 * truth - 2.0, truth) > 200  # exact up to rounding
    # an estimate uncorrelated with the truth: the best fit is the truth's mean, MSE 0.25, range 1 -> 6.02 dB
    hand = own_data.affine_psnr(np.array([[0.0, 1.0, 0.0, 1.0]]), np.array([[0.0, 0.0, 1.0, 1.0]]))
    assert hand == pytest.approx(10 * math.log10(4.0))


def test_with_truth_the_filters_take_their_best_setting_and_rows_are_ranked():
    frames, truth = _frames(2, 64, 30.0)
    rows = own_data.compare(frames, {}, truth, ["gaussian", "flat_gaussian"])
    assert [row.method for row in rows] == sorted(
        ["gaussian", "flat_gaussian"], key=lambda m: -next(r.psnr for r in rows if r.method == m)
    )
    gaussian = next(row for row in rows if row.method == "gaussian")
    sigma = float(gaussian.setting.split("=")[1].split()[0])
    for other in own_data.GRIDS["gaussian"]:  # the chosen sigma scores best of the grid
        out = {n: np.stack([own_data.classical.get("gaussian").apply(f, other) for f in s]) for n, s in frames.items()}
        assert np.mean(own_data._scores(out, truth)) <= gaussian.psnr + 1e-9
    assert gaussian.psnr > np.mean(own_data._scores(frames, truth))  # better than the noisy frames
    assert sigma in own_data.GRIDS["gaussian"] and len(gaussian.per_frame) == 2


def test_truth_that_does_not_match_the_frames_is_refused():
    frames, truth = _frames(1, 32, 30.0)
    with pytest.raises(InputError, match="truth: expected truth frames of shape"):
        own_data.compare(frames, {}, {"other.npy": truth["f0.npy"]}, ["gaussian"])


def test_without_truth_every_row_is_scored_from_the_counts_alone():
    frames, _ = _frames(2, 64, 30.0)
    rows = {row.method: row for row in own_data.compare(frames, {}, None, ["gaussian", "flat_gaussian"])}
    assert all(row.psnr is None for row in rows.values())
    scored = {name: row.without_truth["uPSNR_dB"] for name, row in rows.items()}
    assert all(math.isfinite(v) for v in scored.values())
    assert "uPSNR_dB" in own_data.table(list(rows.values())) and "no truth" in own_data.table(list(rows.values()))


def test_frames_that_cannot_be_scored_without_truth_say_so():
    frames = {"f.npy": np.random.default_rng(0).normal(0.0, 1.0, (1, 32, 32)).astype(np.float32)}  # not counts
    rows = own_data.compare(frames, {}, None, ["gaussian"])
    assert rows[0].without_truth == {} and "could not be scored" in own_data.table(rows)


def test_the_command_line_writes_the_table_and_adds_the_starting_model(tmp_path, capsys):
    frames, truth = _frames(1, 48, 30.0)
    for folder, data in (("in", frames), ("truth", truth)):
        (tmp_path / folder).mkdir()
        for name, stack in data.items():
            np.save(tmp_path / folder / name, stack[0])
    args = [str(tmp_path / "in"), "--truth", str(tmp_path / "truth"), "--baselines", "gaussian"]
    code = own_data.main([*args, "--model", "zoo=zoo:hrtem-ffdnet", "--out", str(tmp_path / "c.json")])
    assert code == 0
    rows = json.loads((tmp_path / "c.json").read_text())["rows"]
    assert {row["method"] for row in rows} == {"zoo", "gaussian"}
    assert "| zoo | zoo:hrtem-ffdnet |" in capsys.readouterr().out
    assert own_data.main([*args, "--model", "zoo:no-such"]) == 2
    assert "zoo:no-such" in capsys.readouterr().err
