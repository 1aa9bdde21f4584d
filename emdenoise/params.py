"""The one parameters schema: a YAML file with one section per task, validated before any work starts.

Every key has a type, a default, a range or a set of choices, and a line of help (the README's parameters
reference is generated from this table by ``python -m emdenoise params``). Unknown keys are errors with a
did-you-mean hint; ``--set section.key=value`` overrides a value from the command line.
"""

from __future__ import annotations

import difflib
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import yaml

from emdenoise.errors import InputError

MODEL_NAMES = ("cafcn", "dncnn", "ffdnet", "unet", "rednet", "mscnn", "msdnet", "sciml_ae")
BASELINE_NAMES = ("gaussian", "median", "tv", "nlm", "bm3d", "anscombe_bm3d")
# The largest seed: NumPy's legacy seeding and many tools take 32-bit seeds, and torch.manual_seed fails on
# values of 2**64 and above (training derives per-epoch generator seeds from it, which must stay below 2**63).
MAX_SEED = 2**32 - 1


@dataclass(frozen=True)
class Field:
    """One parameter. ``kind`` is one of: int, float, str, bool, names (a name, a list of names, or 'all'),
    ints (a non-empty list of distinct integers, each within ``min`` and ``max``)."""

    kind: str
    default: Any
    help: str
    min: float | None = None
    max: float | None = None
    choices: tuple[str, ...] | None = None
    check: Callable[[Any], str | None] | None = field(default=None, compare=False)

    def describe(self) -> str:
        """What a valid value looks like, for error messages."""
        if self.kind == "names":
            return f"'all', one of {', '.join(self.choices)}, or a list of them"
        if self.choices:
            return "one of " + ", ".join(repr(c) for c in self.choices)
        what = {"int": "an integer", "float": "a number", "str": "a string", "bool": "true or false",
                "ints": "a list of distinct integers"}[self.kind]
        if self.min is not None and self.max is not None:
            what += f" in [{self.min}, {self.max}]"
        elif self.min is not None:
            what += f" >= {self.min}"
        elif self.max is not None:
            what += f" <= {self.max}"
        return what


def _source_check(value: str) -> str | None:
    named = ("synthetic", "stfc", "osn", "minibatch")
    if value in named or value.startswith(("http://", "https://", "s3://", "file://", "/", "./", "../", "~")):
        return None
    if Path(value).suffix == ".zip" or "/" in value:
        return None
    return (f"one of {', '.join(named)}{_hint(value.lower(), named)}, an http(s):// or s3:// URL, or a local "
            f"folder or .zip")


def _device_check(value: str) -> str | None:
    """The one rule for every ``device`` key."""
    if value in ("auto", "cpu", "cuda") or (value.startswith("cuda:") and value[5:].isdigit()):
        return None
    return "auto, cpu, cuda or cuda:N"


def _even_check(value: int) -> str | None:
    return None if value % 2 == 0 else "an even number"


