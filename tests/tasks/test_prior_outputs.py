"""A failed run leaves what was in its output folders before it started as it was (issue 6, README "Failure
modes"), for the tasks that write many outputs: test, train and denoise.

Each test fills the output folders with a good earlier run, records the sha256 of every file, makes a second
run fail part-way (a damaged second model file or a figure that cannot be rendered for ``test``; a second
model that diverges for ``train``; a NaN frame in the third input for ``denoise``) and checks the exit code,
the one ``error:`` line, that every earlier file is byte for byte what it was, and that nothing else is left
beside it but the documented resumable state (the ``.staging/`` folders, train's checkpoint). Then the same
command again (the input fixed where needed) finishes the job from that state. Last, ``kill -9`` exactly
between moving a denoised image into place and moving its sidecar: never a new image beside the old
provenance.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
import tifffile
from support import ENV, ROOT, argv, one_error, params_file, read_frames, run_here, save_model

from emdenoise import lock
from emdenoise.errors import EXIT_BAD_INPUT, EXIT_RUNTIME
from emdenoise.io import micrographs
from emdenoise.layout import CHECKPOINT_FILE, LAST_MODEL_FILE, MODEL_FILE
from emdenoise.outputs import STAGING_DIR
from emdenoise.outputs import sha256_file as sha256_of

TEST_OUTPUTS = {"test_metrics.json", "per_image.csv", "results.md", "comparison.png", "psnr_bar.png"}


def hashes(folder: Path) -> dict[str, str]:
    """rel path -> sha256 of every file under ``folder``, hidden ones included."""
    return {
        p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def assert_untouched(
    before: dict[str, str], folder: Path, may_change: set[str] = frozenset(), may_add: set[str] = frozenset()
) -> None:
    """Every file of ``before`` is still there with the same bytes (but those of ``may_change``); the files
    added are exactly ``may_add``; no temporary file and no lock file is left."""
    now = hashes(folder)
    changed = sorted(rel for rel in before if now.get(rel) != before[rel] and rel not in may_change)
    assert changed == [], f"files of the earlier run changed or removed: {changed}"
    assert set(now) - set(before) == set(may_add)
    assert not [rel for rel in now if rel.endswith(".tmp") or rel.endswith(lock.LOCK_NAME)]


# ==================================================================================================================
# test
# ==================================================================================================================
@pytest.fixture
def evaluated(tmp_path, capsys, processed) -> dict[str, Path]:
    """The paths of a test run that has succeeded once: two models (dncnn, then sciml_ae), one baseline."""
    models_dir = tmp_path / "models"
    save_model(models_dir, "dncnn", depth=3)
    save_model(models_dir, "sciml_ae")
    paths = {
        "data_dir": processed,
        "model_dir": models_dir,
        "output_dir": tmp_path / "out",
        "parameters_file": params_file(
            tmp_path / "p.yaml",
            test={"baselines": ["gaussian"], "device": "cpu", "precision": "fp32", "figure_images": 2},
        ),
        "log_dir": tmp_path / "logs",
    }
    code, err = run_here(capsys, "test", paths)
    assert code == 0, err
    assert {p.name for p in paths["output_dir"].iterdir()} == TEST_OUTPUTS
    return paths


def test_test_loads_every_model_before_any_work_and_a_damaged_second_one_changes_nothing(evaluated, capsys):
    out = evaluated["output_dir"]
    before = hashes(out)
    second = evaluated["model_dir"] / "sciml_ae" / MODEL_FILE
    data = bytearray(second.read_bytes())
    data[len(data) // 2] ^= 0xFF  # one byte changed: the seal no longer matches
    second.write_bytes(bytes(data))
    save_model(evaluated["model_dir"], "dncnn", seed=1, depth=3)  # the first model retrained meanwhile

    code, err = run_here(capsys, "test", evaluated)
    one_error(code, err, EXIT_BAD_INPUT, str(second))
    assert "val PSNR" not in err and "images/s" not in err  # neither the baseline nor the first model ran
    assert_untouched(before, out)


def test_test_writes_all_outputs_or_none_when_a_figure_cannot_be_rendered(evaluated, capsys, monkeypatch):
    out = evaluated["output_dir"]
    before = hashes(out)
    save_model(evaluated["model_dir"], "dncnn", seed=1, depth=3)  # new results to write
    from matplotlib.figure import Figure

    savefig, calls = Figure.savefig, []

    def second_one_fails(self, *args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("simulated: the renderer failed")
        return savefig(self, *args, **kwargs)

    monkeypatch.setattr(Figure, "savefig", second_one_fails)
    code, err = run_here(capsys, "test", evaluated)
    one_error(code, err, EXIT_RUNTIME, "simulated")
    assert len(calls) == 2
    assert_untouched(before, out)

    monkeypatch.setattr(Figure, "savefig", savefig)
    code, err = run_here(capsys, "test", evaluated)  # the same command again: everything new
    assert code == 0, err
    now = hashes(out)
    assert set(now) == TEST_OUTPUTS and now["test_metrics.json"] != before["test_metrics.json"]


# ==================================================================================================================
# train
# ==================================================================================================================
# unet (base 8) diverges at epoch 1 with Adam at lr 1 on this data, sciml_ae does not (measured: lr 0.3 to 3)
TRAIN = {
    "model": ["sciml_ae", "unet"],
    "unet_base": 8,
    "epochs": 2,
    "batch_size": 4,
    "lr": 3e-3,
    "device": "cpu",
    "precision": "fp32",
}


@pytest.mark.parametrize("resume", ["auto", "never"])
def test_train_whose_second_model_diverges_leaves_the_earlier_models_and_metrics(tmp_path, capsys, processed, resume):
    models_dir, out = tmp_path / "models", tmp_path / "out"
    paths = {"data_dir": processed, "model_dir": models_dir, "output_dir": out, "log_dir": tmp_path / "logs"}
    code, err = run_here(capsys, "train", {**paths, "parameters_file": params_file(tmp_path / "p.yaml", train=TRAIN)})
    assert code == 0, err
    if resume == "auto":  # checkpoints deleted (to save room): auto then starts afresh beside the old models
        for name in TRAIN["model"]:
            (models_dir / name / CHECKPOINT_FILE).unlink()
    before_models, before_out = hashes(models_dir), hashes(out)
    assert f"sciml_ae/{MODEL_FILE}" in before_models and set(before_out) == {"train_metrics.json"}

    failing = params_file(tmp_path / "q.yaml", train={**TRAIN, "lr": 1.0, "resume": resume})
    code, err = run_here(capsys, "train", {**paths, "parameters_file": failing})
    one_error(code, err, EXIT_RUNTIME, "diverged at epoch 1")

    staged = {f"sciml_ae/{STAGING_DIR}/{MODEL_FILE}", f"sciml_ae/{STAGING_DIR}/{LAST_MODEL_FILE}"}
    checkpoint = f"sciml_ae/{CHECKPOINT_FILE}"  # rewritten every epoch: the run's progress
    if resume == "never":
        assert_untouched(before_models, models_dir, may_change={checkpoint}, may_add=staged)
        assert hashes(models_dir)[checkpoint] != before_models[checkpoint]
    else:
        assert_untouched(before_models, models_dir, may_add=staged | {checkpoint})
    assert_untouched(before_out, out)

    # the first model's staged work is not lost: the same configuration for it alone moves it into place
    new = hashes(models_dir)
    alone = params_file(tmp_path / "r.yaml", train={**TRAIN, "model": ["sciml_ae"], "lr": 1.0})
    code, err = run_here(capsys, "train", {**paths, "parameters_file": alone})
    assert code == 0, err
    assert "sciml_ae: already trained for 2 epochs" in err
    now = hashes(models_dir)
    for name in (MODEL_FILE, LAST_MODEL_FILE):
        assert now[f"sciml_ae/{name}"] == new[f"sciml_ae/{STAGING_DIR}/{name}"]
    assert not (models_dir / "sciml_ae" / STAGING_DIR).exists()
    assert now["unet/" + MODEL_FILE] == before_models["unet/" + MODEL_FILE]
    metrics = json.loads((out / "train_metrics.json").read_text())
    assert list(metrics["models"]) == ["sciml_ae"] and metrics["epochs"][0]["lr"] == 1.0


# ==================================================================================================================
# denoise
# ==================================================================================================================
FRAMES, SIDE = 3, 48


def _write_inputs(folder: Path) -> None:
    """f0.tif, f1.npy, f2.h5: stacks of FRAMES frames."""
    rng = np.random.default_rng(5)
    folder.mkdir()
    tifffile.imwrite(
        folder / "f0.tif", rng.normal(0.5, 0.2, (FRAMES, SIDE, SIDE)).astype(np.float32), photometric="minisblack"
    )
    np.save(folder / "f1.npy", rng.normal(0.5, 0.2, (FRAMES, SIDE, SIDE)).astype(np.float32))
    _write_third(folder)


def _write_third(folder: Path, nan: bool = False) -> None:
    """(Re)write f2.h5 alone; with ``nan`` its frame 1 holds a NaN (the header is fine: only reading the
    pixels finds it)."""
    stack = np.random.default_rng(6).normal(0.5, 0.2, (FRAMES, SIDE, SIDE)).astype(np.float32)
    if nan:
        stack[1, 7, 7] = np.nan
    with h5py.File(folder / "f2.h5", "w") as fh:
        fh.create_dataset("frames", data=stack)


@pytest.fixture
def denoised(tmp_path, capsys) -> dict[str, Path]:
    """The paths of a denoise run that has succeeded once, with the model then retrained (another seed), so
    that every output is out of date."""
    _write_inputs(tmp_path / "in")
    save_model(tmp_path / "models")
    paths = {
        "input_dir": tmp_path / "in",
        "model_dir": tmp_path / "models",
        "output_dir": tmp_path / "out",
        "parameters_file": params_file(
            tmp_path / "p.yaml",
            denoise={"tile_size": 32, "tile_overlap": 8, "batch_size": 4, "device": "cpu", "precision": "fp32"},
        ),
        "log_dir": tmp_path / "logs",
    }
    code, err = run_here(capsys, "denoise", paths)
    assert code == 0, err
    assert {p.name for p in paths["output_dir"].iterdir()} == {
        f"f{i}.{ext}{side}" for i, ext in enumerate(("tif", "npy", "h5")) for side in ("", ".json")
    }
    save_model(tmp_path / "models", seed=1)
    return paths


def _assert_consistent(out: Path, model: Path) -> None:
    """Every output has its own sidecar: made with ``model``, and (TIFF, HDF5) the provenance inside agrees."""
    sha = sha256_of(model)
    for path in sorted(out.iterdir()):
        if path.suffix == ".json":
            continue
        sidecar = json.loads(path.with_name(path.name + ".json").read_text())
        assert sidecar["model"]["sha256"] == sha, path
        inside = micrographs.read_provenance(path)
        if inside is not None:
            assert inside["model"]["sha256"] == sha and inside["created"] == sidecar["created"], path


def test_denoise_failing_on_the_third_input_leaves_every_earlier_output_then_resumes(denoised, capsys, tmp_path):
    out = denoised["output_dir"]
    before = hashes(out)
    _write_third(denoised["input_dir"], nan=True)

    code, err = run_here(capsys, "denoise", denoised)
    one_error(code, err, EXIT_BAD_INPUT, "f2.h5", "frame 1", "NaN")
    finished = {f"{STAGING_DIR}/{name}" for name in ("f0.tif", "f0.tif.json", "f1.npy", "f1.npy.json")}
    assert_untouched(before, out, may_add=finished)  # only the finished work, staged for the next run

    _write_third(denoised["input_dir"])  # the input fixed: the same command again
    code, err = run_here(capsys, "denoise", denoised)
    assert code == 0, err
    assert err.count("finished by an interrupted run), kept") == 2  # f0 and f1 not computed again
    assert set(hashes(out)) == set(before) and not (out / STAGING_DIR).exists()
    _assert_consistent(out, denoised["model_dir"] / "sciml_ae" / MODEL_FILE)
    code, err = run_here(capsys, "denoise", {**denoised, "output_dir": tmp_path / "ref"})
    assert code == 0, err
    for name in ("f0.tif", "f1.npy", "f2.h5"):  # the same result as an uninterrupted run
        np.testing.assert_array_equal(read_frames(out / name), read_frames(tmp_path / "ref" / name))


# Run the denoise command, killing the process (SIGKILL) right after the first output image is moved into
# place (a rename out of a staging folder onto a final name), before its sidecar follows.
_KILLED_BETWEEN_IMAGE_AND_SIDECAR = """
import os, signal, sys
from emdenoise import cli
from emdenoise.outputs import STAGING_DIR

