"""A before/after figure of ``denoise``: the first frame of each input file beside its denoised output.

    python -m emdenoise.report.before_after INPUT_DIR DENOISED_DIR FIGURE.png [--files N]

Both frames of a row share one grey scale (the input's 0.5 to 99.5 percentiles). Inputs are read with the
readers ``denoise`` uses (:func:`emdenoise.io.micrographs.open_input`), outputs found by the same relative
name; the figure is written atomically. Used by ``run/own-data.sh``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from emdenoise.errors import InputError, script
from emdenoise.io import micrographs
from emdenoise.report.figures import figure, save


def first_frame(path: Path) -> np.ndarray:
    with micrographs.open_input(path) as src:
        return np.asarray(next(src.iter_frames(src.images[0])), dtype=np.float32)


def before_after(input_dir: Path, denoised_dir: Path, dest: Path, files: int = 4) -> int:
    """Draw up to ``files`` input/output pairs into ``dest``; return how many were drawn."""
    pairs: list[tuple[Path, np.ndarray, np.ndarray]] = []
    for path in sorted(p for p in input_dir.rglob("*") if p.is_file() and micrographs.format_of(p)):
        out = denoised_dir / path.relative_to(input_dir)
        if out.is_file() and len(pairs) < files:
            pairs.append((path, first_frame(path), first_frame(out)))
    if not pairs:
        raise InputError.at(denoised_dir, None, f"expected denoised outputs of the files in {input_dir}, found none")
    side = 3.0
    fig = figure(2 * side, side * len(pairs) + 0.3)
    for r, (path, before, after) in enumerate(pairs):
        vmin, vmax = np.percentile(before, [0.5, 99.5])
        vmax = vmax if vmax > vmin else vmin + 1.0
        for c, (image, title) in enumerate(((before, "input"), (after, "denoised"))):
            ax = fig.add_subplot(len(pairs), 2, 2 * r + c + 1)
            ax.imshow(image, cmap="gray", vmin=vmin, vmax=vmax, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_title(f"{path.name}: {title}", fontsize=8)
    fig.tight_layout()
    save(fig, dest)
    return len(pairs)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m emdenoise.report.before_after", description=__doc__.splitlines()[0])
    ap.add_argument("input_dir", type=Path)
    ap.add_argument("denoised_dir", type=Path)
    ap.add_argument("figure", type=Path)
    ap.add_argument("--files", type=int, default=4)
    args = ap.parse_args(argv)

    def work() -> str:
        n = before_after(args.input_dir, args.denoised_dir, args.figure, args.files)
        return f"before/after figure ({n} files): {args.figure}"

    return script(work)


if __name__ == "__main__":
    sys.exit(main())
