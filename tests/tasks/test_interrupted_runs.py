"""``kill -9`` at a random moment while download, preprocess, train or denoise is writing: every file at a final
name is complete (old or new), and the same command again ends where an uninterrupted run ends; SIGTERM unwinds
like Ctrl-C."""

from __future__ import annotations

import json
import os
import random
import signal
import socket
import zipfile
from pathlib import Path

import h5py
import numpy as np
import pytest
import tifffile
import torch
from support import (
    TRAIN,
    assert_old_or_new,
    final_files,
    has_bytes,
    kill_9,
    one_error,
    params_file,
    read_frames,
    run_cmd,
    run_here,
    save_model,
    start_cmd,
    temp_bytes,
    temporaries,
    wait_until,
    write_raw,
)

from emdenoise import lock
from emdenoise.errors import EXIT_BUSY, EXIT_INTERRUPTED
from emdenoise.io import modelfile
from emdenoise.layout import RAW_FILES
from emdenoise.outputs import STAGING_DIR


@pytest.mark.slow
def test_kill_9_during_a_synthetic_download_while_a_second_run_is_refused(tmp_path, capsys):
    new = {"source": "synthetic", "seed": 1, "train_images": 800, "test_images": 20, "image_size": 64, "workers": 1}
    params = params_file(tmp_path / "new.yaml", download=new)
    old_params = params_file(
        tmp_path / "old.yaml", download={**new, "seed": 0, "train_images": 4, "test_images": 2, "image_size": 32}
    )
    raw, ref, logs = tmp_path / "raw", tmp_path / "ref", tmp_path / "logs"
    paths = {"raw_data_dir": raw, "parameters_file": params, "log_dir": logs}
    assert run_here(capsys, "download", {**paths, "raw_data_dir": ref})[0] == 0  # uninterrupted
    assert run_here(capsys, "download", {**paths, "parameters_file": old_params})[0] == 0  # what was there
    old, expected = final_files(raw), final_files(ref)

    proc = start_cmd("download", paths, tmp_path / "killed.err")
    wait_until(proc, lambda: has_bytes(temporaries(raw)))
    code, err = run_here(capsys, "download", paths)  # the same command, at the same time (in-process:
    one_error(code, err, EXIT_BUSY, str(raw), f"pid {proc.pid}", socket.gethostname())  # no start-up delay)
    target = random.uniform(0.2, 0.7) * (ref / "train" / RAW_FILES["noisy"]).stat().st_size
    wait_until(proc, lambda: temp_bytes(raw / "train", RAW_FILES["noisy"]) >= target)
    kill_9(proc, max_delay=0)

    assert_old_or_new(final_files(raw), old, expected)
    assert set(final_files(raw)) == set(old)
    assert lock.read_holder(raw)["pid"] == proc.pid  # the dead run's lock file is still there ...
    code, err = run_cmd("download", paths)  # ... and blocks nothing
    assert code == 0, err
    assert final_files(raw) == expected  # byte for byte what an uninterrupted run wrote
    assert temporaries(raw) == [] and not (raw / lock.LOCK_NAME).exists()


@pytest.fixture(scope="module")
def copy_source(tmp_path_factory) -> Path:
    """A local copy of the layout plus a 48 MiB file that sorts (and is copied or extracted) last."""
    src = tmp_path_factory.mktemp("source") / "em_graphene_sim"
    write_raw(src, 6, 3, seed=5)
    (src / "zz_extra").mkdir()
    (src / "zz_extra" / "blob.bin").write_bytes(os.urandom(48 << 20))
    archive = src.parent / "em.zip"
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_STORED) as zf:
        for path in sorted(src.rglob("*")):
            if path.is_file():
                zf.write(path, f"em_graphene_sim/{path.relative_to(src).as_posix()}")
    return src


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["folder", "zip"])
def test_kill_9_during_a_local_copy_then_the_same_command_finishes_it(tmp_path, capsys, copy_source, kind):
    source = copy_source if kind == "folder" else copy_source.parent / "em.zip"
    params = params_file(tmp_path / "p.yaml", download={"source": str(source)})
    raw, ref, logs = tmp_path / "raw", tmp_path / "ref", tmp_path / "logs"
    paths = {"raw_data_dir": raw, "parameters_file": params, "log_dir": logs}
    assert run_here(capsys, "download", {**paths, "raw_data_dir": ref})[0] == 0
    write_raw(raw, 6, 3, seed=6)  # an earlier copy of other data
    old, expected = final_files(raw), final_files(ref)
    assert expected["zz_extra/blob.bin"] == (copy_source / "zz_extra" / "blob.bin").read_bytes()

    proc = start_cmd("download", paths, tmp_path / "killed.err")
    if kind == "folder":
        wait_until(proc, lambda: has_bytes([raw / "zz_extra" / "blob.bin.part"]))
    else:
        wait_until(proc, lambda: has_bytes(raw.glob(".extract-*/**/blob.bin")))
    kill_9(proc, max_delay=0.01)

    now = final_files(raw)
    assert_old_or_new(now, old, expected)
    assert "zz_extra/blob.bin" not in now  # the big file was never at its final name
    assert temporaries(raw)  # the work in progress was cut off
    code, err = run_cmd("download", paths)
    assert code == 0, err
    assert final_files(raw) == expected
    assert temporaries(raw) == []  # .part files renamed, the staging folder removed


