"""The zoo's check set: a fixed small set of physics-generator pairs on which every shipped model is scored, so
that a test can tell that a model still loads and restores what its card says (``card.json`` ``check``).

    python -m emdenoise.zoo.check NAME     # prints the check set's PSNR of zoo:NAME (what card.json records)

The pairs are drawn at the model's own pixel size (its model file's ``pixel_size``), so no resampling enters the
number; the model runs in fp32 on the CPU, whole frames. PSNR is against the clean images, with R the clean set's
max - min, as in ``test``.
"""

from __future__ import annotations

import math
import sys

import numpy as np

SEED = 2026
PAIRS = 6
SIZE = 128
DOSE = (100.0, 2000.0)


def check_set(pixel_size: float) -> tuple[np.ndarray, np.ndarray]:
    """(noisy, clean), each (PAIRS, SIZE, SIZE) float32, graphene at ``pixel_size`` A/px, mixed optics."""
    from emdenoise.data.simulate import pairs as generator

    rng = np.random.default_rng(SEED)
    drawn = [
        generator.make_pair(rng, image_size=SIZE, dose_min=DOSE[0], dose_max=DOSE[1], pixel_size=pixel_size)
        for _ in range(PAIRS)
    ]
    return np.stack([p[0] for p in drawn]), np.stack([p[1] for p in drawn])


def check_psnr(name: str) -> float:
    """Mean PSNR (dB) of ``zoo:NAME`` on the check set."""
    from emdenoise import api, zoo
    from emdenoise.io import modelfile

    model = zoo.get(name)
    pixel = float(modelfile.load_model(model.model_file)[1]["pixel_size"])
    noisy, clean = check_set(pixel)
    out = api.denoise(noisy, f"zoo:{model.name}", pixel, device="cpu", precision="fp32", max_deviation=0).image
    data_range = float(clean.max() - clean.min())
    mse = ((out.astype(np.float64) - clean) ** 2).mean(axis=(1, 2))
    return float(np.mean(10 * np.log10(data_range**2 / mse)))


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m emdenoise.zoo.check NAME", file=sys.stderr)
        return 2
    value = check_psnr(args[0])
    print(f"{value:.3f}" if math.isfinite(value) else "nan")
    return 0


if __name__ == "__main__":
    sys.exit(main())
