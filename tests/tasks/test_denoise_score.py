"""``denoise --score``: the method scored without clean truth beside the noisy input and two classical filters,
in the output's sidecar and the log, the consistency maps drawn beside the output and never taken for an input
on the next run; the Python API's ``emdenoise.score`` on the same frames."""

from __future__ import annotations

import json

import numpy as np
import pytest
from noisy_images import write_micrographs

import emdenoise
from emdenoise import cli
from emdenoise.errors import InputError
from emdenoise.evaluation import without_truth as wt


def test_denoise_score_writes_the_scores_and_the_local_maps(tmp_path, capsys):
    folder = write_micrographs(tmp_path / "in", size=96, frames=3, dose=40.0)
    code = cli.main(["denoise", "--input", str(folder), "--method", "gaussian", "--score", f"--log_dir={tmp_path}"])
    err = capsys.readouterr().err
    assert code == 0, err
    for name, kind in (("stack", "movie"), ("single", "split")):
        out = folder / (f"{name}_denoised.tif" if name == "stack" else f"{name}_denoised.npy")
        record = json.loads(out.with_name(out.name + ".json").read_text())
        section = record["scores_without_truth"]
        assert section["kind"] == kind and set(section["methods"]) == {"gaussian", "noisy", "wiener"}
        scores = {s.method: s for s in wt.from_summary(section)}
        assert scores["gaussian"].umse < scores["noisy"].umse  # 40 counts per pixel of a smooth scene
        assert section["margins"]["noisy"]["delta_umse"] > 0
        assert (folder / (out.name + ".local_maps.png")).stat().st_size > 1000
    assert "scores without truth" in err and "uPSNR" in err
    # a second run beside the inputs takes neither the outputs nor the figures for inputs
    code = cli.main(["denoise", "--input", str(folder), "--method", "gaussian", f"--log_dir={tmp_path}"])
    assert code == 0 and "local_maps" not in capsys.readouterr().err


def test_the_api_scores_a_movie_and_single_frames(tmp_path):
    folder = write_micrographs(tmp_path / "in", size=96, frames=3, dose=40.0)
    movie = emdenoise.score(folder / "stack.tif", ["noisy", "gaussian"])
    assert movie.kind == "movie" and [s.method for s in movie.scores] == ["gaussian", "noisy"]
    split = emdenoise.score(np.load(folder / "single.npy"), "gaussian", kind="split", data_range=2.0)
    assert split.kind == "split" and split.data_range == 2.0 and split.scores[0].upsnr_pooled is not None
    assert "| gaussian | split |" in split.markdown() and split.to_json()["ranking"] == ["gaussian"]


def test_frames_that_cannot_be_scored_are_a_one_line_error():
    with pytest.raises(InputError, match="array: kind: .*counts"):
        emdenoise.score(-np.ones((32, 32)), "gaussian")
    with pytest.raises(InputError, match="2 target frames"):
        emdenoise.score(np.ones((2, 32, 32)), "gaussian", kind="movie", variance="frames", align=False)