@pytest.mark.slow
def test_kill_9_during_preprocess_then_the_same_command_finishes_it(tmp_path, capsys, big_raw):
    data, ref, logs = tmp_path / "data", tmp_path / "ref", tmp_path / "logs"
    paths = {
        "raw_data_dir": big_raw,
        "data_dir": data,
        "parameters_file": params_file(tmp_path / "p.yaml"),
        "log_dir": logs,
    }
    assert run_here(capsys, "preprocess", {**paths, "data_dir": ref}, "preprocess.seed=1")[0] == 0
    assert run_here(capsys, "preprocess", paths, "preprocess.seed=0")[0] == 0
    old, expected = final_files(data), final_files(ref)
    assert old["train.h5"] != expected["train.h5"]

    proc = start_cmd("preprocess", paths, tmp_path / "killed.err", "preprocess.seed=1")
    target = random.uniform(0.05, 0.7) * (ref / "train.h5").stat().st_size
    wait_until(proc, lambda: temp_bytes(data, "train.h5") >= target)
    kill_9(proc, max_delay=0)

    assert_old_or_new(final_files(data), old, expected)
    code, err = run_cmd("preprocess", paths, "preprocess.seed=1")
    assert code == 0, err
    assert "temporary file(s) left by an interrupted run" in err
    assert final_files(data) == expected and temporaries(data) == []


@pytest.mark.slow
def test_kill_9_during_training_then_the_same_command_resumes_to_the_same_result(tmp_path, capsys, processed):
    params = params_file(tmp_path / "p.yaml", train=TRAIN)
    models_dir, out, logs = tmp_path / "models", tmp_path / "out", tmp_path / "logs"
    paths = {
        "data_dir": processed,
        "parameters_file": params,
        "model_dir": models_dir,
        "output_dir": out,
        "log_dir": logs,
    }
    ref = {**paths, "model_dir": tmp_path / "ref_models", "output_dir": tmp_path / "ref_out"}
    assert run_here(capsys, "train", ref)[0] == 0
    ref_rows = json.loads((tmp_path / "ref_out" / "train_metrics.json").read_text())["epochs"]

    proc = start_cmd("train", paths, tmp_path / "killed.err")
    checkpoint = models_dir / "sciml_ae" / "checkpoint_last.h5"
    epoch = random.choice([2, 3])  # then within about one epoch
    wait_until(proc, lambda: f"epoch {epoch}/{TRAIN['epochs']}:" in (tmp_path / "killed.err").read_text())
    kill_9(proc, max_delay=float(np.mean([row["seconds"] for row in ref_rows])))

    final_files(models_dir)  # every file at a final name is complete
    final_files(out)
    done = modelfile.checkpoint_info(checkpoint)["epoch"]
    assert 1 <= done < TRAIN["epochs"]
    modelfile.load_model(models_dir / "sciml_ae" / STAGING_DIR / "em_denoise_model.h5")  # moved at the end
    code, err = run_here(capsys, "train", paths)  # the same command again
    assert code == 0, err
    assert f"resuming from {checkpoint} after epoch {done}" in err

    rows = json.loads((out / "train_metrics.json").read_text())["epochs"]
    assert [r["epoch"] for r in rows] == [r["epoch"] for r in ref_rows] == list(range(1, TRAIN["epochs"] + 1))
    for row, ref_row in zip(rows, ref_rows):
        for key in ("train_loss", "val_psnr", "val_ssim", "lr"):
            assert row[key] == pytest.approx(ref_row[key], rel=1e-4), (row["epoch"], key)
    for name in ("em_denoise_model.h5", "em_denoise_model_last.h5"):
        a, _ = modelfile.load_model(models_dir / "sciml_ae" / name)
        b, _ = modelfile.load_model(tmp_path / "ref_models" / "sciml_ae" / name)
        for key, value in a.state_dict().items():
            torch.testing.assert_close(value, b.state_dict()[key], rtol=1e-4, atol=1e-5)
    assert temporaries(models_dir) == [] and not (models_dir / lock.LOCK_NAME).exists()


