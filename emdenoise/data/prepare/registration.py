"""Drift registration of the frames of a movie, made for low-dose frames (a few electrons per pixel).

:func:`register` measures the drift of every frame to the first one, :func:`align` undoes it::

    shifts = register(frames)            # (N, 2) float: frames[k][y + dy, x + dx] ~ frames[0][y, x]
    common = align(frames, shifts)       # the frames cut to the area they all share, the drift undone

How: every frame is windowed (a cosine taper, so the image edges do not correlate) and low-pass filtered with a
Gaussian of ``sigma`` pixels (the lattice scale: the shot noise is white, the signal sits at the low and lattice
frequencies). Frame k is registered against a running reference, the sum of the frames aligned so far, so the
reference grows in signal as the stack goes; then every frame is registered again against the sum of all the
others (the reference of the second pass holds every frame's signal but its own noise). Each measurement takes
the whole-pixel peak of the plain cross-correlation, with a mild preference for drifts near the expected one
(a crystal correlates at every lattice vector), or of the whitened phase correlation where its peak is
unmistakable (bright frames; below about 1,000 e/px it drowns in the shot noise, as it weighs every
frequency alike), and refines it to ``1 / upsample`` px with scikit-image's
:func:`~skimage.registration.phase_cross_correlation` (``normalization=None``).

A drift is *unmeasurable* when no half of the frames confirms it: the drift of every frame is measured again
on the left, right, top and bottom halves of the frames against the same halves of the reference; when for
some frame none of them lands within :data:`AGREEMENT_PX` of the drift of the whole frame, the signal is too
weak (or absent: vacuum, a featureless film) and :func:`register` raises :class:`Unmeasurable`.

Frames larger than :data:`MAX_SIDE` are registered summed in bins. :func:`align` shifts by whole pixels.
"""

from __future__ import annotations

import numpy as np
from scipy.signal import windows
from skimage.registration import phase_cross_correlation

TAPER = 1.0  # the part of each side in the cosine taper of the frames (Tukey window; 1: a Hann window)
AGREEMENT_PX = 1.5  # a half-frame measurement confirms a frame's drift when within this (pixels)
DEFAULT_SIGMA = 1.5  # low-pass Gaussian of the correlation (pixels): about a quarter of an atomic spacing
DEFAULT_UPSAMPLE = 20  # sub-pixel refinement: 1/20 px
PRIOR_FRACTION = 0.125  # the preference for drifts near the expected one: a Gaussian of this part of the side,
PRIOR_PX = 32.0  # or of this many pixels when that is wider
WHITENED_Z = 20.0  # a whitened correlation peak this many standard deviations high is trusted
MAX_SIDE = 1024  # larger frames are registered in bins (see register)


class Unmeasurable(ValueError):
    """The drift of a stack cannot be measured (its frames hold too little signal)."""


def _spectra(frames: list[np.ndarray], sigma: float) -> list[np.ndarray]:
    """The low-passed spectra of the tapered, mean-subtracted frames."""
    h, w = frames[0].shape
    window = np.outer(windows.tukey(h, TAPER), windows.tukey(w, TAPER))
    fy, fx = np.fft.fftfreq(h)[:, None], np.fft.fftfreq(w)[None, :]
    lowpass = np.exp(-2.0 * (np.pi * sigma) ** 2 * (fy**2 + fx**2))
    return [np.fft.fft2(window * (f - f.mean(dtype=np.float64))) * lowpass for f in frames]


def _shifted(spectrum: np.ndarray, d: np.ndarray) -> np.ndarray:
    """The spectrum of ``g(y) = f(y + d)`` from that of ``f``."""
    h, w = spectrum.shape
    fy, fx = np.fft.fftfreq(h)[:, None], np.fft.fftfreq(w)[None, :]
    return spectrum * np.exp(2j * np.pi * (fy * d[0] + fx * d[1]))