SCHEMA: dict[str, dict[str, Field]] = {
    "download": {
        "source": Field("str", "synthetic", "where the data come from: synthetic, stfc, osn, minibatch, an "
                        "http(s):// or s3:// URL, or a local folder or .zip in the em_graphene_sim layout",
                        check=_source_check),
        "seed": Field("int", 0, "synthetic: random seed (same seed, same bytes)", min=0, max=MAX_SEED),
        "train_images": Field("int", 512, "synthetic: number of training pairs", min=1, max=1_000_000),
        "test_images": Field("int", 128, "synthetic: number of test pairs", min=1, max=1_000_000),
        "image_size": Field("int", 256, "synthetic: image side in pixels", min=32, max=4096),
        "dose_min": Field("float", 5.0, "synthetic: lowest dose, electrons per pixel at the beam centre", min=0.01,
                          max=1e6),
        "dose_max": Field("float", 100.0, "synthetic: highest dose, electrons per pixel at the beam centre",
                          min=0.01, max=1e6),
        "dead_pixel_fraction": Field("float", 0.001, "synthetic: fraction of dead (zero) pixels", min=0.0,
                                     max=0.5),
        "workers": Field("int", 0, "synthetic: worker processes (0: one per core); never changes the output",
                         min=0, max=256),
        "endpoint": Field("str", "https://s3.echo.stfc.ac.uk", "S3 endpoint used for s3://bucket/prefix sources"),
        "page_size": Field("int", 1000, "objects per S3 ListObjectsV2 page", min=1, max=1000),
        "retries": Field("int", 5, "attempts per request on timeouts and 5xx answers", min=1, max=100),
        "timeout": Field("float", 60.0, "seconds of silence from a server before retrying (connecting: at most "
                         "10 s)", min=0.1, max=86_400.0),
        "max_archive_bytes": Field("int", 64 * 2**30, "largest total uncompressed size accepted from a zip",
                                   min=1),
    },
    "preprocess": {
        "val_fraction": Field("float", 0.1, "fraction of the training pairs held out for validation (rounded; "
                              "at least one pair, at least one left for training)", min=0.0, max=0.9),
        "seed": Field("int", 0, "random seed of the train/val split", min=0, max=MAX_SEED),
    },
    "train": {
        "model": Field("names", "sciml_ae", "model(s) to train: a name, a list, or all", choices=MODEL_NAMES),
        "epochs": Field("int", 2, "passes over the training split", min=1, max=100_000),
        "batch_size": Field("int", 16, "images per optimiser step (global, across processes)", min=1,
                            max=65_536),
        "lr": Field("float", 1e-3, "learning rate", min=0.0, max=10.0),
        "optimizer": Field("str", "adam", "optimiser", choices=("adam", "adamw", "sgd")),
        "lr_schedule": Field("str", "cosine", "learning-rate schedule over the whole run",
                             choices=("constant", "cosine", "step")),
        "loss": Field("str", "mse", "training loss on normalised images", choices=("mse", "l1")),
        "seed": Field("int", 0, "random seed (initialisation, shuffling, crops)", min=0, max=MAX_SEED),
        "device": Field("str", "auto", "auto (cuda if present, else cpu), cpu, cuda or cuda:N",
                        check=_device_check),
        "precision": Field("str", "auto", "auto (bf16 autocast where it helps), fp32, bf16 or fp16",
                           choices=("auto", "fp32", "bf16", "fp16")),
        "num_workers": Field("int", 0, "data-loader worker processes (data are in memory: 0 is usually best)",
                             min=0, max=64),
        "max_train_images": Field("int", 0, "use only the first N training pairs (0: all)", min=0),
        "patch_size": Field("int", 0, "train on random square crops of this side (0: whole images)", min=0,
                            max=4096),
        "resume": Field("str", "auto", "auto: continue from the last checkpoint of the same configuration; "
                        "never: start afresh", choices=("auto", "never")),
        "unet_base": Field("int", 32, "unet: channels of the first level (32 practical, 64 as in the paper)",
                           min=1, max=256),
        "dncnn_depth": Field("int", 17, "dncnn: number of conv layers (17 known noise, 20 blind)", min=3,
                             max=100),
        "rednet_depth": Field("int", 30, "rednet: total conv + deconv layers (even; 30 is RED30)", min=2,
                              max=100, check=_even_check),
        "msdnet_depth": Field("int", 100, "msdnet: number of layers", min=1, max=1000),
        "msdnet_width": Field("int", 1, "msdnet: feature maps per layer", min=1, max=64),
    },
    "test": {
        "models": Field("names", "all", "models to evaluate (all: every model found in model_dir; none: "
                        "baselines only)", choices=MODEL_NAMES + ("none",)),
        "baselines": Field("names", ["gaussian", "median", "tv", "nlm"],
                           "classical baselines, tuned on the val split (all: every one installed; none: models "
                           "only; bm3d and anscombe_bm3d need the optional non-commercial bm3d package)",
                           choices=BASELINE_NAMES + ("none",)),
        "batch_size": Field("int", 16, "images per inference batch", min=1, max=65_536),
        "device": Field("str", "auto", "auto, cpu, cuda or cuda:N", check=_device_check),
        "precision": Field("str", "auto", "auto, fp32, bf16 or fp16", choices=("auto", "fp32", "bf16", "fp16")),
        "max_test_images": Field("int", 0, "evaluate only the first N test pairs (0: all)", min=0),
        "tune_images": Field("int", 16, "validation pairs used to tune the baselines' parameters", min=1),
        "figure_images": Field("int", 4, "test images shown in the comparison figure", min=0, max=32),
    },
    "denoise": {
        "model": Field("str", "auto", "model to apply: a folder name in model_dir, or auto (the only model "
                       "there; an error lists the choices when there are several)"),
        "tile_size": Field("int", 256, "side of the square tiles a frame is cut into (0: whole frames; "
                           "multiples of 8 keep the models' pooling grid aligned)", min=0, max=65_536,
                           check=lambda v: None if v == 0 or v >= 16 else "0 or an integer >= 16"),
        "tile_overlap": Field("int", 32, "pixels shared by neighbouring tiles, cross-faded (at most "
                              "tile_size / 2)", min=0, max=32_768),
        "batch_size": Field("int", 8, "tiles per inference batch (tiles of consecutive frames are batched "
                            "together)", min=1, max=65_536),
        "device": Field("str", "auto", "auto, cpu, cuda or cuda:N", check=_device_check),
        "precision": Field("str", "auto", "auto, fp32, bf16 or fp16", choices=("auto", "fp32", "bf16", "fp16")),
        "pattern": Field("str", "*", "glob selecting the input files in input_dir (e.g. *.tif, or **/* to "
                         "include subfolders)"),
    },
    "study": {
        "models": Field("names", "all", "models in the study: a name, a list, or all", choices=MODEL_NAMES),
        "train_sizes": Field("ints", [125, 250, 500, 1000, 2000, 4000, 7200], "numbers of training pairs each "
                             "model is trained on (the first N of the train split; at most its size)", min=1),
        "epochs": Field("int", 20, "passes over its training pairs for every cell", min=1, max=100_000),
        "min_steps": Field("int", 0, "train every cell for at least this many optimiser steps (more epochs for "
                           "the small sizes, so they are not judged on a handful of updates; 0: epochs only)",
                           min=0, max=10_000_000),
        "batch_size": Field("int", 16, "images per optimiser step, and per inference batch", min=1, max=65_536),
        "lr": Field("float", 1e-3, "learning rate", min=0.0, max=10.0),
        "patch_size": Field("int", 0, "train on random square crops of this side (0: whole images)", min=0,
                            max=4096),
        "device": Field("str", "auto", "auto (cuda if present, else cpu), cpu, cuda or cuda:N",
                        check=_device_check),
        "seed": Field("int", 0, "random seed of every cell's training", min=0, max=MAX_SEED),
        "baselines": Field("names", ["gaussian", "median", "tv", "nlm"], "classical baselines, tuned on the val "
                           "split once (all: every one installed; none: no baseline)",
                           choices=BASELINE_NAMES + ("none",)),
        "max_test_images": Field("int", 0, "evaluate on the first N test pairs only (0: all)", min=0),
        "dose_bins": Field("int", 4, "dose bins of about equal size for PSNR vs dose (when the data have dose)",
                           min=1, max=100),
    },
}


