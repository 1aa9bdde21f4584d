"""``emdenoise export``: a trained model as a file that runs without emdenoise (ONNX or TorchScript).

    emdenoise export --model_dir=workspace/models [--model=unet] --format=onnx --output=unet.onnx

The exported network is :class:`Folded`: the model file's network with its normalisation folded in, so it
maps raw frames to raw frames exactly as :class:`emdenoise.inference.denoiser.Denoiser` does (one frame or a
batch, no tiling)::

    float32 (N, 1, H, W) raw units -> (x - noisy.mean) / noisy.std -> network -> * clean.std + clean.mean

H and W are free (at least :data:`MIN_SIDE`); a network that needs multiples of k (``size_multiple``, see
:mod:`emdenoise.models`) gets its input padded on the bottom and right by mirroring, as the network itself
does, and the output cropped back. The same numbers are recorded in the file's metadata (:func:`metadata`:
ONNX ``metadata_props``, TorchScript ``_extra_files["emdenoise.json"]``) with the model name, options, pixel
size of the training data (when the model file has it) and the emdenoise version.

How: a scripted wrapper (the normalisation and the padding, whose amounts depend on the input's size)
around the traced network (traced at a size it needs no padding for); saved as TorchScript, or converted
by ``torch.onnx.export`` with dynamic batch, height and width. Before the file is written the export is run
on a frame of an awkward size and compared with the package's own output (:data:`TOLERANCE`); the file is
written atomically. ONNX needs the optional extra ``emdenoise[export]`` (onnx, onnxruntime).
"""

from __future__ import annotations

import argparse
import io
import json
import logging
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from emdenoise import __version__
from emdenoise.errors import EXIT_OK, InputError, RuntimeFailure
from emdenoise.inference.denoiser import Denoiser
from emdenoise.io import modelfile
from emdenoise.layout import select_model
from emdenoise.outputs import check_output, sha256_file, write_bytes_atomic

FORMATS = ("onnx", "torchscript")
EXPORT_FORMAT = "emdenoise-export/1"
METADATA_FILE = "emdenoise.json"  # the TorchScript extra file holding the metadata
INPUT_NAME, OUTPUT_NAME = "noisy", "denoised"
MIN_SIDE = 16  # smallest H and W: larger than any padding a network adds by mirroring
TRACE_SIDE = 64  # the frame size the TorchScript network is traced at (a multiple of every size_multiple)
CHECK_SHAPE = (2, 1, 37, 53)  # the frame the export is checked on before it is written (odd sizes: padding)
# Largest difference from the package's output allowed, relative to the output's range (float32 rounding
# in a different order of operations: measured below 1e-5 on every architecture, 7.6e-6 for the default unet)
TOLERANCE = 1e-4
ONNX_OPSET = 18
NO_ONNX = ("wiener_prior",)  # conditions whose FFTs torch cannot export to ONNX (TorchScript holds them)


class Folded(nn.Module):
    """``net`` with the normalisation folded in and its padding done outside it: raw (N, 1, H, W) in, raw out.

    The arithmetic is the :class:`~emdenoise.inference.denoiser.Denoiser`'s; the padding is the network's own
    (mirror the bottom and right up to a multiple of ``multiple``), so the network, traced, never pads."""

    def __init__(
        self, net: nn.Module, noisy: tuple[float, float], clean: tuple[float, float], multiple: int = 1
    ) -> None:
        super().__init__()
        self.net = net
        self.in_mean, self.in_std = float(noisy[0]), float(noisy[1])
        self.out_mean, self.out_std = float(clean[0]), float(clean[1])
        self.multiple = int(multiple)

    def forward(self, noisy: torch.Tensor) -> torch.Tensor:
        h, w = noisy.shape[2], noisy.shape[3]
        pad_h = (self.multiple - h % self.multiple) % self.multiple
        pad_w = (self.multiple - w % self.multiple) % self.multiple
        x = (noisy.float() - self.in_mean) / self.in_std
        x = F.pad(x, [0, pad_w, 0, pad_h], mode="reflect")
        y = self.net(x)[:, :, :h, :w]
        return y * self.out_std + self.out_mean


