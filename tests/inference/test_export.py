"""``emdenoise export``: ONNX files run by onnxruntime and TorchScript files run by torch alone (a process that
never imports emdenoise) compute what the package's own Denoiser computes, within export.TOLERANCE of the
output's range, on frames of 64x64, 96x80 (odd multiples of the poolings) and 50x70 (no multiple: the
padding), for every architecture; the metadata are in the files; bad arguments are one-line errors."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from support import ENV, NORM, ROOT, one_error, save_model, temporaries

from emdenoise import __version__, cli, models
from emdenoise.errors import InputError
from emdenoise.inference import export
from emdenoise.inference.denoiser import Denoiser
from emdenoise.io import modelfile
from emdenoise.models import conditioning

SHAPES = ((64, 64), (96, 80), (50, 70))
# small options: the export does not depend on the width, only on the kinds of layers
SMALL = {"unet": {"base": 4}, "msdnet": {"depth": 12}, "dncnn": {"depth": 5}}

# Runs in a fresh interpreter: load each TorchScript file with torch alone, denoise the frames saved beside it.
TORCH_ONLY = """
import sys, json
import numpy as np, torch
for path in sys.argv[1:]:
    extra = {"emdenoise.json": ""}
    net = torch.jit.load(path, _extra_files=extra)
    frames = np.load(path + ".in.npy")
    with torch.no_grad():
        np.save(path + ".out.npy", net(torch.from_numpy(frames)).numpy())
    with open(path + ".meta.json", "wb") as fh:
        fh.write(extra["emdenoise.json"])
assert not any(name.startswith("emdenoise") for name in sys.modules), "emdenoise was imported"
"""


def _frames(shape: tuple[int, int], seed: int) -> np.ndarray:
    """Two raw frames around the training data's mean (NORM)."""
    rng = np.random.default_rng(seed)
    return (NORM["noisy"]["mean"] + NORM["noisy"]["std"] * rng.standard_normal((2, 1, *shape))).astype(np.float32)


def _close(expected: np.ndarray, got: np.ndarray) -> None:
    assert got.shape == expected.shape and got.dtype == np.float32
    assert np.max(np.abs(got - expected)) <= export.TOLERANCE * np.ptp(expected)


def _models(tmp_path: Path, names) -> dict[str, Path]:
    return {name: save_model(tmp_path / "models", name, **SMALL.get(name, {})) for name in names}


def _check_metadata(meta: dict, name: str, options: dict, fmt: str) -> None:
    assert meta["model"] == name and meta["options"] == options and meta["export_format"] == fmt
    assert meta["normalisation"] == NORM and meta["normalisation_folded"] is True
    assert meta["emdenoise_version"] == __version__ and meta["format"] == export.EXPORT_FORMAT
    assert meta["pixel_size"] is None  # these model files do not record one


def _run_torch_only(files: list[Path]) -> None:
    res = subprocess.run(
        [sys.executable, "-c", TORCH_ONLY, *map(str, files)], capture_output=True, text=True, env=ENV, timeout=600
    )
    assert res.returncode == 0, res.stderr


def _export_and_compare(tmp_path: Path, names) -> None:
    """Export every model in both formats, run them outside the package and compare with the Denoiser."""
    import onnx  # the export extra: the tests that come here are marked extra("export")
    import onnxruntime

    scripts, expected = [], {}
    for name, model_file in _models(tmp_path, names).items():
        den = Denoiser.from_file(model_file)
        options = SMALL.get(name, {})
        onnx_file, ts_file = tmp_path / f"{name}.onnx", tmp_path / f"{name}.pt"
        export.export(model_file, "onnx", onnx_file)
        export.export(model_file, "torchscript", ts_file)
        proto = onnx.load(str(onnx_file))
        _check_metadata(json.loads({p.key: p.value for p in proto.metadata_props}["emdenoise"]), name, options, "onnx")
        session = onnxruntime.InferenceSession(str(onnx_file), providers=["CPUExecutionProvider"])
        assert [i.name for i in session.get_inputs()] == [export.INPUT_NAME]
        for i, shape in enumerate(SHAPES):
            frames = _frames(shape, i)
            reference = den.denoise(torch.from_numpy(frames)).numpy()
            _close(reference, session.run(None, {export.INPUT_NAME: frames})[0])
            one = tmp_path / f"{name}.{i}.pt"  # one file per shape for the torch-only process
            one.write_bytes(ts_file.read_bytes())
            np.save(f"{one}.in.npy", frames)
            scripts.append(one)
            expected[one] = (reference, name, options)
    _run_torch_only(scripts)
    for one, (reference, name, options) in expected.items():
        _close(reference, np.load(f"{one}.out.npy"))
        _check_metadata(json.loads(Path(f"{one}.meta.json").read_text()), name, options, "torchscript")


@pytest.mark.slow
@pytest.mark.extra("export")
def test_export_matches_the_package_outside_it(tmp_path):
    _export_and_compare(tmp_path, ["sciml_ae", "msdnet"])


@pytest.mark.slow
@pytest.mark.extra("export")
def test_export_matches_the_package_for_every_architecture(tmp_path):
    _export_and_compare(tmp_path, [name for name in models.names() if name not in ("sciml_ae", "msdnet")])


