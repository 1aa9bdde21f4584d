"""Model files and training checkpoints as real HDF5 files: weights as datasets, everything else as attributes.

The original benchmark named its model ``em_denoise_model.h5`` but wrote a pickle (``torch.save(model)``),
and loading a pickle runs code. Here nothing is ever pickled or unpickled: weights are numeric HDF5 datasets,
metadata are JSON strings in attributes, and a loader accepts only numeric datasets of the expected names and
shapes.

Model file (``format = "emdenoise-model/1"``)::

    attrs   format, model, options (JSON), normalisation (JSON: {"noisy": {"mean", "std"}, "clean": {...}}),
            train_config (JSON), metrics (JSON), data_range (float, may be absent), parameters (int),
            emdenoise_version, pixel_size (float: A/px of the training data; absent when unknown, read as None),
            pixel_size_range (2 floats: [min, max] A/px of the training data; absent when unknown or older),
            supervision (JSON, may be absent = clean: {"mode": train.supervision, and for
            poisson_split "count_scale_source", "count_scale_median"}),
            condition (train.condition, :mod:`emdenoise.models.conditioning`; absent = none: the state
            then holds the bare model's tensors, else the wrapper's: "net.<key>" and "mix.<key>")
            input_units (absent: the frames it was trained on, whatever they were; "counts / dose": training
            frames of counts divided by their dose, which denoise brings a user's frames to,
            :mod:`emdenoise.inference.levels`)
    state/  one dataset per ``state_dict`` entry, named by its key (e.g. "encoders.0.0.weight"),
            float32 / int64 as in the model

Checkpoint (``format = "emdenoise-checkpoint/1"``)::

    attrs   format, model, options (JSON), fingerprint, epoch, emdenoise_version,
            config (JSON: the configuration the fingerprint hashes),
            payload (JSON: {"optimizer", "scheduler", "state"} with every tensor or array replaced by a
            reference {"__tensor__": i} / {"__ndarray__": i}; tuples and non-string dict keys are tagged)
    state/  the model weights, as in a model file
    tensors/0, tensors/1, ...  the payload's tensors and arrays (optimizer moments, RNG states ...)

Both are sealed (:mod:`emdenoise.io.h5safe`): a 512-byte HDF5 user block holds the sha256 of the rest of the
file, checked before h5py reads anything, so a damaged file is refused in one line and never parsed.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import torch
from torch import nn

from emdenoise import __version__, models
from emdenoise.data.card import check_normalisation, pixel_range_or_none, pixel_size_or_none
from emdenoise.errors import InputError
from emdenoise.io import budget, h5safe
from emdenoise.models import conditioning
from emdenoise.outputs import atomic_path
from emdenoise.training.choices import CONDITIONS

MODEL_FORMAT = "emdenoise-model/1"
CHECKPOINT_FORMAT = "emdenoise-checkpoint/1"
META_KEYS = (
    "model",
    "options",
    "normalisation",
    "train_config",
    "metrics",
    "data_range",
    "pixel_size",
    "pixel_size_range",
    "supervision",
    "condition",
    "input_units",
)
_JSON_ATTRS = ("options", "normalisation", "train_config", "metrics")
_NUMERIC_KINDS = "biuf"  # bool, signed, unsigned, float: nothing else is ever read as a tensor


# ---------------------------------------------------------------------------------------------- writing


def _write_state(group: h5py.Group, model: nn.Module) -> None:
    for key, tensor in model.state_dict().items():
        if "/" in key:
            raise ValueError(f"state_dict key {key!r} contains '/', which HDF5 would read as a path")
        group.create_dataset(key, data=tensor.detach().cpu().numpy())


def _dumps(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, allow_nan=True)


def save_model(path: str | Path, model: nn.Module, meta: dict[str, Any]) -> None:
    """Write ``model`` and ``meta`` (keys from META_KEYS; model, options, normalisation required) atomically."""
    unknown = set(meta) - set(META_KEYS)
    if unknown:
        raise ValueError(f"unknown meta keys {sorted(unknown)}; expected some of {META_KEYS}")
    for key in ("model", "options", "normalisation"):
        if key not in meta:
            raise ValueError(f"meta needs {key!r}")
    with atomic_path(path) as tmp, h5safe.create_sealed(tmp) as fh:
        fh.attrs["format"] = MODEL_FORMAT
        fh.attrs["model"] = str(meta["model"])
        for key in _JSON_ATTRS:
            fh.attrs[key] = _dumps(meta.get(key) or {})
        if meta.get("data_range") is not None:
            fh.attrs["data_range"] = float(meta["data_range"])
        if meta.get("pixel_size") is not None:
            fh.attrs["pixel_size"] = float(meta["pixel_size"])
        if meta.get("pixel_size_range") is not None:
            fh.attrs["pixel_size_range"] = np.asarray(meta["pixel_size_range"], dtype=np.float64)
        if meta.get("supervision") is not None:
            fh.attrs["supervision"] = _dumps(meta["supervision"])
        if meta.get("condition", "none") != "none":
            fh.attrs["condition"] = str(meta["condition"])
        if meta.get("input_units"):
            fh.attrs["input_units"] = str(meta["input_units"])
        fh.attrs["parameters"] = models.count_parameters(model)
        fh.attrs["emdenoise_version"] = __version__
        _write_state(fh.create_group("state"), model)


# ---------------------------------------------------------------------------------------------- reading


def _open(path: Path) -> h5py.File:
    """Open ``path`` read-only as HDF5 or raise a one-line InputError. The file's seal is checked first
    (:mod:`emdenoise.io.h5safe`): libhdf5 never parses a damaged file, a pickle or a file from elsewhere."""
    if not path.exists():
        raise InputError.at(path, None, "file not found")
    if not path.is_file():
        raise InputError.at(path, None, "expected an HDF5 file, found a folder")
    try:
        return h5safe.open_sealed(path)
    except OSError as exc:
        raise InputError.at(path, None, f"expected a readable HDF5 file, got {exc}") from None


@contextlib.contextmanager
def _reading(path: Path) -> Iterator[h5py.File]:
    """:func:`_open`, and what h5py raises while reading a damaged file (truncated, bytes changed) becomes a
    one-line InputError too."""
    with _open(path) as fh:
        try:
            yield fh
        except (OSError, RuntimeError, KeyError, TypeError, ValueError) as exc:
            raise InputError.at(
                path, None, f"expected an intact HDF5 file, this one is damaged ({' '.join(str(exc).split())})"
            ) from None


def _check_format(path: Path, fh: h5py.File, expected: str) -> None:
    got = fh.attrs.get("format")
    if not isinstance(got, str):
        raise InputError.at(path, "format", f"expected attribute {expected!r}, got {got!r} (not an emdenoise file)")
    kind, _, version = expected.partition("/")
    got_kind, _, got_version = got.partition("/")
    if got_kind != kind:
        raise InputError.at(path, "format", f"expected {expected!r}, got {got!r}")
    if got_version.split(".")[0] != version.split(".")[0]:
        raise InputError.at(
            path,
            "format",
            f"expected major version {version} ({expected!r}), got {got!r}; this file needs another emdenoise version",
        )


def _attr_str(path: Path, fh: h5py.File, name: str) -> str:
    value = fh.attrs.get(name)
    if isinstance(value, bytes):
        value = value.decode("utf-8", "replace")
    if not isinstance(value, str):
        raise InputError.at(path, name, f"expected a string attribute, got {value!r}")
    return value


def _attr_json(path: Path, fh: h5py.File, name: str) -> Any:
    try:
        return json.loads(_attr_str(path, fh, name))
    except ValueError as exc:
        raise InputError.at(path, name, f"expected a JSON attribute ({exc})") from None


def _build(path: Path, meta: dict[str, Any]) -> nn.Module:
    """The file's network, conditioned as it was trained (weights not yet loaded)."""
    name, options = meta["model"], meta["options"]
    if name not in models.names():
        raise InputError.at(path, "model", f"expected one of {', '.join(models.names())}, got {name!r}")
    if not isinstance(options, dict):
        raise InputError.at(path, "options", f"expected a JSON object, got {options!r}")
    try:
        return conditioning.build(name, options, meta["condition"], meta["normalisation"])
    except (TypeError, ValueError) as exc:
        raise InputError.at(path, "options", f"expected options of model {name!r}, got {options!r} ({exc})") from None


