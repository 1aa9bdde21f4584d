"""``emdenoise bench``: a quick real run on the CPU writes the JSON and the table; compile failures fall back;
bad options are one-line errors. No timing is asserted: only that the figures exist, are positive and agree."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from emdenoise import cli
from emdenoise.bench import run as bench
from emdenoise.bench.settings import settings_from_args

REQUIRED = (
    "train_speedup_vs_plain",
    "infer_speedup_vs_plain",
    "train_images_per_s",
    "infer_images_per_s",
    "plain_train_images_per_s",
    "plain_infer_images_per_s",
    "peak_memory_bytes",
    "ablation",
)


@pytest.fixture(autouse=True)
def _one_thread():
    torch.set_num_threads(1)


def _check_model(m: dict, size: str) -> None:
    assert set(REQUIRED) <= set(m)
    for kind in ("train", "infer"):
        fast, plain = m[f"{kind}_images_per_s"][size], m[f"plain_{kind}_images_per_s"][size]
        assert fast > 0 and plain > 0
        assert m[f"{kind}_speedup_vs_plain"] == pytest.approx(fast / plain)
        assert m["peak_memory_bytes"][kind][size] >= 0 and m["batch_size"][kind][size] >= 1
    steps = [row["step"] for row in m["ablation"]]
    assert steps[:2] == ["plain", "fp32"] and "compile" in steps and len(steps) == 4
    assert m["ablation"][0]["train_images_per_s"] == m["plain_train_images_per_s"][size]
    measured = [row for row in m["ablation"] if "infer_images_per_s" in row]
    # the engine's figure is the last setting measured: what the train task runs with these settings
    for kind in ("train", "infer"):
        steps = [r[f"{kind}_images_per_s"] for r in m["ablation"][1:] if f"{kind}_images_per_s" in r]
        assert steps[-1] == m[f"{kind}_images_per_s"][size]
    assert all("infer_gain" in row and row["infer_gain"] > 0 for row in measured[1:])


@pytest.mark.slow
def test_quick_bench_from_the_command_line(tmp_path):
    out = tmp_path / "bench.json"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "emdenoise",
            "bench",
            "--quick",
            "--models=sciml_ae",
            "--device=cpu",
            "--sizes=64",
            f"--output={out}",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr
    doc = json.loads(out.read_text())
    assert doc["format"] == bench.FORMAT and doc["device"] == "cpu" and doc["torch_version"] == torch.__version__
    assert doc["cpu_count"] >= 1 and doc["settings"]["sizes"] == [64] and doc["settings"]["quick"] is True
    assert list(doc["models"]) == ["sciml_ae"]
    _check_model(doc["models"]["sciml_ae"], "64")
    assert doc["models"]["sciml_ae"]["parameters"] == 122_737
    table = done.stdout
    assert "sciml_ae" in table and " train " in table and " infer " in table and "ablation" in table
    assert not list(tmp_path.glob("*.tmp")) and not list(tmp_path.glob(".*.tmp"))


def test_compile_failure_falls_back_to_eager(tmp_path, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("no compiler here")

    monkeypatch.setattr(torch, "compile", broken)
    out = tmp_path / "b.json"
    assert cli.main(["bench", "--quick", "--compile", "--device=cpu", "--sizes=32", f"--output={out}"]) == 0
    m = json.loads(out.read_text())["models"]["sciml_ae"]
    _check_model(m, "32")
    row = next(r for r in m["ablation"] if r["step"] == "compile")
    assert "no compiler here" in row["train_failed"] and "Denoiser" in row["infer_skipped"]
    assert "train_images_per_s" not in row and "infer_images_per_s" not in row
    assert m["fast_config"]["train"]["compile"] is False and m["fast_config"]["infer"]["compile"] is False


@pytest.mark.parametrize(
    "args, field",
    [
        (["--models=nope"], "--models"),
        (["--sizes=8"], "--sizes"),
        (["--device=tpu"], "--device"),
        (["--steps=0"], "--steps"),
    ],
)
def test_bad_options_are_one_line_errors(args, field, tmp_path, capsys):
    out = tmp_path / "never.json"
    assert cli.main(["bench", "--device=cpu", *args, f"--output={out}"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and field in err[0] and "expected" in err[0]
    assert not out.exists()


def test_batch_scales_with_frame_area():
    args = cli.build_parser().parse_args(["bench", "--device=cpu", "--batch-size=32", "--sizes=256,1024,4096"])
    settings = settings_from_args(args)
    assert [settings.batch_for(s) for s in settings.sizes] == [32, 2, 1]
    assert settings.train_sizes == (256,) and settings.precision in ("fp32", "bf16")
