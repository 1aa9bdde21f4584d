"""The study task: the ``ints`` parameter kind of its train sizes, and a tiny study run end to end (the
analysis helpers and the plan are tested in tests/study/test_study_run.py).

The data are made by the synthetic generator (24 train and 8 test pairs of 32x32, with dose) and the real
preprocess task; the study runs sciml_ae and a 3-layer DnCNN on 6 and 12 training pairs for one epoch, with
the gaussian and median baselines.
"""

from __future__ import annotations

import json
import math
import shutil
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from matplotlib import image as mpimg
from noisy_images import lattice_split
from support import write_split

from emdenoise import cli
from emdenoise.config import params
from emdenoise.data.simulate import writer
from emdenoise.errors import EXIT_BAD_INPUT, InputError, RuntimeFailure
from emdenoise.evaluation import run as evaluation
from emdenoise.study import report
from emdenoise.study import run as engine
from emdenoise.study import summary as analysis

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
SIZES = [6, 12]
MODELS = ["sciml_ae", "dncnn"]
STUDY = {
    "models": MODELS,
    "train_sizes": SIZES,
    "epochs": 1,
    "batch_size": 4,
    "lr": 1e-3,
    "device": "cpu",
    "seed": 0,
    "baselines": ["gaussian", "median"],
    "dose_bins": 2,
}


@pytest.fixture(autouse=True)
def _quiet(monkeypatch):
    monkeypatch.setenv("EMDENOISE_PROGRESS", "0")
    torch.set_num_threads(1)


# --------------------------------------------------------------------------------------------------------------
# The ints kind of the parameters schema
# --------------------------------------------------------------------------------------------------------------


def test_ints_kind_accepts_lists_of_distinct_integers():
    out = params.validate({"study": {"train_sizes": [500, 125, 2.0]}})
    assert out.study.train_sizes == [500, 125, 2]
    assert all(type(v) is int for v in out.study.train_sizes)
    assert params.defaults().study.train_sizes == list(params.schema()["study"]["train_sizes"].default)
    assert "list of distinct integers >= 1" in params.reference_markdown()


@pytest.mark.parametrize("value", [[], [0], [125, -1], "125", 125, [True], [1.5], [125, 125], [None], {"a": 1}])
def test_ints_kind_rejects_anything_else_in_one_line(value):
    with pytest.raises(InputError) as err:
        params.validate({"study": {"train_sizes": value}}, where="p.yaml")
    message = err.value.message
    assert message.startswith("p.yaml: study.train_sizes: expected a list of distinct integers >= 1")
    assert "\n" not in message


def test_ints_kind_from_the_command_line(tmp_path):
    out = params.load(None, ["study.train_sizes=[10, 20]", "study.models=dncnn"])
    assert out.study.train_sizes == [10, 20] and out.study.models == ["dncnn"]
    with pytest.raises(InputError, match="study.train_sizes"):
        params.load(None, ["study.train_sizes=ten"])


# --------------------------------------------------------------------------------------------------------------
# A tiny study end to end
# --------------------------------------------------------------------------------------------------------------


def write_params(path: Path, study: dict, **sections) -> Path:
    doc = {
        "train": {"dncnn_depth": 3, "precision": "fp32", "lr_schedule": "constant"},
        "test": {"tune_images": 3},
        "study": study,
        **sections,
    }
    path.write_text(yaml.safe_dump(doc))
    return path