def _read_state(path: Path, fh: h5py.File, model: nn.Module) -> None:
    """Check that ``state/`` holds exactly the model's tensors, with their shapes, and load them."""
    group = fh.get("state")
    if not isinstance(group, h5py.Group):
        raise InputError.at(path, "state", "expected a group of weight datasets")
    expected = model.state_dict()
    extra = sorted(set(group.keys()) - set(expected))
    if extra:
        raise InputError.at(
            path,
            f"state/{extra[0]}",
            f"unexpected tensor for model "
            f"{model.__class__.__name__} ({len(extra)} extra; another architecture or options?)",
        )
    loaded = {}
    for key, ref in expected.items():
        ds = group.get(key)
        if not isinstance(ds, h5py.Dataset):
            raise InputError.at(
                path, f"state/{key}", "expected a weight dataset, missing (another architecture or options?)"
            )
        if ds.dtype.kind not in _NUMERIC_KINDS:
            raise InputError.at(path, f"state/{key}", f"expected a numeric dataset, got dtype {ds.dtype}")
        if tuple(ds.shape) != tuple(ref.shape):
            raise InputError.at(path, f"state/{key}", f"expected shape {tuple(ref.shape)}, got {tuple(ds.shape)}")
        if (ds.dtype.kind == "f") != ref.is_floating_point():
            raise InputError.at(path, f"state/{key}", f"expected a {ref.dtype} dataset, got {ds.dtype}")
        loaded[key] = torch.from_numpy(np.asarray(ds[()])).to(ref.dtype)
    model.load_state_dict(loaded, strict=True)


