"""The study engine: the analysis helpers on made-up numbers, the plan of cells, a cell's training section,
and the train split read once with each cell taking its first N pairs."""

import dataclasses
import logging
import math

import numpy as np
import torch
from support import write_data_dir

from emdenoise import models
from emdenoise.config import params
from emdenoise.data.splits import load_split
from emdenoise.study import plan as engine
from emdenoise.study import summary as analysis
from emdenoise.training import loop as training

# --------------------------------------------------------------------------------------------------------------
# Analysis helpers on made-up numbers
# --------------------------------------------------------------------------------------------------------------


def test_best_baseline_is_the_best_classical_row():
    methods = {
        "noisy": {"kind": "input", "psnr_mean": 40.0},  # the input never counts
        "gaussian": {"kind": "classical", "psnr_mean": 22.5},
        "nlm": {"kind": "classical", "psnr_mean": 24.25},
        "tv": {"kind": "classical", "psnr_mean": None},  # no finite PSNR: ignored
        "unet": {"kind": "deep", "psnr_mean": 30.0},
    }
    assert analysis.best_baseline(methods) == ("nlm", 24.25)
    assert analysis.best_baseline({"noisy": {"kind": "input", "psnr_mean": 12.0}}) is None


def test_smallest_winning_size():
    psnr = {125: 20.0, 250: 24.0, 500: 24.5, 1000: 26.0}
    assert analysis.smallest_winning_size(psnr, 24.1) == 500
    assert analysis.smallest_winning_size(psnr, 19.0) == 125
    assert analysis.smallest_winning_size(psnr, 24.0) == 500  # equal is not beating
    assert analysis.smallest_winning_size(psnr, 26.0) is None  # never within the sizes run
    assert analysis.smallest_winning_size(psnr, None) is None  # no baseline to beat
    # non-monotonic learning curve and a failed (None) cell: the smallest size that beats it, in any order
    assert analysis.smallest_winning_size({1000: 25.0, 125: None, 500: 23.0, 250: 24.5}, 24.0) == 250
    assert analysis.smallest_winning_size({125: math.nan, 250: math.inf}, 1.0) is None


def test_cell_epochs_and_plan():
    assert engine.cell_epochs(125, 16, 20, 0) == 20
    assert engine.cell_epochs(125, 16, 20, 400) == 50  # 8 steps per epoch -> 50 epochs
    assert engine.cell_epochs(8000, 16, 20, 400) == 20  # already 10000 steps
    study = params.defaults().study.replace(models=["unet", "dncnn"], train_sizes=[500, 125])
    cells = engine.plan_cells(study)
    assert [c.name for c in cells] == ["unet-125", "dncnn-125", "unet-500", "dncnn-500"]
    assert len(engine.plan_cells(study.replace(models="all"))) == 2 * len(models.names())


def test_cell_train_section_overrides_only_the_study_keys():
    p = params.validate({"train": {"optimizer": "sgd", "epochs": 99, "dncnn_depth": 5}})
    cell = engine.Cell("dncnn", 250, 3)
    train = engine.cell_train_section(p.train, p.study, cell)
    assert train.model == ["dncnn"] and train.epochs == 3 and train.max_train_images == 250
    assert train.optimizer == "sgd" and train.model_options["dncnn_depth"] == 5
    assert train.batch_size == p.study.batch_size and train.lr == p.study.lr
    config = engine.cell_config(cell, train, {"n_test": 4}, "card")
    assert config["options"] == {"depth": 5}
    assert config["max_train_images"] == 250 and config["optimizer"] == "sgd" and config["evaluation"] == {"n_test": 4}


# --------------------------------------------------------------------------------------------------------------
# The train split read once: a cell's data are the first N pairs, as a direct read of N would give
# --------------------------------------------------------------------------------------------------------------


def _setting(tmp_path, sizes: list[int]) -> engine.Setting:
    rng = np.random.default_rng(0)
    splits = {
        name: (rng.random((n, 16, 16), np.float32) + 0.5, rng.random((n, 16, 16), np.float32) + 0.5)
        for name, n in (("train", 10), ("val", 2), ("test", 3))
    }
    norm = {"noisy": {"mean": 1.0, "std": 0.3}, "clean": {"mean": 1.0, "std": 0.3}}
    data_dir = write_data_dir(tmp_path / "data", splits, norm)
    p = params.validate({"study": {"models": ["sciml_ae"], "train_sizes": sizes}})
    card = {"data_range": 1.0, "normalisation": norm, "splits": {"train": {"n": 10}}}
    test = load_split(data_dir, "test")
    return engine.Setting(
        p.study,
        p.train,
        p.test.tune_images,
        data_dir,
        card,
        test,
        torch.device("cpu"),
        "fp32",
        logging.getLogger("test"),
        "p.yaml",
    )


def test_each_cell_takes_the_first_n_pairs_of_one_read(tmp_path, monkeypatch):
    setting = _setting(tmp_path, [3, 7])
    reads = []
    real_load = training.load_data

    def counting_load(*args, **kwargs):
        reads.append(args[1].max_train_images)
        return real_load(*args, **kwargs)

    monkeypatch.setattr(training, "load_data", counting_load)
    small, large = setting.cell_data(3), setting.cell_data(7)
    assert reads == [7]  # one read, of the largest size
    direct = real_load(
        setting.data_dir, setting.train.replace(max_train_images=3), setting.card["normalisation"], "p.yaml"
    )
    assert len(small) == 3 and len(large) == 7 and len(small.val) == 2
    assert torch.equal(small.noisy, direct.noisy) and torch.equal(small.clean, direct.clean)
    assert torch.equal(large.noisy[:3], small.noisy)


def test_one_fingerprint_per_cell_that_changes_with_what_the_result_depends_on(tmp_path):
    setting = _setting(tmp_path, [3, 7])
    jobs = [setting.job(cell) for cell in engine.plan_cells(setting.study)]
    assert [j.name for j in jobs] == ["sciml_ae-3", "sciml_ae-7"]
    assert jobs[0].fingerprint != jobs[1].fingerprint
    assert setting.job(jobs[0].cell).fingerprint == jobs[0].fingerprint  # the same plan, the same print
    other = dataclasses.replace(setting, study=setting.study.replace(dose_bins=3))
    assert other.job(jobs[0].cell).fingerprint != jobs[0].fingerprint  # the evaluation changed
    assert jobs[0].config["max_train_images"] == 3 and jobs[0].config["evaluation"]["n_test"] == 3
