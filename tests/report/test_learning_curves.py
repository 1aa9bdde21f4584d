"""Learning curves from the train task's metrics (emdenoise.report.learning_curves)."""

from __future__ import annotations

import json

import pytest

from emdenoise.report import learning_curves


@pytest.mark.slow  # a short training and matplotlib: near the fast subset's 5 s of CPU
def test_curves_follow_the_train_record_and_draw(tmp_path, data_dir, train_cli, capsys):
    code, _, out = train_cli(tmp_path, data_dir, epochs=2, patch_size=16)
    assert code == 0
    metrics = out / "train_metrics.json"
    record = json.loads(metrics.read_text())["models"]["sciml_ae"]
    (curve,) = learning_curves.curves(metrics, "tiny")
    assert curve.label == "tiny: sciml_ae" and curve.steps == [4, 8]
    seconds = [row["seconds"] for row in record["epochs"]]
    assert curve.hours[1] * 3600 == pytest.approx(seconds[0] + seconds[1]) and curve.hours[0] < curve.hours[1]
    assert curve.values["val_band_psnr"] == [row["val_band_psnr"] for row in record["epochs"]]
    figure = tmp_path / "curves.png"
    assert learning_curves.main([str(figure), f"tiny={metrics}", str(metrics)]) == 0
    assert figure.read_bytes()[:4] == b"\x89PNG" and "2 models" in capsys.readouterr().out


def test_a_file_that_is_not_train_metrics_is_one_line(tmp_path, capsys):
    bad = tmp_path / "test_metrics.json"
    bad.write_text(json.dumps({"methods": {}}))
    assert learning_curves.main([str(tmp_path / "x.png"), str(bad)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "test_metrics.json: models: expected" in err
    assert not (tmp_path / "x.png").exists()


def _record(path, epochs):
    path.write_text(json.dumps({"models": {"dncnn": {"epochs": epochs}}}))
    return path


def test_a_continued_run_goes_on_from_where_its_first_leg_ended(tmp_path, capsys):
    first = _record(
        tmp_path / "first.json",
        [{"steps": 240, "seconds": 360.0, "val_psnr": 27.0}, {"steps": 480, "seconds": 360.0, "val_psnr": 28.0}],
    )
    more = _record(tmp_path / "more.json", [{"steps": 240, "seconds": 720.0, "val_psnr": 28.5, "val_band_psnr": 29.5}])
    (curve,) = learning_curves.joined([learning_curves.curves(first, "x"), learning_curves.curves(more, "x")])
    assert curve.label == "x: dncnn" and curve.steps == [240, 480, 720]
    assert curve.hours == pytest.approx([0.1, 0.2, 0.4])
    assert curve.values == {"val_psnr": [27.0, 28.0, 28.5], "val_band_psnr": [None, None, 29.5]}
    figure = tmp_path / "curves.png"
    assert learning_curves.main([str(figure), f"x={first}+{more}", str(first)]) == 0
    assert figure.read_bytes()[:4] == b"\x89PNG" and "2 models" in capsys.readouterr().out
