"""The test task on noisy-only data (dataset card has_clean: false): every method scored without clean truth,
movie halves for the stacks and binomial splits for the single frames, in test_metrics.json, results.md and the
local maps figure."""

from __future__ import annotations

import json

from noisy_images import write_micrographs
from support import params_file, run_here

from emdenoise.evaluation import without_truth as wt


def test_the_test_task_scores_noisy_only_data_without_truth(tmp_path, capsys):
    folder = write_micrographs(tmp_path / "in", size=96, frames=3, dose=40.0)
    p = params_file(
        tmp_path / "p.yaml",
        download={"source": f"micrographs:{folder}"},
        preprocess={"tile_size": 32, "val_fraction": 0.5},
        test={"models": ["none"], "baselines": ["gaussian", "median"]},
    )
    paths = {"raw_data_dir": tmp_path / "raw", "parameters_file": p, "log_dir": tmp_path / "logs"}
    assert run_here(capsys, "download", paths)[0] == 0
    assert run_here(capsys, "preprocess", {**paths, "data_dir": tmp_path / "data"})[0] == 0
    out = tmp_path / "out"
    out.mkdir()
    (out / "psnr_bar.png").write_bytes(b"an earlier run's, against clean images")
    test_paths = {"parameters_file": p, "log_dir": tmp_path / "logs", "data_dir": tmp_path / "data"}
    code, err = run_here(capsys, "test", {**test_paths, "model_dir": tmp_path / "m", "output_dir": out})
    assert code == 0, err
    metrics = json.loads((out / "test_metrics.json").read_text())
    section = metrics["without_truth"]
    assert set(section) <= {"movie", "split"} and section
    for kind, part in section.items():
        scores = {s.method: s for s in wt.from_summary(part)}
        assert set(scores) == {"noisy", "gaussian", "median"}
        assert all(s.kind == kind and s.n > 0 and s.data_range == metrics["data_range"] for s in scores.values())
        # at 40 counts per pixel on a smooth scene, smoothing beats the noisy input by far more than the errors
        noisy, gauss = scores["noisy"], scores["gaussian"]
        assert noisy.umse - gauss.umse > 3 * (gauss.umse_se + noisy.umse_se)
        assert gauss.upsnr_pooled > noisy.upsnr_pooled
        assert part["ranking"][-1] == "noisy"
        check = part["identity_check"]  # smooth scene, whole counts, drift undone: the assumptions hold
        assert check is not None and abs(check["z"]) < 4
        best = part["ranking"][0]
        assert set(part["margins"]) == set(scores) - {best} and part["margins"]["noisy"]["vs"] == best
        assert part["margins"]["noisy"]["delta_umse"] > 3 * part["margins"]["noisy"]["se"]
    assert metrics["methods"]["gaussian"]["params"]["tuned"] is False
    text = (out / "results.md").read_text()
    assert "Scores without truth" in text and "uPSNR" in text
    assert (out / "local_maps.png").stat().st_size > 1000
    assert not (out / "psnr_bar.png").exists()  # no stale figure beside the new metrics
    assert "uPSNR" in err