def _pixel_size(path: Path, value: Any) -> float | None:
    """The ``pixel_size`` attribute: None when absent, else a positive finite number (A/px)."""
    if value is None:
        return None
    size = pixel_size_or_none(value)
    if size is None:
        raise InputError.at(path, "pixel_size", f"expected a positive number of A/px, got {value!r}")
    return size


def _pixel_range(path: Path, value: Any) -> list[float] | None:
    """The ``pixel_size_range`` attribute ([min, max] A/px the model was trained over): None when absent."""
    if value is None:
        return None
    sizes = pixel_range_or_none(value)
    if sizes is None:
        raise InputError.at(path, "pixel_size_range", f"expected [min, max] A/px with 0 < min <= max, got {value!r}")
    return sizes


def _condition(path: Path, fh: h5py.File) -> str:
    """The ``condition`` attribute (train.condition): none when absent (files written before it)."""
    if "condition" not in fh.attrs:
        return "none"
    value = _attr_str(path, fh, "condition")
    if value not in CONDITIONS:
        raise InputError.at(path, "condition", f"expected one of {', '.join(CONDITIONS)}, got {value!r}")
    return value


def load_model(path: str | Path, device: str | torch.device = "cpu") -> tuple[nn.Module, dict[str, Any]]:
    """Read a model file: ``(model on device in eval mode, meta)``; meta has META_KEYS plus format,
    parameters, emdenoise_version and path. Any problem is a one-line InputError naming file and field."""
    path = Path(path)
    with _reading(path) as fh:
        _check_format(path, fh, MODEL_FORMAT)
        name = _attr_str(path, fh, "model")
        meta: dict[str, Any] = {"format": _attr_str(path, fh, "format"), "model": name}
        for key in _JSON_ATTRS:
            meta[key] = _attr_json(path, fh, key)
        check_normalisation(path, meta["normalisation"])
        data_range = fh.attrs.get("data_range")
        meta["data_range"] = None if data_range is None else float(data_range)
        meta["pixel_size"] = _pixel_size(path, fh.attrs.get("pixel_size"))
        meta["pixel_size_range"] = _pixel_range(path, fh.attrs.get("pixel_size_range"))
        # how it was trained (train.supervision and its count scale); files written before it: clean targets
        meta["supervision"] = _attr_json(path, fh, "supervision") if "supervision" in fh.attrs else {"mode": "clean"}
        version = fh.attrs.get("emdenoise_version")
        meta["emdenoise_version"] = version if isinstance(version, str) else None
        meta["condition"] = _condition(path, fh)
        meta["input_units"] = _attr_str(path, fh, "input_units") if "input_units" in fh.attrs else None
        model = _build(path, meta)
        _read_state(path, fh, model)
    meta["parameters"] = models.count_parameters(model)
    meta["path"] = str(path)
    return model.to(device).eval(), meta


