"""Tuning a classical baseline on validation pairs: a grid search of its parameter with a global gain/offset.

For every grid value: filter each validation image, fit one least-squares ``a * filtered + b`` over all of
them against the clean images, score the mean per-image PSNR with the dataset card's fixed data range. The best
value wins (the first one on ties). The result is a configured, callable
:class:`~emdenoise.classical.methods.Classical` method.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np

from emdenoise.classical.methods import Baseline, Classical, Tuning, get
from emdenoise.evaluation.metrics import psnr_per_image

EXACT_PSNR = 200.0  # dB a tuning image counts for when the filter restores it exactly (a flat clean image): not inf


def fit_gain_offset(filtered: np.ndarray, clean: np.ndarray) -> tuple[float, float]:
    """Least-squares ``a, b`` minimising ``sum (a * filtered + b - clean)^2`` over every pixel given."""
    f = np.asarray(filtered, dtype=np.float64).ravel()
    c = np.asarray(clean, dtype=np.float64).ravel()
    f_mean, c_mean = f.mean(), c.mean()
    var = float(np.mean((f - f_mean) ** 2))
    if var <= 0.0:
        return 0.0, float(c_mean)
    gain = float(np.mean((f - f_mean) * (c - c_mean)) / var)
    return gain, float(c_mean - gain * f_mean)


def _n_tune(baseline: Baseline, n_val: int) -> int:
    return min(n_val, baseline.max_tune_images) if baseline.max_tune_images else n_val


def tune(
    baseline: Baseline | str,
    noisy: np.ndarray,
    clean: np.ndarray,
    data_range: float,
    on_step: Callable[[], None] | None = None,
) -> Classical:
    """Pick ``baseline``'s parameter from its grid on validation pairs ``noisy``/``clean`` (N, H, W) and fit
    its gain/offset (see the module notes). ``on_step`` is called after each filtered image (a progress bar)."""
    if isinstance(baseline, str):
        baseline = get(baseline)
    n = _n_tune(baseline, len(noisy))
    if n == 0:
        raise ValueError("tuning needs at least one validation pair")
    noisy, clean = noisy[:n], clean[:n]
    start = time.perf_counter()
    best: tuple[float, float, float, float] | None = None  # psnr, value, gain, offset
    grid_psnr: dict[float, float] = {}
    for value in baseline.grid:
        filtered = np.empty(noisy.shape, dtype=np.float64)
        for i, image in enumerate(noisy):
            filtered[i] = baseline.apply(image, value)
            if on_step:
                on_step()
        gain, offset = fit_gain_offset(filtered, clean)
        psnr = psnr_per_image(gain * filtered + offset, clean, data_range).clamp(max=EXACT_PSNR)
        score = float(psnr.mean())
        grid_psnr[value] = score
        if best is None or score > best[0]:
            best = (score, value, gain, offset)
    assert best is not None  # the grid is never empty
    score, value, gain, offset = best
    tuning = Tuning(score, n, grid_psnr, time.perf_counter() - start)
    return Classical(baseline, value, gain, offset, tuning)


def tuning_steps(baseline: Baseline | str, n_val: int) -> int:
    """How many filter calls :func:`tune` makes on ``n_val`` validation images (for a progress bar total)."""
    if isinstance(baseline, str):
        baseline = get(baseline)
    return _n_tune(baseline, n_val) * len(baseline.grid)
