"""The train task under torchrun: two CPU processes (gloo) against one process with the same global batch.

A tiny processed data_dir (17 train pairs, so the last batch of 4 is a single image and one process gets an
empty share; 5 val pairs, split 3 + 2) is written with h5py directly. Optimiser SGD, so rounding differences
between the runs stay rounding-sized (Adam's normalisation would blow them up to the learning rate).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
import support
import torch
import yaml
from support import write_data_dir

from emdenoise import cli, models
from emdenoise.runtime import device as runtime
from emdenoise.runtime import distributed
from emdenoise.training import loop as training

SIDE = 32
TRAIN = {
    "model": ["cafcn", "sciml_ae"],
    "epochs": 2,
    "batch_size": 4,
    "lr": 0.02,
    "optimizer": "sgd",
    "lr_schedule": "cosine",
    "device": "cpu",
    "precision": "fp32",
    "seed": 3,
}
TIMEOUT_S = 240


@pytest.fixture(autouse=True)
def _quiet(monkeypatch):
    monkeypatch.setenv("EMDENOISE_PROGRESS", "0")
    for name in ("WORLD_SIZE", "RANK", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    torch.set_num_threads(1)  # as torchrun's workers (OMP_NUM_THREADS=1): same arithmetic


def make_data_dir(root: Path, n_train: int = 17, n_val: int = 5) -> Path:
    """Learnable pairs (stripes, and the same with a gain and noise) in the processed layout."""
    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:SIDE, 0:SIDE].astype(np.float32)
    splits = {}
    for split, n in (("train", n_train), ("val", n_val), ("test", 2)):
        phase = rng.uniform(0, 2 * np.pi, (n, 1, 1)).astype(np.float32)
        clean = 0.5 + 0.4 * np.sin(0.3 * y + 0.2 * x + phase)
        noisy = (0.8 * clean + rng.normal(0, 0.15, clean.shape)).astype(np.float32)
        splits[split] = (noisy, clean)
    return write_data_dir(
        root, splits, {"noisy": {"mean": 0.4, "std": 0.3}, "clean": {"mean": 0.5, "std": 0.3}}, data_range=0.8
    )


def _params(path: Path, **train) -> Path:
    path.write_text(yaml.safe_dump({"train": {**TRAIN, **train}}))
    return path


def _paths(data: Path, params: Path, run: Path) -> list[str]:
    return [
        f"--data_dir={data}",
        f"--parameters_file={params}",
        f"--model_dir={run / 'models'}",
        f"--output_dir={run / 'output'}",
        f"--log_dir={run / 'logs'}",
    ]


def torchrun(launch: list[str], args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    """``torchrun --standalone --nproc_per_node=2 LAUNCH train ARGS``, which must succeed."""
    done = support.torchrun([*launch, "train", *args], cwd, TIMEOUT_S)
    assert done.returncode == 0, f"torchrun exit code {done.returncode}:\n{done.stdout}{done.stderr[-4000:]}"
    return done


def _weights(path: Path) -> dict[str, np.ndarray]:
    with h5py.File(path, "r") as fh:
        return {k: fh["state"][k][()] for k in fh["state"]}


def _weights_init(name: str) -> dict[str, np.ndarray]:
    """The seeded initial weights of the train task (seed_everything, then build)."""
    runtime.seed_everything(TRAIN["seed"])
    return {k: v.numpy() for k, v in models.build(name).state_dict().items()}


def _metrics(run: Path) -> dict:
    return json.loads((run / "output" / training.METRICS_FILE).read_text())["models"]


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return make_data_dir(tmp_path_factory.mktemp("data"))


@pytest.fixture(scope="module")
def single(tmp_path_factory, data) -> Path:
    """The reference: one process, same parameters."""
    run = tmp_path_factory.mktemp("single")
    torch.set_num_threads(1)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("EMDENOISE_PROGRESS", "0")
        assert cli.main(["train", *_paths(data, _params(run / "p.yaml"), run)]) == 0
    return run


def test_shard_partitions_every_batch():
    for n in range(0, 11):
        for size in range(1, 5):
            parts = [distributed.shard(n, distributed.World(rank, size)) for rank in range(size)]
            covered = [i for part in parts for i in range(n)[part]]
            assert covered == list(range(n))  # in order, each item once
            lengths = [p.stop - p.start for p in parts]
            assert max(lengths) - min(lengths) <= 1


@pytest.mark.slow
def test_two_processes_match_one(tmp_path, data, single):
    run = tmp_path / "ddp"
    done = torchrun(["-m", "emdenoise"], _paths(data, _params(tmp_path / "p.yaml"), run), tmp_path)
    one, two = _metrics(single), _metrics(run)
    for name in TRAIN["model"]:
        assert two[name]["processes"] == 2 and one[name]["processes"] == 1
        assert two[name]["complete"] and len(two[name]["epochs"]) == 2
        # only rank 0 reports: each epoch is logged once, on the console and in the log file
        line = f"{name} epoch 2/2:"
        assert done.stderr.count(line) == 1, f"{line!r} logged {done.stderr.count(line)} times:\n{done.stderr}"
        assert (run / "logs" / "train.log").read_text().count(line) == 1
    # no batch norm: the same training up to rounding (the gradient all-reduce, the weighted empty share)
    for a, b in zip(one["cafcn"]["epochs"], two["cafcn"]["epochs"]):
        assert b["train_loss"] == pytest.approx(a["train_loss"], rel=1e-5)
        assert b["val_psnr"] == pytest.approx(a["val_psnr"], abs=1e-3)
    w1 = _weights(single / "models" / "cafcn" / training.LAST_MODEL_FILE)
    w2 = _weights(run / "models" / "cafcn" / training.LAST_MODEL_FILE)
    assert w1.keys() == w2.keys()
    moved = max(float(np.abs(w - _weights_init("cafcn")[k]).max()) for k, w in w1.items())
    assert moved > 1e-3  # training changed the weights, so "close" below means something
    for key in w1:
        np.testing.assert_allclose(w2[key], w1[key], rtol=1e-4, atol=2e-5, err_msg=key)
    # batch norm on the CPU normalises each process's shard: close, not equal
    a, b = one["sciml_ae"]["epochs"][-1], two["sciml_ae"]["epochs"][-1]
    assert b["val_psnr"] == pytest.approx(a["val_psnr"], abs=1.0)
    assert b["train_loss"] == pytest.approx(a["train_loss"], rel=0.3)


@pytest.mark.slow
def test_resume_under_torchrun_ends_like_one_process(tmp_path, data, single, stop_after_epoch):
    """Epoch 1 in one process, 'crash', then epoch 2 under torchrun (via the console script): both
    processes load the checkpoint and the result is that of the uninterrupted single-process run."""
    script = Path(sys.executable).with_name("emdenoise")
    if not script.exists():
        pytest.skip("the emdenoise console script is not installed next to this Python")
    run = tmp_path / "resumed"
    args = _paths(data, _params(tmp_path / "p.yaml", model="cafcn"), run)
    stop_after_epoch(1)
    assert cli.main(["train", *args]) == 130
    assert (run / "models" / "cafcn" / training.CHECKPOINT_FILE).exists()
    done = torchrun([str(script)], args, tmp_path)
    assert "resuming from" in done.stderr and done.stderr.count("resuming from") == 1
    record = _metrics(run)["cafcn"]
    assert [e["epoch"] for e in record["epochs"]] == [1, 2] and record["processes"] == 2
    w1 = _weights(single / "models" / "cafcn" / training.LAST_MODEL_FILE)
    w2 = _weights(run / "models" / "cafcn" / training.LAST_MODEL_FILE)
    for key in w1:
        np.testing.assert_allclose(w2[key], w1[key], rtol=1e-4, atol=2e-5, err_msg=key)


def test_global_batch_must_divide_among_processes(tmp_path, data, monkeypatch):
    """Checked before any process group is joined: a one-line error naming the field, exit code 2."""
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("LOCAL_RANK", "0")
    run = tmp_path / "odd"
    code = cli.main(["train", *_paths(data, _params(tmp_path / "p.yaml", batch_size=5), run)])
    assert code == 2
    log = (run / "logs" / "train.log").read_text()
    assert "train.batch_size: expected a multiple of the 2 training processes" in log
    assert not (run / "models").exists() or not any((run / "models").rglob("*.h5"))


@pytest.mark.parametrize("size", [1, 2, 3])
def test_assign_shares_items_out_disjointly_and_evenly(size):
    weights = [5, 1, 1, 3, 2, 2, 0, 4]
    owners = [distributed.assign(weights, distributed.World(rank, size)) for rank in range(size)]
    assert all(o == owners[0] for o in owners)  # every process computes the same assignment
    load = [sum(max(w, 1) for w, r in zip(weights, owners[0]) if r == rank) for rank in range(size)]
    assert sorted(set(owners[0])) == list(range(size)) and max(load) - min(load) <= max(weights)
    assert distributed.assign([], distributed.World(0, size)) == []


def test_shared_transaction_of_a_single_process_is_a_transaction(tmp_path):
    with distributed.SharedTransaction(distributed.SINGLE) as tx:
        staged = tx.put(tmp_path / "a.txt")
        staged.write_text("new")
    assert (tmp_path / "a.txt").read_text() == "new" and not (tmp_path / ".staging").exists()
