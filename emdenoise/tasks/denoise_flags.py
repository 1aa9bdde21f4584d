"""The ``denoise`` command's own flags (no heavy imports: the command line builds its parser from this table).

    emdenoise denoise --input movie.dm4                       # -> movie_denoised.tif beside it
    emdenoise denoise --input frames/ --method wiener --output denoised/
    emdenoise denoise --input frame.tif --model zoo:hrtem-ffdnet --pixel-size 0.12 --tile-size 512
    emdenoise denoise --input movie.tif --method wiener --score     # + movie_denoised.tif.scores.md

Each flag is a parameter of the ``denoise:`` section set on the command line (the same as ``--set
denoise.KEY=VALUE``, which stays for everything else). Without a parameters file the built-in defaults apply.
``--input`` (or ``--input_dir``) takes a file or a folder; without ``--output`` (or ``--output_dir``) the
outputs go beside the inputs as ``<name>_denoised.<ext>`` (``denoise.suffix``), in the input's format (DM3/DM4
and SER: ``.tif``); with one, into that folder under the inputs' own names.
"""

from __future__ import annotations

import argparse

# flag -> (denoise parameter, metavar, help)
FLAGS: dict[str, tuple[str, str, str]] = {
    "--model": ("model", "MODEL", "a model file, its folder, a folder of models, zoo:NAME, or a name in model_dir"),
    "--method": ("method", "NAME", "model (default), zoo:NAME, or a classical filter: wiener, bragg, gaussian, ..."),
    "--pixel-size": ("pixel_size", "A", "pixel size of the inputs in A/px (default: each file's calibration)"),
    "--tile-size": ("tile_size", "N", "tiles of N px (default 0: whole frames where memory allows)"),
    "--device": ("device", "DEVICE", "auto (default), cpu, cuda or cuda:N"),
}
SUFFIX = "_denoised"  # what denoise.suffix becomes when the outputs go beside the inputs

EPILOG = """formats read: TIFF (incl. ImageJ hyperstacks, OME), PNG (8/16-bit), NPY, HDF5, MRC/MRCS, and with
  pip install -e ".[formats]" in the emdenoise clone: DM3/DM4, EMD (Velox, Berkeley), SER
formats written: the input's format, float32 (PNG: its bit depth); DM3/DM4 and SER as ImageJ TIFF, EMD as
  Berkeley EMD; TIFF outputs carry ImageJ calibration (unit, spacing, TYX axes for movies); every output has
  a sidecar <output>.json with the provenance
inputs: --input FILE or FOLDER (denoise.pattern selects files in a folder)
outputs: beside the inputs as <name>_denoised.<ext> unless --output FOLDER is given
no parameters file: the built-in defaults (emdenoise params lists every key; --set denoise.KEY=VALUE)
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags of :data:`FLAGS`, plus ``--input`` and ``--output`` (aliases of the MLCube's paths)."""
    parser.epilog = EPILOG
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.add_argument("--input", dest="input_dir", metavar="PATH", help="a micrograph file or a folder of them")
    parser.add_argument(
        "--output", dest="output_dir", metavar="PATH", help="output folder (outputs keep the inputs' names)"
    )
    for flag, (key, metavar, text) in FLAGS.items():
        parser.add_argument(flag, dest=f"denoise_{key}", default=None, metavar=metavar, help=text)
    parser.add_argument(
        "--score",
        dest="denoise_score",
        nargs="?",
        const="auto",
        default=None,
        metavar="KIND",
        help="also score the method without clean truth (auto, movie or split; denoise.score)",
    )


def overrides(args: argparse.Namespace) -> list[str]:
    """The ``--set`` overrides the flags stand for (before the user's own ``--set``, which win)."""
    keys = [key for key, *_ in FLAGS.values()] + ["score"]
    sets = [f"denoise.{key}={value}" for key in keys if (value := getattr(args, f"denoise_{key}", None))]
    if getattr(args, "input_dir", None) and not getattr(args, "output_dir", None):
        sets.append(f"denoise.suffix={SUFFIX}")
    return sets


def beside_inputs(args: argparse.Namespace, paths: dict) -> None:
    """Without an output path, the outputs go beside the inputs: ``output_dir`` is the input's folder."""
    if getattr(args, "input_dir", None) and not getattr(args, "output_dir", None):
        given = paths["input_dir"]
        paths["output_dir"] = given.parent if given.is_file() else given
