"""The engine tests' training data: a tiny processed data folder of learnable pairs, written with h5py directly
in the layout of emdenoise.layout."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from support import write_data_dir

H, W = 32, 40  # non-square, so a swapped axis shows
NORM = {"noisy": {"mean": 0.4, "std": 0.3}, "clean": {"mean": 0.5, "std": 0.25}}


def _pairs(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Learnable pairs: smooth stripes (clean) under a beam-like gain plus Gaussian noise (noisy)."""
    y, x = np.mgrid[0:H, 0:W].astype(np.float32)
    clean = np.empty((n, H, W), np.float32)
    noisy = np.empty((n, H, W), np.float32)
    for i in range(n):
        fy, fx, phase = rng.uniform(0.1, 0.5), rng.uniform(0.1, 0.5), rng.uniform(0, 2 * np.pi)
        clean[i] = 0.5 + 0.4 * np.sin(fy * y + fx * x + phase)
        gain = 0.7 + 0.3 * np.exp(-((y - H / 2) ** 2 + (x - W / 3) ** 2) / 400.0)
        noisy[i] = clean[i] * gain + rng.normal(0, 0.15, (H, W))
    return noisy, clean


def make_data_dir(root: Path, n_train: int = 16, n_val: int = 4, n_test: int = 4) -> Path:
    """16 train, 4 val, 4 test pairs of 32x40 images in the processed layout (written with h5py)."""
    rng = np.random.default_rng(0)
    return write_data_dir(
        root, {split: _pairs(rng, n) for split, n in (("train", n_train), ("val", n_val), ("test", n_test))}, NORM
    )


def _counted(rng: np.random.Generator, n: int, dose: float) -> tuple:
    """Poisson frames of smooth stripes, in stacks of two frames of the same signal (both shifted by one
    pixel, the drift preprocess would have aligned away, kept 0 here): (noisy, clean, dose, stack/frame)."""
    y, x = np.mgrid[0:H, 0:W].astype(np.float32)
    clean = np.empty((n, H, W), np.float32)
    for i in range(0, n, 2):
        fy, fx, phase = rng.uniform(0.1, 0.5), rng.uniform(0.1, 0.5), rng.uniform(0, 2 * np.pi)
        clean[i : i + 2] = 0.5 + 0.4 * np.sin(fy * y + fx * x + phase)
    noisy = (rng.poisson(clean * dose) / dose).astype(np.float32)
    noisy[:, 3, 5] = 0.0  # a dead pixel
    extra = {"stack": np.arange(n) // 2, "frame": np.arange(n) % 2}
    return noisy, clean, np.full(n, dose, np.float32), extra


def make_counted_data_dir(root: Path, n_train: int = 16, n_val: int = 4, n_test: int = 4, dose: float = 80.0) -> Path:
    """Counted frames (dose recorded, whole counts = noisy * dose) in stacks of two, 32x40, with a dead pixel."""
    rng = np.random.default_rng(1)
    return write_data_dir(
        root,
        {split: _counted(rng, n, dose) for split, n in (("train", n_train), ("val", n_val), ("test", n_test))},
        NORM,
    )