def folded(net: nn.Module, meta: dict[str, Any]) -> Folded:
    """:class:`Folded` for a network and its model file's ``meta`` (from :func:`modelfile.load_model`)."""
    norm = meta["normalisation"]
    return Folded(
        net.eval(),
        (norm["noisy"]["mean"], norm["noisy"]["std"]),
        (norm["clean"]["mean"], norm["clean"]["std"]),
        getattr(net, "size_multiple", 1),
    )


def metadata(meta: dict[str, Any], model_file: Path, fmt: str) -> dict[str, Any]:
    """What an exported file records about itself (JSON-able)."""
    return {
        "format": EXPORT_FORMAT,
        "export_format": fmt,
        "model": meta["model"],
        "options": meta.get("options") or {},
        "normalisation": meta["normalisation"],
        "normalisation_folded": True,
        "condition": meta.get("condition", "none"),  # train.condition: inside the network when not none
        "arithmetic": "(x - normalisation.noisy.mean) / normalisation.noisy.std -> network -> "
        "* normalisation.clean.std + normalisation.clean.mean",
        "input": f"{INPUT_NAME}: float32 (N, 1, H, W) in raw units (as the training data), H and W >= {MIN_SIDE}",
        "output": f"{OUTPUT_NAME}: float32 (N, 1, H, W) in raw units",
        "pixel_size": meta.get("pixel_size"),
        "data_range": meta.get("data_range"),
        "emdenoise_version": __version__,
        "trained_with": meta.get("emdenoise_version"),
        "model_file": model_file.name,
        "model_sha256": sha256_file(model_file),
    }


def to_torchscript(module: Folded) -> torch.jit.ScriptModule:
    """The scripted wrapper around the traced network (see the module's docstring)."""
    # tracing warns about every shape read as a Python int (the check of the result is what counts), and
    # torch deprecates TorchScript (it still works)
    noisy, clean = (module.in_mean, module.in_std), (module.out_mean, module.out_std)
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        traced = torch.jit.trace(module.net, torch.zeros(1, 1, TRACE_SIDE, TRACE_SIDE), check_trace=False)
        return torch.jit.script(Folded(traced, noisy, clean, module.multiple))


def _onnx_modules() -> tuple[Any, Any]:
    try:
        import onnx
        import onnxruntime
    except ImportError as exc:
        raise RuntimeFailure(
            f"--format=onnx needs the optional packages onnx and onnxruntime ({exc.name} is missing): "
            "pip install 'emdenoise[export]'"
        ) from None
    return onnx, onnxruntime


def to_onnx(scripted: torch.jit.ScriptModule, info: dict[str, Any]) -> bytes:
    """The serialised ONNX model of the scripted :class:`Folded` (:func:`to_torchscript`), dynamic in N, H and
    W, with ``info`` in its metadata_props (one entry per key, JSON values; the whole record under
    ``emdenoise``).

    torch's TorchScript-based exporter (``dynamo=False``) turns the scripted padding into ONNX operations on
    the input's shape; the torch.export-based one cannot: it needs every size-dependent branch of the
    padding (is there a pad? is it smaller than the side?) decided for all sizes at once, and refuses."""
    onnx, _ = _onnx_modules()
    axes = {0: "batch", 2: "height", 3: "width"}
    buffer = io.BytesIO()
    torch_log = logging.getLogger("torch")
    previous = torch_log.level
    torch_log.setLevel(logging.ERROR)  # the exporter logs its progress at INFO
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the TorchScript-based exporter is deprecated in favour of dynamo
            torch.onnx.export(
                scripted,
                (torch.zeros(2, 1, TRACE_SIDE, TRACE_SIDE),),
                buffer,  # type: ignore[arg-type]  # the TorchScript-based exporter writes to file objects
                dynamo=False,
                input_names=[INPUT_NAME],
                output_names=[OUTPUT_NAME],
                dynamic_axes={INPUT_NAME: axes, OUTPUT_NAME: axes},
                opset_version=ONNX_OPSET,
            )
    finally:
        torch_log.setLevel(previous)
    proto = onnx.load_from_string(buffer.getvalue())
    proto.doc_string = f"emdenoise {info['model']}: {info['input']} -> {info['output']}; {info['arithmetic']}"
    entries = {"emdenoise": json.dumps(info, sort_keys=True)}
    entries.update({key: value if isinstance(value, str) else json.dumps(value) for key, value in info.items()})
    onnx.helper.set_model_props(proto, entries)
    onnx.checker.check_model(proto)
    return bytes(proto.SerializeToString())


