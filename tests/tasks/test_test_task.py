"""The test task end to end: every output, its numbers checked against the data, the one-line input errors,
a saved model scored, and a rerun without figures removing the old comparison figure."""

import csv
import importlib.util
import json
import math
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
from noisy_images import make_data_dir, make_lattice_data_dir
from support import save_model, write_split

from emdenoise import cli
from emdenoise.classical import methods as baselines
from emdenoise.errors import EXIT_BAD_INPUT
from emdenoise.evaluation.metrics import psnr_per_image, ssim_per_image
from emdenoise.evaluation.records import TestMetrics
from emdenoise.layout import CARD

HAVE_BM3D = importlib.util.find_spec("bm3d") is not None


def write_params(path: Path, **test_section) -> Path:
    lines = ["test:"] + [f"  {k}: {json.dumps(v)}" for k, v in test_section.items()]
    path.write_text("\n".join(lines) + "\n")
    return path


def run_test_task(tmp_path: Path, data_dir: Path, **test_section) -> tuple[int, Path, Path]:
    """Run the test task in this process; return (exit code, output_dir, log file)."""
    params = write_params(tmp_path / "p.yaml", **test_section)
    out, logs = tmp_path / "out", tmp_path / "logs"
    (tmp_path / "models").mkdir(exist_ok=True)  # no trained model in it: the baselines only
    code = cli.main(
        [
            "test",
            f"--data_dir={data_dir}",
            f"--model_dir={tmp_path / 'models'}",
            f"--parameters_file={params}",
            f"--output_dir={out}",
            f"--log_dir={logs}",
        ]
    )
    return code, out, logs / "test.log"


# --------------------------------------------------------------------------------------------------------------
# The task, end to end
# --------------------------------------------------------------------------------------------------------------

REQUIRED_ROW_KEYS = {
    "psnr_mean",
    "psnr_std",
    "ssim_mean",
    "ssim_std",
    "mse_mean",
    "images_per_s",
    "seconds_per_image",
    "kind",
    "params",
}


def test_test_task_with_baselines_only_writes_every_output(tmp_path):
    data_dir = make_data_dir(tmp_path)
    code, out, log = run_test_task(
        tmp_path, data_dir, baselines=["gaussian", "median"], tune_images=3, figure_images=2, batch_size=4
    )
    assert code == 0, log.read_text()
    metrics = json.loads((out / "test_metrics.json").read_text())
    card = json.loads((data_dir / CARD).read_text())
    assert metrics["data_range"] == card["data_range"] and metrics["n_images"] == 6
    assert metrics["data_range_definition"] and metrics["device"] == "cpu"
    assert TestMetrics.from_json(metrics).to_json() == metrics  # the typed record reads the file back whole
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
        float(ssim_per_image(noisy, clean, r).mean()), abs=1e-4
    )
    assert metrics["methods"]["noisy"]["mse_mean"] == pytest.approx(float(np.mean((noisy - clean) ** 2)), rel=1e-4)
    assert metrics["methods"]["gaussian"]["psnr_mean"] > metrics["methods"]["noisy"]["psnr_mean"]

    bins = metrics["psnr_by_dose"]
    assert sum(b["n"] for b in bins["bins"]) == 6 and set(bins["methods"]) == set(metrics["methods"])

    with open(out / "per_image.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert list(rows[0]) == ["index", "dose", "method", "kind", "psnr", "ssim", "mse"] + [
        "band_psnr",
        "frc_px",
        "deviation",
        "inconsistent",
        "split",
    ]
    assert {r_["split"] for r_ in rows} == {"test"}
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
    assert sorted(p.name for p in out.iterdir()) == [
        "comparison.png",
        "per_image.csv",
        "psnr_bar.png",
        "results.md",
        "test_metrics.json",
    ]


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
    modelio.save_model(
        tmp_path / "models" / "sciml_ae" / "em_denoise_model.h5",
        net,
        {"model": "sciml_ae", "options": {}, "normalisation": card["normalisation"], "data_range": card["data_range"]},
    )
    code, out, log = run_test_task(
        tmp_path,
        data_dir,
        baselines=["gaussian"],
        batch_size=2,
        figure_images=1,
        device="cpu",
        precision="fp32",
        tune_images=2,
    )
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
    code, out, log = run_test_task(
        tmp_path,
        data_dir,
        baselines=["gaussian"],
        batch_size=2,
        figure_images=0,
        device="cpu",
        precision="fp32",
        tune_images=2,
    )
    assert code == 0, log.read_text()
    assert not (out / "comparison.png").exists() and (out / "psnr_bar.png").exists()