# ---------------------------------------------------------------------------------------------- checkpoints


def fingerprint(config: dict[str, Any]) -> str:
    """sha256 (hex) of the canonical JSON of ``config``: equal configurations, equal fingerprints."""
    text = json.dumps(config, sort_keys=True, separators=(",", ":"), allow_nan=False)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _flatten(obj: Any, arrays: list[np.ndarray]) -> Any:
    """JSON-able skeleton of ``obj``; tensors and arrays go to ``arrays`` and are replaced by references."""
    if isinstance(obj, torch.Tensor):
        t = obj.detach().cpu()
        dtype = str(t.dtype).removeprefix("torch.")
        if t.dtype == torch.bfloat16 or t.dtype == torch.float16:
            t = t.float()
        arrays.append(t.numpy())
        return {"__tensor__": len(arrays) - 1, "dtype": dtype}
    if isinstance(obj, np.ndarray):
        arrays.append(obj)
        return {"__ndarray__": len(arrays) - 1}
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, tuple):
        return {"__tuple__": [_flatten(v, arrays) for v in obj]}
    if isinstance(obj, list):
        return [_flatten(v, arrays) for v in obj]
    if isinstance(obj, dict):
        if all(isinstance(k, str) and not k.startswith("__") for k in obj):
            return {k: _flatten(v, arrays) for k, v in obj.items()}
        return {"__items__": [[_flatten(k, arrays), _flatten(v, arrays)] for k, v in obj.items()]}
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    if isinstance(obj, torch.dtype):
        return {"__dtype__": str(obj).removeprefix("torch.")}
    raise TypeError(f"cannot store a {type(obj).__name__} in a checkpoint")


def _unflatten(obj: Any, arrays: h5py.Group, path: Path) -> Any:
    if isinstance(obj, list):
        return [_unflatten(v, arrays, path) for v in obj]
    if not isinstance(obj, dict):
        return obj
    if "__tensor__" in obj or "__ndarray__" in obj:
        key = str(obj.get("__tensor__", obj.get("__ndarray__")))
        ds = arrays.get(key)
        if not isinstance(ds, h5py.Dataset) or ds.dtype.kind not in _NUMERIC_KINDS:
            raise InputError.at(path, f"tensors/{key}", "expected a numeric dataset")
        budget.check(path, f"tensors/{key}", ds.size * ds.dtype.itemsize, f"shape {tuple(ds.shape)} {ds.dtype}")
        value = np.asarray(ds[()])
        if "__ndarray__" in obj:
            return value
        dtype = getattr(torch, obj.get("dtype", ""), None)
        if not isinstance(dtype, torch.dtype):
            raise InputError.at(path, f"tensors/{key}", f"expected a torch dtype, got {obj.get('dtype')!r}")
        return torch.from_numpy(value).to(dtype)
    if "__tuple__" in obj:
        return tuple(_unflatten(v, arrays, path) for v in obj["__tuple__"])
    if "__items__" in obj:
        return {_unflatten(k, arrays, path): _unflatten(v, arrays, path) for k, v in obj["__items__"]}
    if "__dtype__" in obj:
        return getattr(torch, obj["__dtype__"])
    return {k: _unflatten(v, arrays, path) for k, v in obj.items()}