def run_study(tmp: Path, data_dir: Path, out: Path, study: dict) -> tuple[int, str]:
    """Run the study task in this process; return (exit code, this run's log text)."""
    log_file = tmp / "logs" / "study.log"
    before = log_file.read_text() if log_file.exists() else ""
    code = cli.main(
        [
            "study",
            f"--data_dir={data_dir}",
            f"--parameters_file={write_params(tmp / 'p.yaml', study)}",
            f"--output_dir={out}",
            f"--log_dir={tmp / 'logs'}",
        ]
    )
    return code, log_file.read_text()[len(before) :]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("study-data")
    settings = writer.GeneratorSettings.of(
        seed=0, train_images=24, test_images=8, image_size=32, dose_min=2.0, dose_max=200.0
    )
    writer.write_dataset(root / "raw", settings, workers=1)
    p = root / "pre.yaml"
    p.write_text(yaml.safe_dump({"preprocess": {"val_fraction": 0.25}}))
    assert (
        cli.main(
            [
                "preprocess",
                f"--raw_data_dir={root / 'raw'}",
                f"--data_dir={root / 'processed'}",
                f"--parameters_file={p}",
                f"--log_dir={root / 'logs'}",
            ]
        )
        == 0
    )
    return root / "processed"


@pytest.fixture(scope="module")
def finished(tmp_path_factory, data_dir) -> tuple[Path, Path, str]:
    tmp = tmp_path_factory.mktemp("study")
    out = tmp / "study"
    code, log = run_study(tmp, data_dir, out, STUDY)
    assert code == 0, log
    return tmp, out, log


def test_study_writes_every_output(finished):
    _, out, log = finished
    summary = json.loads((out / "study.json").read_text())
    assert summary["format"] == analysis.STUDY_FORMAT
    record = analysis.StudySummary.from_json(summary)  # the typed record reads it back whole
    assert record.to_json() == summary and record.models["dncnn"].largest_size == max(SIZES)
    assert summary["train_sizes"] == SIZES and list(summary["models"]) == MODELS
    assert {c["cell"] for c in summary["cells"]} == {f"{m}-{s}" for m in MODELS for s in SIZES}
    assert set(summary["baselines"]) == {"noisy", "gaussian", "median"}
    assert summary["data"]["n_test"] == 8 and summary["data"]["has_dose"] and summary["data"]["n_train_available"] == 18
    assert len(summary["dose_bins"]["bins"]) == 2 and summary["failed_cells"] == []
    for cell in summary["cells"]:
        test = cell["test"]
        for key in ("psnr_mean", "psnr_std", "ssim_mean", "ssim_std", "mse_mean", "images_per_s"):
            assert isinstance(test[key], float) and math.isfinite(test[key]), (cell["cell"], key)
        assert len(test["psnr_by_dose"]) == 2
        assert cell["train"]["n_train"] == cell["train_size"] and len(cell["train_epochs"]) == 1
        # each cell trained into its own model dir, as a real HDF5 model file
        model_file = out / "cells" / cell["cell"] / cell["model"] / "em_denoise_model.h5"
        assert model_file.read_bytes()[512:520] == b"\x89HDF\r\n\x1a\n"  # after the user block with its seal
        # the summary's mean is the mean of the per-image values kept in the cell's result
        result = json.loads((out / "cells" / cell["cell"] / "result.json").read_text())
        assert result["status"] == "done" and len(result["per_image"]["psnr"]) == 8
        assert test["psnr_mean"] == pytest.approx(np.mean(result["per_image"]["psnr"]), rel=1e-9)
    for info in summary["models"].values():
        assert info["parameters"] > 0 and info["images_per_s"] > 0
        assert set(info["psnr_by_size"]) == {str(s) for s in SIZES}
    # the smallest winning size is the helper's answer on the numbers in study.json
    best = summary["best_baseline"]
    assert best["psnr_mean"] == max(summary["baselines"][n]["psnr_mean"] for n in ("gaussian", "median"))
    for info in summary["models"].values():
        expected = analysis.smallest_winning_size(
            {int(s): v for s, v in info["psnr_by_size"].items()}, best["psnr_mean"]
        )
        assert info["smallest_winning_size"] == expected
    assert "cell 1/4 sciml_ae-6: training" in log and "cell 4/4 dncnn-12" in log


