"""Simulated noisy frames of a material the zoo model never saw, with their clean truth kept aside: the data of
``run/own-data-check.sh`` (docs/results/own-data.md).

    python run/own_data_frames.py OUT_DIR --material srtio3 --dose 8 [--frames 8] [--size 384] [--seed 26]
        [--pixel-size 0.2]

Writes ``OUT_DIR/frames/frame_K.tif`` (uint16 electron counts, ImageJ-calibrated in A/px: what a counting
detector records, so the own-data path trains with ``poisson_split``) and ``OUT_DIR/truth/frame_K.tif`` (float32:
the noise-free signal the detector saw, dose x clean, the beam flat). The frames are independent fields of view
of one specimen on one microscope (one file each, not a movie).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import tifffile

from emdenoise.data.simulate import pairs, physics

FLAT_BEAM_SIGMA = 1e6  # px: a Gaussian beam this wide is flat to 1e-7 over any frame


def write_frames(out: Path, material: str, dose: float, frames: int, size: int, seed: int, pixel_size: float) -> None:
    """``frames`` noisy frames (counts) and their truths (expected counts) under ``out``."""
    (out / "frames").mkdir(parents=True, exist_ok=True)
    (out / "truth").mkdir(parents=True, exist_ok=True)
    infos = []
    optics = physics.draw_optics(np.random.default_rng(seed), "corrected")  # one microscope for every frame
    for k in range(frames):
        noisy, clean, info = pairs.make_pair(
            np.random.SeedSequence(seed, spawn_key=(k,)),
            image_size=size,
            dose=dose,
            beam_center_yx=(size / 2, size / 2),
            beam_sigma=FLAT_BEAM_SIGMA,
            material=material,
            scene="lattice",
            optics=optics,
            pixel_size_min=pixel_size,
            pixel_size_max=pixel_size,
        )
        counts = np.rint(noisy * np.float32(dose)).astype(np.uint16)
        truth = (clean * np.float32(dose)).astype(np.float32)
        for folder, image in (("frames", counts), ("truth", truth)):
            per_nm = 10.0 / pixel_size  # ImageJ: pixels per unit
            tifffile.imwrite(
                out / folder / f"frame_{k}.tif",
                image,
                imagej=True,
                resolution=(per_nm, per_nm),
                metadata={"unit": "nm"},
            )
        infos.append({key: info[key] for key in ("pixel_size", "voltage_kv", "defocus_angstrom", "dose")})
    (out / "frames.json").write_text(json.dumps({"material": material, "seed": seed, "frames": infos}, indent=1))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", type=Path)
    ap.add_argument("--material", default="srtio3")
    ap.add_argument("--dose", type=float, required=True, help="electrons per pixel")
    ap.add_argument("--frames", type=int, default=8)
    ap.add_argument("--size", type=int, default=384)
    ap.add_argument("--seed", type=int, default=26)
    ap.add_argument("--pixel-size", type=float, default=0.2, help="A/px")
    args = ap.parse_args()
    write_frames(args.out, args.material, args.dose, args.frames, args.size, args.seed, args.pixel_size)


if __name__ == "__main__":
    main()