replace = os.replace

def replace_then_die(staged, dest):
    replace(staged, dest)
    folder = lambda p: os.path.basename(os.path.dirname(p))
    if folder(staged) == STAGING_DIR != folder(dest) and not str(dest).endswith(".json"):
        os.kill(os.getpid(), signal.SIGKILL)

os.replace = replace_then_die
sys.exit(cli.main(sys.argv[1:]))
"""


def test_kill_9_between_moving_an_image_and_its_sidecar_never_pairs_it_with_the_old_provenance(denoised, capsys):
    out = denoised["output_dir"]
    before = hashes(out)
    res = subprocess.run(
        [sys.executable, "-c", _KILLED_BETWEEN_IMAGE_AND_SIDECAR, *argv("denoise", denoised)],
        cwd=ROOT,
        env=ENV,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert res.returncode == -signal.SIGKILL, res.stderr

    now = hashes(out)
    assert now["f0.tif"] != before["f0.tif"]  # the new image is in place ...
    assert "f0.tif.json" not in now  # ... without a sidecar, not beside the old one
    new_sha = sha256_of(denoised["model_dir"] / "sciml_ae" / MODEL_FILE)
    assert micrographs.read_provenance(out / "f0.tif")["model"]["sha256"] == new_sha
    assert {rel: now[rel] for rel in before if rel.startswith(("f1", "f2"))} == {
        rel: before[rel] for rel in before if rel.startswith(("f1", "f2"))
    }

    code, err = run_here(capsys, "denoise", denoised)  # the same command again
    assert code == 0, err
    assert err.count("finished by an interrupted run), kept") == 2  # f1, f2; f0 (no sidecar) computed again
    assert set(hashes(out)) == set(before) and not (out / STAGING_DIR).exists()
    _assert_consistent(out, denoised["model_dir"] / "sciml_ae" / MODEL_FILE)
    assert not os.path.exists(out / lock.LOCK_NAME)