def test_report_has_the_tables(finished):
    _, out, _ = finished
    summary = json.loads((out / "study.json").read_text())
    text = (out / "report.md").read_text()
    for heading in (
        "## Fidelity: mean test PSNR",
        "## Training data needed to beat the best classical baseline",
        "## Speed",
        "## Mean PSNR (dB) by dose",
    ):
        assert heading in text
    assert "| model | 6 | 12 |" in text
    lines = text.splitlines()
    for name, info in summary["models"].items():
        psnr6 = f"{info['psnr_by_size']['6']:.2f}"
        assert any(line.startswith(f"| {name} |") and psnr6 in line for line in lines)
        win = info["smallest_winning_size"]
        want = str(win) if win is not None else report.NEVER
        assert any(line.startswith(f"| {name} | {want} |") for line in lines), name
    for name in ("gaussian", "median", "noisy"):
        assert any(line.startswith(f"| {name} |") for line in lines)
    for file in report.FIGURES.values():
        assert f"]({file})" in text


def test_figures_are_valid_pngs(finished):
    _, out, _ = finished
    for file in report.FIGURES.values():
        path = out / file
        assert path.read_bytes()[:8] == PNG_SIGNATURE
        pixels = mpimg.imread(path)
        assert pixels.ndim == 3 and pixels.shape[0] > 100 and pixels.shape[1] > 100
        assert pixels[..., :3].std() > 0.01  # something is drawn
    assert not list(out.glob(".*.tmp"))  # atomic writes leave no temporary files


def test_rerun_keeps_finished_cells_and_recomputes_a_deleted_one(finished, data_dir):
    tmp, out, _ = finished
    results = {c: out / "cells" / c / "result.json" for c in ("sciml_ae-6", "sciml_ae-12", "dncnn-6", "dncnn-12")}
    stamps = {c: p.stat().st_mtime_ns for c, p in results.items()}
    baseline_stamp = (out / "baselines" / "result.json").stat().st_mtime_ns
    old = json.loads((out / "study.json").read_text())
    time.sleep(0.01)
    code, log = run_study(tmp, data_dir, out, STUDY)
    assert code == 0
    assert {c: p.stat().st_mtime_ns for c, p in results.items()} == stamps
    assert (out / "baselines" / "result.json").stat().st_mtime_ns == baseline_stamp
    assert log.count("kept from a previous run") == 5 and "training on" not in log
    new = json.loads((out / "study.json").read_text())
    assert new["models"] == old["models"]

    # a deleted cell is trained and evaluated again; the others stay
    shutil.rmtree(out / "cells" / "dncnn-6")
    code, log = run_study(tmp, data_dir, out, STUDY)
    assert code == 0
    assert "cell 2/4 dncnn-6: training on 6 pairs for 1 epochs" in log
    assert log.count("kept from a previous run") == 4
    assert results["dncnn-6"].is_file()
    assert {c: p.stat().st_mtime_ns for c, p in results.items() if c != "dncnn-6"} == {
        c: s for c, s in stamps.items() if c != "dncnn-6"
    }
    # same seed, same data, same configuration: the recomputed cell scores the same
    again = json.loads((out / "study.json").read_text())
    assert again["models"]["dncnn"]["psnr_by_size"]["6"] == pytest.approx(
        old["models"]["dncnn"]["psnr_by_size"]["6"], abs=1e-4
    )


def test_a_changed_configuration_recomputes_the_cell(finished, data_dir, tmp_path):
    """A result of another configuration is not kept (here only the evaluation changed: fewer test images,
    so the train task's finished checkpoint is reused and only the test is redone)."""
    tmp, out, _ = finished
    copy = tmp_path / "study"
    shutil.copytree(out, copy)
    code, log = run_study(
        tmp, data_dir, copy, {**STUDY, "models": ["sciml_ae"], "train_sizes": [6], "max_test_images": 4}
    )
    assert code == 0, log
    assert "computed with another configuration" in log and "already trained for 1 epochs" in log
    summary = json.loads((copy / "study.json").read_text())
    assert summary["data"]["n_test"] == 4 and [c["cell"] for c in summary["cells"]] == ["sciml_ae-6"]