def _denoise_inputs(folder: Path, n_files: int = 6, frames: int = 12, side: int = 96) -> None:
    rng = np.random.default_rng(2)
    folder.mkdir(parents=True)
    for i in range(n_files):
        stack = rng.normal(0.5, 0.2, (frames, side, side)).astype(np.float32)
        kind = ("tif", "npy", "h5")[i % 3]
        path = folder / f"f{i}.{kind}"
        if kind == "tif":
            tifffile.imwrite(path, stack, photometric="minisblack")
        elif kind == "npy":
            np.save(path, stack)
        else:
            with h5py.File(path, "w") as fh:
                fh.create_dataset("frames", data=stack)


@pytest.mark.slow
def test_kill_9_during_denoise_then_the_same_command_keeps_what_is_done(tmp_path, capsys):
    save_model(tmp_path / "models")
    _denoise_inputs(tmp_path / "in")
    params = params_file(
        tmp_path / "p.yaml",
        denoise={"tile_size": 64, "tile_overlap": 16, "batch_size": 4, "device": "cpu", "precision": "fp32"},
    )
    out = tmp_path / "out"
    paths = {
        "input_dir": tmp_path / "in",
        "model_dir": tmp_path / "models",
        "parameters_file": params,
        "output_dir": out,
        "log_dir": tmp_path / "logs",
    }
    assert run_here(capsys, "denoise", {**paths, "output_dir": tmp_path / "ref"})[0] == 0
    per_file = np.mean([json.loads(p.read_text())["seconds"] for p in (tmp_path / "ref").glob("*.json")])

    proc = start_cmd("denoise", paths, tmp_path / "killed.err")
    files = random.choice([1, 2, 3])  # then within about one more file
    wait_until(proc, lambda: len(list((out / STAGING_DIR).glob("*.json"))) >= files)
    kill_9(proc, max_delay=float(per_file))

    final_files(out)  # complete outputs only ...
    assert final_files(out / STAGING_DIR)  # ... the finished ones staged, moved at the end
    code, err = run_here(capsys, "denoise", paths)
    assert code == 0, err
    assert "up to date" in err  # finished files were kept, not computed again
    for path in sorted((tmp_path / "in").iterdir()):
        np.testing.assert_allclose(
            read_frames(out / path.name), read_frames(tmp_path / "ref" / path.name), rtol=1e-5, atol=1e-6
        )
    assert temporaries(out) == []


@pytest.mark.slow
def test_sigterm_unwinds_like_ctrl_c_and_leaves_no_temporary_file(tmp_path, capsys, big_raw):
    data = tmp_path / "data"
    paths = {
        "raw_data_dir": big_raw,
        "data_dir": data,
        "parameters_file": params_file(tmp_path / "p.yaml"),
        "log_dir": tmp_path / "logs",
    }
    assert run_here(capsys, "preprocess", paths, "preprocess.seed=0")[0] == 0
    old = final_files(data)
    proc = start_cmd("preprocess", paths, tmp_path / "term.err", "preprocess.seed=1")
    wait_until(proc, lambda: has_bytes(temporaries(data)))
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=60)
    one_error(proc.returncode, (tmp_path / "term.err").read_text(), EXIT_INTERRUPTED, "interrupted (SIGTERM)")
    assert final_files(data) == old
    assert temporaries(data) == [] and not (data / lock.LOCK_NAME).exists()