def test_structure_metrics_atoms_margins_and_the_generalisation_split(tmp_path):
    data_dir = make_lattice_data_dir(tmp_path / "data")
    save_model(tmp_path / "models", "sciml_ae")  # untrained: a deep row to state a margin for
    code, out, log = run_test_task(
        tmp_path, data_dir, baselines=["gaussian", "bragg"], device="cpu", precision="fp32", figure_images=0
    )
    assert code == 0, log.read_text()
    metrics = json.loads((out / "test_metrics.json").read_text())
    assert metrics["has_atoms"] and metrics["pixel_size_angstrom"] == pytest.approx(0.2)
    for part in (metrics, metrics["generalisation"]):
        rows = part["methods"]
        assert set(rows) == {"noisy", "gaussian", "bragg", "sciml_ae"}
        for row in rows.values():
            if row["frc_resolution_px"] is not None:  # None: not even the first ring resolved
                assert row["frc_resolution_angstrom"] == pytest.approx(row["frc_resolution_px"] * 0.2)
            assert 0 <= row["atoms"]["recall"] <= 1 and row["atoms"]["vacancies"] > 0
            assert "vacancy_precision" in row["atoms"]
            assert row["deviation_mean"] >= 0 and 0 <= row["inconsistent_fraction"] <= 1
        # the truth row: the clean images through the same detector, the ceiling of the atom scores
        truth = part["truth"]
        assert truth["atoms"] == rows["noisy"]["atoms"]["atoms"] and truth["recall"] > 0.5
        assert truth["f1"] >= max(row["atoms"]["f1"] for row in rows.values())
        strongest = part["strongest_classical"]
        assert strongest["name"] == max(["gaussian", "bragg"], key=lambda n: rows[n]["psnr_mean"])
        margin = strongest["margins"]["sciml_ae"]
        assert margin["psnr"] == pytest.approx(rows["sciml_ae"]["psnr_mean"] - rows[strongest["name"]]["psnr_mean"])
    assert metrics["generalisation"]["n_images"] == 2
    assert metrics["methods"]["bragg"]["frc_resolution_px"] is not None
    assert metrics["methods"]["bragg"]["atoms"]["f1"] > metrics["methods"]["noisy"]["atoms"]["f1"]
    with open(out / "per_image.csv", newline="") as fh:
        splits = [r["split"] for r in csv.DictReader(fh)]
    assert splits.count("test") == 3 * 4 and splits.count("generalisation") == 2 * 4
    report = (out / "results.md").read_text()
    assert f"Strongest classical row: **{metrics['strongest_classical']['name']}**" in report
    assert "## Generalisation (2 images" in report and "atom F1" in report
    assert report.count("| truth (clean image) | truth |") == 2  # the test split's table and the generalisation's
    assert metrics["format"] == "emdenoise-test/1"


# --------------------------------------------------------------------------------------------------------------
# Pretrained models of the zoo (test.zoo)
# --------------------------------------------------------------------------------------------------------------


def test_zoo_model_is_scored_as_a_pretrained_row(tmp_path, processed):
    code, out, log = run_test_task(
        tmp_path, processed, baselines=["gaussian"], zoo=["hrtem-ffdnet"], tune_images=3, figure_images=2, batch_size=4
    )
    assert code == 0, log.read_text()
    metrics = json.loads((out / "test_metrics.json").read_text())
    assert list(metrics["methods"]) == ["noisy", "gaussian", "zoo:hrtem-ffdnet"]
    row = metrics["methods"]["zoo:hrtem-ffdnet"]
    assert row["kind"] == "pretrained" and REQUIRED_ROW_KEYS <= set(row)
    assert all(math.isfinite(row[k]) for k in ("psnr_mean", "ssim_mean", "mse_mean")) and row["images_per_s"] > 0
    assert row["params"]["model"] == "ffdnet" and "not trained by this run" in row["params"]["source"]
    assert row["params"]["file"].endswith("zoo/hrtem-ffdnet/em_denoise_model.h5")
    assert set(metrics["strongest_classical"]["margins"]) == {"zoo:hrtem-ffdnet"}  # the margin, like a trained row
    results = (out / "results.md").read_text()
    assert "| zoo:hrtem-ffdnet | pretrained (zoo) |" in results and "not by it" in results
    with open(out / "per_image.csv", newline="") as fh:
        kinds = {r["method"]: r["kind"] for r in csv.DictReader(fh)}
    assert kinds == {"noisy": "input", "gaussian": "classical", "zoo:hrtem-ffdnet": "pretrained (zoo)"}
    assert {"psnr_bar.png", "comparison.png"} <= {p.name for p in out.iterdir()}


@pytest.mark.slow
@pytest.mark.extra("peer")
def test_the_peer_is_scored_as_an_external_row(tmp_path):
    data_dir = make_lattice_data_dir(tmp_path / "data")
    code, out, log = run_test_task(
        tmp_path, data_dir, baselines=["bragg"], peers=["tk_r_em_sfr_lrtem"], tune_images=3, figure_images=1
    )
    assert code == 0, log.read_text()
    metrics = json.loads((out / "test_metrics.json").read_text())
    assert list(metrics["methods"]) == ["noisy", "bragg", "tk_r_em_sfr_lrtem"]
    row = metrics["methods"]["tk_r_em_sfr_lrtem"]
    assert row["kind"] == "external" and REQUIRED_ROW_KEYS <= set(row) and row["images_per_s"] > 0
    assert row["params"]["network"] == "sfr_lrtem" and row["params"]["tuned_on_val_images"] == 3
    assert set(metrics["strongest_classical"]["margins"]) == {"tk_r_em_sfr_lrtem"}
    assert "tk_r_em_sfr_lrtem" in metrics["generalisation"]["methods"]
    assert "| tk_r_em_sfr_lrtem | external (peer) |" in (out / "results.md").read_text()


def test_a_peer_without_the_extra_exits_2_with_one_line(tmp_path, processed, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "tk_r_em", None)  # as where the optional peer extra is not installed
    code, out, _ = run_test_task(tmp_path, processed, baselines="none", peers=["tk_r_em_sfr_hrtem"])
    assert code == EXIT_BAD_INPUT and not out.exists()
    stderr = capsys.readouterr().err
    errors = [line for line in stderr.splitlines() if "error:" in line]
    assert len(errors) == 1 and "Traceback" not in stderr
    assert "test.peers" in errors[0] and "emdenoise[peer]" in errors[0]


def test_zoo_none_with_a_name_is_one_line(tmp_path, processed):
    code, out, log = run_test_task(tmp_path, processed, baselines="none", zoo=["none", "hrtem-ffdnet"])
    assert code == EXIT_BAD_INPUT and not (out / "test_metrics.json").exists()
    assert "test.zoo" in log.read_text() and "'none' alone" in log.read_text()