@pytest.mark.parametrize(
    "study, field",
    [
        ({"train_sizes": [0]}, "study.train_sizes"),
        ({"train_sizes": [6, 19]}, "study.train_sizes"),  # 18 training pairs in the data
        ({"models": ["unet", "dncn"]}, "study.models"),
        ({"epochs": 0}, "study.epochs"),
        ({"patch_size": 64}, "study.patch_size"),  # larger than the 32-pixel images
        ({"baselines": ["none", "tv"]}, "study.baselines"),
        ({"budget": 3}, "study.budget"),  # unknown key
    ],
)
def test_bad_study_parameters_exit_2_with_one_line(tmp_path, data_dir, capsys, study, field):
    code, _ = run_study(tmp_path, data_dir, tmp_path / "out", {**STUDY, **study})
    err = capsys.readouterr().err.strip().splitlines()
    assert code == EXIT_BAD_INPUT
    assert err[-1].startswith("[study] error: ") and field in err[-1]
    assert not (tmp_path / "out" / "cells").exists()  # nothing trained


def test_a_failed_cell_is_reported_and_retried(tmp_path, data_dir, capsys, monkeypatch):
    """A cell that fails at run time (here: the out-of-memory failure of the network method in the timed loop,
    raised for one cell) does not stop the others; the run ends with exit 1 naming it, the report lists it, and a rerun
    retries it and keeps the rest."""
    real_run_method = evaluation.run_method

    def run_method(method, *args, **kwargs):
        if method.name == "dncnn-6":
            raise RuntimeFailure("dncnn-6: out of GPU memory at test.batch_size=4; lower test.batch_size")
        return real_run_method(method, *args, **kwargs)

    monkeypatch.setattr(evaluation, "run_method", run_method)
    study = {**STUDY, "train_sizes": [6]}
    code, log = run_study(tmp_path, data_dir, tmp_path / "out", study)
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1
    assert err[-1].startswith("[study] error: 1 of 2 cells failed (dncnn-6)")
    summary = json.loads((tmp_path / "out" / "study.json").read_text())
    assert [c["cell"] for c in summary["failed_cells"]] == ["dncnn-6"]
    assert [c["cell"] for c in summary["cells"]] == ["sciml_ae-6"]
    assert "**Failed cells**" in (tmp_path / "out" / "report.md").read_text()
    result = json.loads((tmp_path / "out" / "cells" / "dncnn-6" / "result.json").read_text())
    assert result["status"] == "failed" and "out of GPU memory" in result["error"]

    monkeypatch.setattr(evaluation, "run_method", real_run_method)
    code, log = run_study(tmp_path, data_dir, tmp_path / "out", study)
    assert code == 0
    assert "cell 1/2 sciml_ae-6: kept from a previous run" in log
    assert "dncnn: already trained for 1 epochs" in log  # the checkpoint is reused, only the test is redone
    summary = json.loads((tmp_path / "out" / "study.json").read_text())
    assert summary["failed_cells"] == [] and len(summary["cells"]) == 2


def test_an_interrupted_study_leaves_partial_results_and_resumes(tmp_path, data_dir, monkeypatch):
    """Ctrl-C during the third cell: study.json and report.md already hold the two finished cells; the same
    command again keeps them and does the rest."""
    real_run_cell = engine.run_cell

    def run_cell(cell, *args):
        if cell.name == "sciml_ae-12":
            raise KeyboardInterrupt
        return real_run_cell(cell, *args)

    monkeypatch.setattr(engine, "run_cell", run_cell)
    code, _ = run_study(tmp_path, data_dir, tmp_path / "out", STUDY)
    assert code == 130
    summary = json.loads((tmp_path / "out" / "study.json").read_text())
    assert [c["cell"] for c in summary["cells"]] == ["sciml_ae-6", "dncnn-6"]
    assert summary["pending_cells"] == ["sciml_ae-12", "dncnn-12"]
    assert "**In progress**: 2 cells finished, 2 to go" in (tmp_path / "out" / "report.md").read_text()

    monkeypatch.setattr(engine, "run_cell", real_run_cell)
    code, log = run_study(tmp_path, data_dir, tmp_path / "out", STUDY)
    assert code == 0 and log.count("kept from a previous run") == 3  # the baselines and two cells
    summary = json.loads((tmp_path / "out" / "study.json").read_text())
    assert len(summary["cells"]) == 4 and summary["pending_cells"] == []
    assert "In progress" not in (tmp_path / "out" / "report.md").read_text()