def _fmt_value(value: Any) -> str:
    return repr(value) if isinstance(value, str) else str(value)


def validate_value(where: str, name: str, fld: Field, value: Any) -> Any:
    """Return ``value`` converted to the field's type, or raise a one-line :class:`InputError`."""
    def bad() -> InputError:
        return InputError.at(where, name, f"expected {fld.describe()}, got {_fmt_value(value)}")

    if fld.kind == "bool":
        if not isinstance(value, bool):
            raise bad()
        return value
    if fld.kind == "int":
        if isinstance(value, bool) or not isinstance(value, int):
            if isinstance(value, float) and value.is_integer():
                value = int(value)
            else:
                raise bad()
    elif fld.kind == "float":
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise bad()
        value = float(value)
    elif fld.kind == "str":
        if not isinstance(value, str) or not value:
            raise bad()
        if fld.choices and value not in fld.choices:
            raise InputError.at(where, name, f"expected {fld.describe()}, got {value!r}{_hint(value, fld.choices)}")
    elif fld.kind == "ints":
        items = value if isinstance(value, list) else None
        if not items or not all(isinstance(v, int) and not isinstance(v, bool) or
                                isinstance(v, float) and v.is_integer() for v in items):
            raise bad()
        items = [int(v) for v in items]
        if any(fld.min is not None and v < fld.min or fld.max is not None and v > fld.max for v in items):
            raise bad()
        if len(set(items)) != len(items):
            raise InputError.at(where, name, f"expected {fld.describe()}, got repeated values in {items}")
        return items
    elif fld.kind == "names":
        items = [value] if isinstance(value, str) else value
        if not isinstance(items, list) or not items or not all(isinstance(v, str) for v in items):
            raise bad()
        if items == ["all"]:
            return "all"
        for item in items:
            if item not in fld.choices:
                raise InputError.at(where, name, f"unknown name {item!r}{_hint(item, fld.choices)}; expected "
                                    f"{fld.describe()}")
        if len(set(items)) != len(items):
            raise InputError.at(where, name, f"names repeat in {items}")
        return list(items)
    if fld.min is not None and value < fld.min or fld.max is not None and value > fld.max:
        raise bad()
    if fld.check:
        problem = fld.check(value)
        if problem:
            raise InputError.at(where, name, f"expected {problem}, got {_fmt_value(value)}")
    return value


