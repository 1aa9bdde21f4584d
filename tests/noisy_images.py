"""Small noisy images made here for the evaluation tests: smooth images with Poisson noise, and a processed
``data_dir`` (val and test splits with dose) written from them."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from support import write_data_dir


def smooth_images(rng, n: int, size: int) -> np.ndarray:
    """Smooth, non-negative images of order 1: a few random low-frequency cosines plus a bright disc."""
    y, x = np.mgrid[0:size, 0:size] / size
    images = []
    for _ in range(n):
        img = np.full((size, size), 0.6)
        for _ in range(3):
            fy, fx = rng.uniform(0.5, 3.0, 2)
            img += 0.12 * np.cos(2 * np.pi * (fy * y + fx * x) + rng.uniform(0, 2 * np.pi))
        cy, cx = rng.uniform(0.3, 0.7, 2)
        img += 0.3 * (((y - cy) ** 2 + (x - cx) ** 2) < 0.04)
        images.append(img)
    return np.clip(np.array(images), 0.05, None).astype(np.float32)


def poisson_noise(rng, clean: np.ndarray, dose) -> np.ndarray:
    dose = np.broadcast_to(np.asarray(dose, dtype=np.float64).reshape(-1, 1, 1), clean.shape)
    return (rng.poisson(clean * dose) / dose).astype(np.float32)


def make_data_dir(root: Path, n_test: int = 6, n_val: int = 4, size: int = 40, seed: int = 0) -> Path:
    """A processed data_dir (val.h5, test.h5, dataset_card.json) with doses spread over 5..200."""
    rng = np.random.default_rng(seed)
    splits = {}
    for split, n in (("val", n_val), ("test", n_test)):
        clean = smooth_images(rng, n, size)
        dose = np.geomspace(5, 200, n)
        splits[split] = (poisson_noise(rng, clean, dose), clean, dose)
    return write_data_dir(
        root / "processed", splits, {"noisy": {"mean": 0.6, "std": 0.2}, "clean": {"mean": 0.6, "std": 0.2}}
    )


def write_micrographs(folder: Path, size: int = 64, frames: int = 3, dose: float = 30.0, seed: int = 0) -> Path:
    """A folder of one's own noisy micrographs, whole-number counts: ``stack.tif`` (``frames`` frames of one
    smooth scene, drifting by a pixel or two per frame) and ``single.npy`` (one frame)."""
    import tifffile

    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    big = smooth_images(rng, 1, size + 8)[0]
    drift = [(2 + k, 3 + 2 * k) for k in range(frames)]  # (dy, dx) of each frame's window
    stack = np.stack([rng.poisson(big[dy : dy + size, dx : dx + size] * dose) for dy, dx in drift]).astype(np.uint16)
    tifffile.imwrite(folder / "stack.tif", stack, photometric="minisblack")
    np.save(folder / "single.npy", rng.poisson(smooth_images(rng, 1, size)[0] * dose).astype(np.float32))
    return folder