def test_the_study_refuses_torchrun(tmp_path, data_dir, capsys, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    code, _ = run_study(tmp_path, data_dir, tmp_path / "out", STUDY)
    assert code == EXIT_BAD_INPUT and "run it without torchrun" in capsys.readouterr().err


def test_study_needs_processed_data(tmp_path, capsys):
    code, _ = run_study(tmp_path, tmp_path / "missing", tmp_path / "out", STUDY)
    assert code == EXIT_BAD_INPUT
    err = capsys.readouterr().err
    assert f"{tmp_path / 'missing'}: data_dir: " in err and "run the preprocess task first" in err


def test_cli_knows_the_study_task():
    spec = cli.TASKS["study"]
    assert spec.inputs == ("data_dir", "parameters_file") and spec.outputs == ("output_dir", "log_dir")
    assert spec.default_path("output_dir") == "study"
    mlcube = yaml.safe_load((Path(__file__).resolve().parents[2] / "mlcube.yaml").read_text())
    task = mlcube["tasks"]["study"]["parameters"]
    assert list(task["inputs"]) == list(spec.inputs) and list(task["outputs"]) == list(spec.outputs)
    assert task["outputs"]["output_dir"]["default"] == "study"


@pytest.mark.parametrize("name", ["study-small", "study"])
def test_shipped_study_parameters_validate(name):
    path = Path(__file__).resolve().parents[2] / "workspace" / "parameters" / f"{name}.parameters.yaml"
    p = params.load(path)
    sizes = p.study.train_sizes
    assert sizes == sorted(sizes) and len(sizes) >= 2
    if p.download.source == "synthetic":  # the sizes fit the training pairs left after the val split
        n = p.download.train_images
        n_train = n - min(max(math.floor(p.preprocess.val_fraction * n + 0.5), 1), n - 1)
        assert max(sizes) <= n_train


@pytest.mark.slow
def test_the_generalisation_split_and_the_structure_metrics_enter_the_study(tmp_path, data_dir):
    data = tmp_path / "data"
    shutil.copytree(data_dir, data)
    noisy, clean, dose, atoms = lattice_split(np.random.default_rng(0), 2, 32, 6.0, "square", 40.0, 0.2)
    write_split(data / "generalisation.h5", noisy, clean, dose, atoms)
    study = {**STUDY, "models": ["dncnn"], "train_sizes": [6], "baselines": ["gaussian", "flat_gaussian"]}
    code, log = run_study(tmp_path, data, tmp_path / "study", study)
    assert code == 0, log
    summary = json.loads((tmp_path / "study" / "study.json").read_text())
    gen = summary["generalisation"]
    assert (
        gen["n_images"] == 2
        and gen["has_atoms"]
        and set(gen["methods"])
        == {
            "noisy",
            "gaussian",
            "flat_gaussian",
            "dncnn",
        }
    )
    assert gen["methods"]["dncnn"]["atoms"]["atoms"] > 0
    strongest = summary["at_largest_size"]["strongest_classical"]
    assert strongest["name"] in ("gaussian", "flat_gaussian") and "dncnn" in strongest["margins"]
    assert "band_psnr_mean" in summary["cells"][0]["test"] and "generalisation" in summary["cells"][0]
    text = (tmp_path / "study" / "report.md").read_text()
    assert f"Strongest classical row: **{strongest['name']}**" in text and "## Generalisation (2 images" in text
    # the truth row of each split: the clean images through the same detector, the ceiling, in both tables
    for part in (summary["at_largest_size"], gen):
        assert part["truth"]["atoms"] == part["methods"]["dncnn"]["atoms"]["atoms"] and part["truth"]["f1"] > 0
    assert text.count("| truth (clean image) | truth |") == 2
