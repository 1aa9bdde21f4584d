"""What ``emdenoise bench`` measures: the settings from its options, and the ablation ladder."""

from __future__ import annotations

import argparse
from dataclasses import dataclass

import torch

from emdenoise import models
from emdenoise.config import params
from emdenoise.errors import InputError
from emdenoise.runtime import device as runtime

REFERENCE_SIDE = 256  # --batch-size is per 256 x 256 frames; larger frames get proportionally fewer


@dataclass(frozen=True)
class Settings:
    models: tuple[str, ...]
    device: torch.device
    precision: str  # resolved: fp32, bf16 or fp16
    precision_requested: str
    batch_size: int  # at REFERENCE_SIDE
    steps: int
    warmup: int
    repeats: int
    sizes: tuple[int, ...]  # inference
    train_sizes: tuple[int, ...]
    compile: bool
    quick: bool
    tile_size: int
    tile_overlap: int

    def batch_for(self, side: int) -> int:
        if side <= REFERENCE_SIDE:
            return self.batch_size
        return max(1, self.batch_size * REFERENCE_SIDE**2 // side**2)


@dataclass(frozen=True)
class Config:
    """One engine setting measured: what ``train.precision`` and ``train.compile`` would be."""

    precision: str
    compile: bool = False


@dataclass
class Measure:
    images_per_s: float
    peak_memory_bytes: int
    compile_error: str | None = None


def _int_list(text: str, option: str, minimum: int) -> tuple[int, ...]:
    try:
        values = tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        values = ()
    if not values or min(values) < minimum:
        raise InputError.at("command line", option, f"expected comma-separated integers >= {minimum}, got {text!r}")
    return values


def settings_from_args(args: argparse.Namespace) -> Settings:
    known = models.names()
    names = known if args.models.strip() == "all" else tuple(n.strip() for n in args.models.split(",") if n.strip())
    unknown = [n for n in names if n not in known]
    if not names or unknown:
        raise InputError.at(
            "command line", "--models", f"expected all or names from {', '.join(known)}, got {args.models!r}"
        )
    device = runtime.resolve_device(args.device, "--device", "command line")
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    precision = runtime.resolve_precision(args.precision, device, "--precision", "command line")
    gpu = device.type == "cuda"
    defaults = (2, 2, 1, 1) if args.quick else ((256, 50, 10, 3) if gpu else (16, 5, 2, 3))
    batch, steps, warmup, repeats = (
        v if v is not None else d for v, d in zip((args.batch_size, args.steps, args.warmup, args.repeats), defaults)
    )
    for option, value, minimum in (
        ("--batch-size", batch, 1),
        ("--steps", steps, 1),
        ("--warmup", warmup, 0),
        ("--repeats", repeats, 1),
    ):
        if value < minimum:
            raise InputError.at("command line", option, f"expected an integer >= {minimum}, got {value}")
    sizes = _int_list(args.sizes, "--sizes", 16)
    train_sizes = _int_list(args.train_sizes, "--train-sizes", 16) if args.train_sizes else (min(sizes),)
    denoise = params.defaults().denoise
    return Settings(
        tuple(names),
        device,
        precision,
        args.precision,
        batch,
        steps,
        warmup,
        repeats,
        sizes,
        train_sizes,
        args.compile,
        args.quick,
        denoise.tile_size,
        denoise.tile_overlap,
    )


def ladder(settings: Settings) -> list[tuple[str, str, Config | None, str]]:
    """The ablation after plain: (step, what it is, config or None, why skipped)."""
    rows: list[tuple[str, str, Config | None, str]] = [
        ("fp32", "the engine, fp32, eager (train.precision: fp32)", Config("fp32"), "")
    ]
    if settings.precision != "fp32":
        rows.append(
            (
                settings.precision,
                f"{settings.precision} autocast (train.precision: {settings.precision_requested})",
                Config(settings.precision),
                "",
            )
        )
    else:
        rows.append(
            (
                "bf16",
                "bf16 autocast",
                None,
                "precision fp32 requested"
                if settings.precision_requested == "fp32"
                else "precision auto chose fp32: this CPU has no native bfloat16 (emulated bf16 is much slower)",
            )
        )
    if settings.compile:
        rows.append(("compile", "torch.compile (train.compile: true)", Config(settings.precision, True), ""))
    else:
        rows.append(("compile", "torch.compile (train.compile: true)", None, "not requested (--compile)"))
    return rows