def _whole_peak(ref: np.ndarray, moving: np.ndarray, expected: np.ndarray) -> np.ndarray:
    """The whole-pixel (dy, dx) of the correlation peak of two spectra: the whitened phase correlation's when
    its peak stands :data:`WHITENED_Z` standard deviations above its map (bright frames: exact, and blind to
    broad features), else the plain correlation's, searched with a mild preference for drifts near
    ``expected`` (a Gaussian weight :data:`PRIOR_FRACTION` of the frame side wide, at least :data:`PRIOR_PX`):
    the correlation of a crystal has a peak at every lattice vector, nearly as high as the true one."""
    h, w = ref.shape
    dy = (np.arange(h) + h // 2) % h - h // 2  # signed lags
    dx = (np.arange(w) + w // 2) % w - w // 2
    cross = moving * np.conj(ref)
    white = np.fft.ifft2(cross / np.maximum(np.abs(cross), 1e-300)).real
    if white.max() >= WHITENED_Z * white.std():
        score = white
    else:
        ry, rx = max(PRIOR_PX, PRIOR_FRACTION * h), max(PRIOR_PX, PRIOR_FRACTION * w)
        weight = np.exp(-0.5 * (((dy[:, None] - expected[0]) / ry) ** 2 + ((dx[None, :] - expected[1]) / rx) ** 2))
        corr = np.fft.ifft2(cross).real
        score = (corr - corr.min()) * weight
    iy, ix = np.unravel_index(int(np.argmax(score)), score.shape)
    return np.array([dy[iy], dx[ix]], dtype=np.float64)


def _measure(ref: np.ndarray, moving: np.ndarray, upsample: int, expected: np.ndarray) -> np.ndarray:
    """The (dy, dx) with ``moving[y + dy, x + dx] ~ ref[y, x]``, both given as spectra: the whole-pixel peak
    (:func:`_whole_peak`), the rest refined to ``1 / upsample`` px by scikit-image (the whole-pixel answer is
    kept where the refinement jumps to another peak)."""
    whole = _whole_peak(ref, moving, expected)
    centred = _shifted(moving, whole)
    rest, _, _ = phase_cross_correlation(ref, centred, space="fourier", upsample_factor=upsample, normalization=None)
    rest = -np.asarray(rest, dtype=np.float64)
    return whole + (rest if np.all(np.abs(rest) <= 1.0) else _parabola(ref, centred))


def _parabola(ref: np.ndarray, centred: np.ndarray) -> np.ndarray:
    """The sub-pixel offset of the plain correlation's peak next to zero drift, from a parabola through it and
    its two neighbours on each axis (where scikit-image's global search jumped to another lattice peak)."""
    corr = np.fft.ifft2(centred * np.conj(ref)).real
    out = np.zeros(2)
    for axis, (minus, plus) in enumerate(((corr[-1, 0], corr[1, 0]), (corr[0, -1], corr[0, 1]))):
        curve = minus - 2.0 * corr[0, 0] + plus
        out[axis] = float(np.clip(0.5 * (minus - plus) / curve, -0.5, 0.5)) if curve < 0 else 0.0
    return out


def _against_others(frames: list[np.ndarray], shifts: np.ndarray, sigma: float, upsample: int) -> np.ndarray:
    """The drifts measured again, each frame against the sum of all the others. The frames are first cut to
    their common area with their drift undone in whole pixels, so that what is measured is a residual below a
    pixel: the taper's own correlation, peaked at zero, would otherwise pull a broad correlation peak towards
    zero drift."""
    whole = np.rint(shifts).astype(int)
    spectra = _spectra(align(frames, whole), sigma)
    rest = shifts - whole
    aligned = [_shifted(s, d) for s, d in zip(spectra, rest)]
    total = np.sum(aligned, axis=0)
    return whole + np.array([_measure(total - aligned[k], spectra[k], upsample, rest[k]) for k in range(len(frames))])


def _halves_disagree(frames: list[np.ndarray], shifts: np.ndarray, sigma: float, upsample: int) -> float:
    """How far (pixels) the drift measured on the half of the frame that agrees best with ``shifts`` is from
    it, for the frame where that is largest (the left, right, top and bottom halves: the signal may sit in one)."""
    h, w = frames[0].shape
    halves = [np.s_[:, : w // 2], np.s_[:, w // 2 :], np.s_[: h // 2, :], np.s_[h // 2 :, :]]
    best = np.full(len(frames), np.inf)
    for part in halves:
        found = _against_others([f[part] for f in frames], shifts, sigma, upsample)
        best = np.minimum(best, np.abs(found - found[0] - shifts).max(axis=1))
    return float(best.max())


def register(
    frames: list[np.ndarray] | np.ndarray,
    *,
    sigma: float = DEFAULT_SIGMA,
    upsample: int = DEFAULT_UPSAMPLE,
    check: bool = True,
    max_side: int = MAX_SIDE,
) -> np.ndarray:
    """The drift of every frame to the first, (N, 2) float64 (dy, dx) with ``frames[k][y + dy, x + dx] ~
    frames[0][y, x]`` (row 0 is zero). ``sigma``: the low-pass Gaussian (pixels). ``check``: raise
    :class:`Unmeasurable` when no half of the frames confirms the drift (frames at least 32 pixels a side).
    Frames wider or higher than ``max_side`` are registered summed in b x b bins (b the smallest factor that
    brings them within it; the counts add up, the time and memory drop by b squared), the drift scaled back."""
    arrays = [np.asarray(f) for f in frames]
    b = -(-max(arrays[0].shape) // max_side) if arrays else 1
    if b > 1:
        h, w = (side // b * b for side in arrays[0].shape)
        binned = [f[:h, :w].reshape(h // b, b, w // b, b).sum(axis=(1, 3), dtype=np.float64) for f in arrays]
        return b * register(binned, sigma=sigma, upsample=upsample, check=check, max_side=max_side)
    frames = [f.astype(np.float64) for f in arrays]
    n = len(frames)
    shifts = np.zeros((n, 2))
    if n < 2:
        return shifts
    spectra = _spectra(frames, sigma)
    running = spectra[0].copy()
    for k in range(1, n):  # pass 1: against the sum of the frames aligned so far
        shifts[k] = _measure(running, spectra[k], upsample, shifts[k - 1])
        running += _shifted(spectra[k], shifts[k])
    for _ in range(2):  # pass 2: each frame against the sum of all the others
        shifts = _against_others(frames, shifts, sigma, upsample)
        shifts -= shifts[0]
    if check and min(frames[0].shape) >= 32:
        worst = _halves_disagree(frames, shifts, sigma, upsample)
        if worst > AGREEMENT_PX:
            raise Unmeasurable(
                f"no half of the frames confirms the drift within {AGREEMENT_PX} px (off by {worst:.1f} px): "
                "too little signal per frame to measure it"
            )
    return shifts


def common_area(shape: tuple[int, int], shifts: np.ndarray) -> tuple[slice, slice]:
    """The area of frame 0 (rows, columns) that every frame covers after the (rounded) drift is undone."""
    d = np.rint(np.asarray(shifts)).astype(int)
    h, w = shape
    rows = slice(max(0, -int(d[:, 0].min())), min(h, h - int(d[:, 0].max())))
    cols = slice(max(0, -int(d[:, 1].min())), min(w, w - int(d[:, 1].max())))
    return rows, cols


def align(frames: list[np.ndarray], shifts: np.ndarray) -> list[np.ndarray]:
    """The frames cut to the area they all share, each shifted by its drift rounded to whole pixels.

    Whole pixels on purpose: a sub-pixel shift interpolates, which correlates the noise of neighbouring
    pixels (blind-spot training assumes independent pixels) and makes counts non-integer (``poisson_split``
    needs whole counts); the sub-pixel drift is what :func:`register` reports."""
    rows, cols = common_area(frames[0].shape, shifts)
    d = np.rint(np.asarray(shifts)).astype(int)
    return [f[rows.start + dy : rows.stop + dy, cols.start + dx : cols.stop + dx] for f, (dy, dx) in zip(frames, d)]
