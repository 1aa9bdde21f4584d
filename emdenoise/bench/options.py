"""The options of ``emdenoise bench`` (no torch here: ``emdenoise --help`` builds them); the command itself is
:func:`emdenoise.bench.run.command`."""

from __future__ import annotations

import argparse

from emdenoise.runtime import PRECISIONS


def add_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--models", default="sciml_ae", help="comma-separated model names, or all (default sciml_ae)")
    p.add_argument("--device", default="auto", help="auto (cuda if present), cpu, cuda or cuda:N")
    p.add_argument(
        "--batch-size",
        type=int,
        default=None,
        help="images per step at 256x256, scaled down by area for larger frames; tiles per "
        "inference batch (default 16 on a CPU, 256 on a GPU; 2 with --quick)",
    )
    p.add_argument("--steps", type=int, default=None, help="timed steps per round (default 5 CPU, 50 GPU)")
    p.add_argument("--warmup", type=int, default=None, help="untimed steps first (default 2 CPU, 10 GPU)")
    p.add_argument(
        "--repeats",
        type=int,
        default=None,
        help="timed rounds of --steps steps; the fastest counts (default 3; 1 with --quick)",
    )
    p.add_argument("--sizes", default="256,1024", help="inference frame sides (default 256,1024)")
    p.add_argument("--train-sizes", default=None, help="training frame sides (default: the smallest of --sizes)")
    p.add_argument(
        "--precision",
        default="auto",
        choices=("auto",) + PRECISIONS,
        help="the engine's precision (auto: bf16 where it is native, see emdenoise.runtime.device)",
    )
    p.add_argument("--compile", action="store_true", help="also measure train.compile: true (falls back to eager)")
    p.add_argument("--quick", action="store_true", help="tiny run (batch 2, 2 steps, 1 warm-up) to check it works")
    p.add_argument("--output", default=None, metavar="FILE.json", help="write the results here (atomically)")