def save_checkpoint(
    path: str | Path, model: nn.Module, optimizer: torch.optim.Optimizer, scheduler: Any, state: dict[str, Any]
) -> None:
    """Write a resumable checkpoint atomically. ``state`` needs ``model`` (name), ``options``, ``fingerprint``
    and ``epoch``; an optional ``config`` (the fingerprinted configuration) is also put in the header, to
    explain a mismatch; everything else in it (history, RNG states from runtime.rng_state() ...) is kept."""
    for key in ("model", "options", "fingerprint", "epoch"):
        if key not in state:
            raise ValueError(f"checkpoint state needs {key!r}")
    arrays: list[np.ndarray] = []
    payload = _flatten(
        {
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict() if scheduler is not None else None,
            "state": state,
        },
        arrays,
    )
    with atomic_path(path) as tmp, h5safe.create_sealed(tmp) as fh:
        fh.attrs["format"] = CHECKPOINT_FORMAT
        fh.attrs["model"] = str(state["model"])
        fh.attrs["options"] = _dumps(state["options"])
        fh.attrs["fingerprint"] = str(state["fingerprint"])
        fh.attrs["epoch"] = int(state["epoch"])
        fh.attrs["emdenoise_version"] = __version__
        fh.attrs["config"] = _dumps(state.get("config") or {})
        fh.attrs["payload"] = _dumps(payload)
        _write_state(fh.create_group("state"), model)
        group = fh.create_group("tensors")
        for i, array in enumerate(arrays):
            group.create_dataset(str(i), data=array)


def checkpoint_info(path: str | Path) -> dict[str, Any]:
    """The header of a checkpoint without loading it: model, options, fingerprint, epoch, config."""
    path = Path(path)
    with _reading(path) as fh:
        _check_format(path, fh, CHECKPOINT_FORMAT)
        epoch = fh.attrs.get("epoch")
        if not isinstance(epoch, (int, np.integer)):
            raise InputError.at(path, "epoch", f"expected an integer attribute, got {epoch!r}")
        return {
            "model": _attr_str(path, fh, "model"),
            "options": _attr_json(path, fh, "options"),
            "fingerprint": _attr_str(path, fh, "fingerprint"),
            "epoch": int(epoch),
            "config": _attr_json(path, fh, "config") if "config" in fh.attrs else {},
        }


def load_checkpoint(
    path: str | Path, model: nn.Module, optimizer: torch.optim.Optimizer | None = None, scheduler: Any = None
) -> dict[str, Any]:
    """Load weights into ``model`` (and the optimizer's and scheduler's states when given); return ``state``
    as passed to :func:`save_checkpoint` (tensors come back as CPU tensors, tuples as tuples)."""
    path = Path(path)
    with _reading(path) as fh:
        _check_format(path, fh, CHECKPOINT_FORMAT)
        _read_state(path, fh, model)
        tensors = fh.get("tensors")
        if not isinstance(tensors, h5py.Group):
            raise InputError.at(path, "tensors", "expected a group of datasets")
        payload = _unflatten(_attr_json(path, fh, "payload"), tensors, path)
    if not isinstance(payload, dict) or not isinstance(payload.get("state"), dict):
        raise InputError.at(path, "payload", "expected {optimizer, scheduler, state}")
    try:
        if optimizer is not None:
            optimizer.load_state_dict(payload["optimizer"])
        if scheduler is not None and payload.get("scheduler") is not None:
            scheduler.load_state_dict(payload["scheduler"])
    except (KeyError, ValueError, TypeError) as exc:
        raise InputError.at(path, "payload.optimizer", f"expected the state of this optimizer ({exc})") from None
    return payload["state"]