def run_onnx(data: bytes, frames: np.ndarray) -> np.ndarray:
    """Run serialised ONNX ``data`` on ``frames`` (float32 (N, 1, H, W)) with onnxruntime on the CPU."""
    _, ort = _onnx_modules()
    session = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
    return np.asarray(session.run([OUTPUT_NAME], {INPUT_NAME: frames.astype(np.float32)})[0])


def check(expected: np.ndarray, got: np.ndarray, what: str) -> float:
    """The largest difference of ``got`` from ``expected`` relative to expected's range; a RuntimeFailure past
    :data:`TOLERANCE` (an export that would not compute what the package computes is never written)."""
    if got.shape != expected.shape:
        raise RuntimeFailure(f"{what}: output shape {got.shape}, expected {expected.shape} (export failed)")
    scale = max(float(np.ptp(expected)), 1e-12)
    worst = float(np.max(np.abs(got.astype(np.float64) - expected))) / scale
    if not worst <= TOLERANCE:
        raise RuntimeFailure(
            f"{what}: differs from emdenoise's own output by {worst:.3g} of the output range "
            f"(tolerance {TOLERANCE:g}); nothing written"
        )
    return worst


def export(model_file: Path, fmt: str, output: Path, log: logging.Logger | None = None) -> dict[str, Any]:
    """Export the model file ``model_file`` to ``output`` (written atomically) in ``fmt``; returns the metadata
    recorded in it, with ``check_difference`` (the relative difference measured on the check frame)."""
    if fmt not in FORMATS:
        raise InputError.at(output, "--format", f"expected one of {', '.join(FORMATS)}, got {fmt!r}")
    net, meta = modelfile.load_model(model_file, "cpu")
    if fmt == "onnx" and meta["condition"] in NO_ONNX:
        raise InputError.at(
            model_file,
            "condition",
            f"expected a condition ONNX can hold; {meta['condition']} takes FFTs, which ONNX {ONNX_OPSET} cannot "
            "export: use --format=torchscript",
        )
    info = metadata(meta, Path(model_file), fmt)
    module = folded(net, meta)
    frames = torch.from_numpy(np.random.default_rng(0).random(CHECK_SHAPE, dtype=np.float32))
    norm = meta["normalisation"]["noisy"]
    frames = frames * 2 * float(norm["std"]) + float(norm["mean"]) - float(norm["std"])
    expected = Denoiser(net, meta, "cpu", "fp32").denoise(frames).numpy()
    scripted = to_torchscript(module)
    if fmt == "onnx":
        data = to_onnx(scripted, info)
        worst = check(expected, run_onnx(data, frames.numpy()), f"{output}: the ONNX export")
        write_bytes_atomic(output, data)
    else:
        buffer = io.BytesIO()
        extra = {METADATA_FILE: json.dumps(info, indent=2, sort_keys=True)}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # torch deprecates TorchScript (it still works)
            torch.jit.save(scripted, buffer, _extra_files=extra)
            buffer.seek(0)
            loaded = torch.jit.load(buffer)
        with torch.no_grad():
            worst = check(expected, loaded(frames).numpy(), f"{output}: the TorchScript export")
        write_bytes_atomic(output, buffer.getvalue())
    if log is not None:
        log.info(
            "%s: %s %s (%s), normalisation folded in, checked on %s frames: largest difference %.2g of the range",
            output,
            fmt,
            info["model"],
            model_file,
            "x".join(map(str, CHECK_SHAPE[2:])),
            worst,
        )
    return {**info, "check_difference": worst}


def command(args: argparse.Namespace, log: logging.Logger) -> int:
    """``emdenoise export``: the options (:mod:`emdenoise.cli`) checked, the model exported; exit code 0."""
    output = Path(args.output)
    if args.format not in FORMATS:
        raise InputError.at(output, "--format", f"expected one of {', '.join(FORMATS)}, got {args.format!r}")
    check_output(output, "--output", "file")
    _, model_file = select_model(Path(args.model_dir), args.model, "--model")
    export(model_file, args.format, output, log)
    return EXIT_OK