def _hint(word: str, options) -> str:
    close = difflib.get_close_matches(word, list(options), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def defaults() -> dict[str, dict[str, Any]]:
    """Every parameter at its default, in validated form (a ``names`` value is a list or 'all')."""
    return {sec: {k: validate_value("defaults", f"{sec}.{k}", f, f.default) for k, f in fields.items()}
            for sec, fields in SCHEMA.items()}


def validate(raw: Any, where: str = "parameters") -> dict[str, dict[str, Any]]:
    """Merge ``raw`` (a parsed YAML mapping) over the defaults and check every value."""
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise InputError.at(where, None, f"expected a mapping of sections ({', '.join(SCHEMA)}), got "
                            f"{type(raw).__name__}")
    out = defaults()
    for section, values in raw.items():
        _section(where, section)
        if values is None:
            continue
        if not isinstance(values, dict):
            raise InputError.at(where, section, f"expected a mapping of keys, got {_fmt_value(values)}")
        for key, value in values.items():
            out[section][key] = _validate_key(where, section, key, value)
    if out["download"]["dose_min"] > out["download"]["dose_max"]:
        raise InputError.at(where, "download.dose_min", f"expected <= download.dose_max "
                            f"({out['download']['dose_max']}), got {out['download']['dose_min']}")
    return out


def _section(where: str, section: Any) -> dict[str, Field]:
    """The schema of ``section``, or a one-line error with a did-you-mean hint."""
    if section not in SCHEMA:
        raise InputError.at(where, str(section), f"unknown section{_hint(str(section), SCHEMA)}; expected one "
                            f"of {', '.join(SCHEMA)}")
    return SCHEMA[section]


def _validate_key(where: str, section: Any, key: Any, value: Any) -> Any:
    """One value: the section and key must be in the schema and the value valid for the key."""
    fields = _section(where, section)
    if key not in fields:
        raise InputError.at(where, f"{section}.{key}", f"unknown key{_hint(str(key), fields)}; valid keys: "
                            f"{', '.join(fields)}")
    return validate_value(where, f"{section}.{key}", fields[key], value)


def load(path: str | Path | None, overrides: list[str] = ()) -> dict[str, dict[str, Any]]:
    """Read, merge and validate a parameters file (``None``: defaults only) plus ``section.key=value`` overrides."""
    raw: dict = {}
    where = "parameters"
    if path is not None:
        path = Path(path)
        where = str(path)
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise InputError.at(path, None, "parameters file not found") from None
        except IsADirectoryError:
            raise InputError.at(path, None, "expected a YAML file, found a folder") from None
        except (OSError, UnicodeDecodeError) as exc:
            raise InputError.at(path, None, f"cannot read parameters file ({exc.__class__.__name__}: "
                                f"{getattr(exc, 'strerror', None) or exc})") from None
        try:
            raw = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            line = f"line {mark.line + 1}, column {mark.column + 1}" if mark else "YAML"
            problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
            raise InputError.at(path, line, f"invalid YAML: {problem}") from None
        if raw is None:
            raw = {}
        if not isinstance(raw, dict):
            raise InputError.at(path, None, f"expected a mapping of sections ({', '.join(SCHEMA)}), got "
                                f"{type(raw).__name__}")
    raw = {k: (dict(v) if isinstance(v, dict) else v) for k, v in raw.items()}
    for item in overrides:
        key, sep, text = item.partition("=")
        section, dot, name = key.strip().partition(".")
        if not sep or not dot or not name:
            raise InputError.at("--set", item, "expected section.key=value, e.g. train.epochs=5")
        try:
            value = yaml.safe_load(text)
        except yaml.YAMLError:
            value = text
        _validate_key("--set", section, name, value)   # on its own first: its mistakes name --set, not the file
        if section in raw and not isinstance(raw[section], dict):
            raw[section] = {}
        raw.setdefault(section, {})
        if raw[section] is None:
            raw[section] = {}
        raw[section][name] = value
    return validate(raw, where)


def reference_markdown() -> str:
    """The parameters reference table for the README."""
    lines = []
    for section, fields in SCHEMA.items():
        lines += [f"#### `{section}:`", "", "| key | default | valid | meaning |", "|---|---|---|---|"]
        for key, fld in fields.items():
            lines.append(f"| `{key}` | `{fld.default}` | {fld.describe()} | {fld.help} |")
        lines.append("")
    return "\n".join(lines)