def test_folded_is_the_denoiser_arithmetic():
    """The wrapper pads like the network itself and folds the normalisation like the Denoiser: the same output
    up to rounding (the Denoiser runs the network in channels_last layout, which sums in another order)."""
    torch.manual_seed(0)
    net = models.build("unet", base=2).eval()
    meta = {"model": "unet", "normalisation": NORM}
    x = torch.from_numpy(_frames((37, 21), 3))
    with torch.no_grad():
        wrapped = export.folded(net, meta)(x).numpy()
    _close(Denoiser(net, meta).denoise(x).numpy(), wrapped)


@pytest.mark.extra("export")
def test_cli_writes_the_file_atomically_and_says_what_it_did(tmp_path, capsys):
    import onnx

    save_model(tmp_path / "models", "sciml_ae")
    out = tmp_path / "out" / "sciml_ae.onnx"
    code = cli.main(["export", f"--model_dir={tmp_path / 'models'}", "--format=onnx", f"--output={out}"])
    assert code == 0 and out.is_file() and temporaries(out.parent) == []
    assert "normalisation folded in" in capsys.readouterr().err
    onnx.checker.check_model(onnx.load(str(out)))


@pytest.mark.parametrize(
    "args, words",
    [
        (["--format=keras"], ["--format", "onnx, torchscript", "keras"]),
        (["--format=onnx", "--model=unet"], ["--model", "expected one of sciml_ae", "unet"]),
        (["--format=onnx", "--model_dir=EMPTY"], ["--model", "expected a trained model", "found none"]),
        (["--format=onnx", "--model_dir=MISSING"], ["model_dir", "not found"]),
        (["--format=torchscript", "--output=FOLDER"], ["--output", "found a folder"]),
    ],
)
def test_bad_arguments_are_one_line_errors(tmp_path, args, words):
    save_model(tmp_path / "models", "sciml_ae")
    (tmp_path / "empty").mkdir()
    (tmp_path / "folder").mkdir()
    given = {"--model_dir": str(tmp_path / "models"), "--output": str(tmp_path / "x.onnx")}
    for arg in args:
        key, value = arg.split("=")
        given[key] = {
            "EMPTY": str(tmp_path / "empty"),
            "MISSING": str(tmp_path / "nope"),
            "FOLDER": str(tmp_path / "folder"),
        }.get(value, value)
    res = subprocess.run(
        [sys.executable, "-m", "emdenoise", "export", *(f"{k}={v}" for k, v in given.items())],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=ENV,
        timeout=300,
    )
    one_error(res.returncode, res.stderr, 2, *words)
    assert not (tmp_path / "x.onnx").exists()


def test_an_export_that_differs_is_never_written(tmp_path, monkeypatch):
    """The check before writing: a wrapper that computes something else (here: a wrong output offset) fails
    in one line and leaves no file."""
    model_file = save_model(tmp_path / "models", "sciml_ae")
    original = export.folded

    def shifted(net, meta):
        module = original(net, meta)
        module.out_mean += 0.1
        return module

    monkeypatch.setattr(export, "folded", shifted)
    out = tmp_path / "m.pt"
    with pytest.raises(export.RuntimeFailure, match="differs from emdenoise's own output"):
        export.export(model_file, "torchscript", out)
    assert not out.exists() and temporaries(tmp_path) == []


@pytest.mark.extra("export")
@pytest.mark.parametrize(
    ("condition", "name", "options"),
    [
        ("anscombe", "ffdnet", {"depth": 3, "channels": 8}),
        ("flatfield+noise_level", "ffdnet", {"depth": 3, "channels": 8}),
        ("wiener_prior", "unet", {"base": 4}),
    ],
)
def test_a_conditioned_model_exports_with_its_conditioning_inside(tmp_path, condition, name, options):
    """train.condition runs inside the network: both formats compute what the Denoiser computes from the file
    (export.export checks it on an odd-sized frame before writing) and record the choice."""
    torch.manual_seed(0)
    net = conditioning.build(name, options, condition, NORM)
    for p in net.parameters():  # the noise mixing and the prior's channel start at zero: make them count
        torch.nn.init.normal_(p, std=0.2)
    model_file = tmp_path / name / "em_denoise_model.h5"
    modelfile.save_model(
        model_file, net, {"model": name, "options": options, "normalisation": NORM, "condition": condition}
    )
    for fmt in export.FORMATS:
        if fmt == "onnx" and condition in export.NO_ONNX:
            with pytest.raises(InputError, match=f"{model_file}: condition: .*{condition}.*--format=torchscript"):
                export.export(model_file, fmt, tmp_path / f"m.{fmt}")
            assert not (tmp_path / f"m.{fmt}").exists()
            continue
        info = export.export(model_file, fmt, tmp_path / f"m.{fmt}")
        assert info["condition"] == condition and info["check_difference"] <= export.TOLERANCE
    scripted = torch.jit.load(str(tmp_path / "m.torchscript"))
    frames = torch.from_numpy(_frames((50, 70), 5))
    with torch.no_grad():
        _close(Denoiser.from_file(model_file).denoise(frames).numpy(), scripted(frames).numpy())
