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


def lattice_sites(size: int, period: float, kind: str = "hex", angle: float = 0.3, margin: float = 2.0) -> np.ndarray:
    """(M, 2) atom sites (row, col) px of a triangular (``hex``) or ``square`` lattice of ``period`` px inside
    a ``size`` frame (``margin`` px from the edges)."""
    a1 = period * np.array([np.cos(angle), np.sin(angle)])
    turn = np.pi / 3 if kind == "hex" else np.pi / 2
    a2 = period * np.array([np.cos(angle + turn), np.sin(angle + turn)])
    n = int(2 * size / period) + 2
    i, j = np.mgrid[-n : n + 1, -n : n + 1]
    sites = size / 2 + 0.37 + i.reshape(-1, 1) * a1 + j.reshape(-1, 1) * a2
    inside = np.all((sites >= margin) & (sites <= size - 1 - margin), axis=1)
    return sites[inside]


def atom_image(size: int, sites: np.ndarray, contrast: float = 0.3, width: float = 1.2) -> np.ndarray:
    """A clean image of order 1: ``1 - contrast`` times a Gaussian blob (sigma ``width`` px) at every site."""
    r = np.arange(size, dtype=np.float64)
    gy = np.exp(-((r[None, :] - sites[:, :1]) ** 2) / (2 * width * width))  # (M, size)
    gx = np.exp(-((r[None, :] - sites[:, 1:]) ** 2) / (2 * width * width))
    return (1.0 - contrast * np.einsum("mi,mj->ij", gy, gx)).astype(np.float32)


def beam(size: int, center=(0.4, 0.6), sigma: float = 0.45) -> np.ndarray:
    """A Gaussian beam with peak 1 at ``center`` (fractions of the side), sigma a fraction of the side."""
    y, x = np.mgrid[0:size, 0:size] / size
    return np.exp(-((y - center[0]) ** 2 + (x - center[1]) ** 2) / (2 * sigma * sigma)).astype(np.float32)


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


def lattice_split(rng, n: int, size: int, period: float, kind: str, dose: float, pixel_size: float) -> tuple:
    """(noisy, clean, dose, atom datasets) of ``n`` lattice images under a beam, two vacancies each."""
    noisy, clean, offsets, yx, vacant = [], [], [0], [], []
    for i in range(n):
        sites = lattice_sites(size, period, kind=kind, angle=0.2 + 0.1 * i, margin=3.0)
        gone = np.zeros(len(sites), dtype=bool)
        gone[rng.choice(len(sites), 2, replace=False)] = True
        image = atom_image(size, sites[~gone])
        clean.append(image)
        noisy.append(poisson_noise(rng, (image * beam(size))[None], dose)[0])
        offsets.append(offsets[-1] + len(sites))
        yx.append(sites)
        vacant.append(gone)
    atoms = {
        "atom_offsets": np.asarray(offsets, np.int64),
        "atom_yx": np.concatenate(yx).astype(np.float32),
        "atom_vacant": np.concatenate(vacant).astype(np.uint8),
        "atom_z": np.full(offsets[-1], 6, np.uint8),
        "pixel_size": np.full(n, pixel_size, np.float32),
    }
    return np.stack(noisy), np.stack(clean), np.full(n, dose, np.float32), atoms


def make_lattice_data_dir(root: Path, size: int = 64, seed: int = 0) -> Path:
    """A processed data_dir of lattice images with true atoms (contract 2 of the helpers' rules): triangular
    lattices in val and test, a square lattice of another spacing in ``generalisation.h5``."""
    rng = np.random.default_rng(seed)
    splits = {
        "val": lattice_split(rng, 3, size, 7.0, "hex", 40.0, 0.2),
        "test": lattice_split(rng, 3, size, 7.0, "hex", 40.0, 0.2),
        "generalisation": lattice_split(rng, 2, size, 6.0, "square", 40.0, 0.2),
    }
    stats = {"mean": 0.8, "std": 0.2}
    return write_data_dir(root, splits, {"noisy": stats, "clean": stats})
