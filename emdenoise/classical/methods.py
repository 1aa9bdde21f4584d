"""The table of classical baselines and the :class:`~emdenoise.method.Method` each becomes.

Every baseline is one filter of :mod:`emdenoise.classical.filters` with one tunable parameter, the grid that
:mod:`emdenoise.classical.tuning` searches on validation pairs, and a default used when there are no
validation pairs to tune on (:func:`build`). The test task gives every baseline the same treatment: the
parameter tuned over its grid, then a global gain/offset ``a * filtered + b`` fitted on the validation split.
The noisy images are ``clean x beam profile + shot noise (+ dead pixels)`` while the target is the clean image
with flat illumination; a plain filter cannot remove the beam profile: the beam-aware rows flat-field first.

========================  ==========================  =========================================================
baseline                  tuned parameter             default without tuning
========================  ==========================  =========================================================
``gaussian``              ``sigma``, px               0.3 A in px (0.5-3 px), 1 px without a pixel size
``median``                ``size``, px                3
``tv``                    ``weight_per_sigma``        1
``nlm``                   ``h_per_sigma``             0.8
``bm3d``                  ``sigma_per_noise_sigma``   1
``anscombe_bm3d``         ``sigma``                   1 (the Anscombe domain's unit noise)
``flat_gaussian``         ``sigma``, px               twice the ``gaussian`` default
``bragg``                 ``radius``, frequency px    2
``wiener``                ``floor``                   2
``pnlm``                  ``h``                       0.8
``flat_anscombe_bm3d``    ``sigma``                   1
========================  ==========================  =========================================================

The count scale of the :class:`~emdenoise.method.Context`, when known, is handed to the filters that use one
(every beam-aware one and ``anscombe_bm3d``); otherwise they estimate it from each frame.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from emdenoise.classical import detector, filters, flatfield
from emdenoise.classical import names as baseline_names
from emdenoise.method import Context, Kind

BM3D_INSTALL = "pip install emdenoise[bm3d] (the bm3d package is licensed for non-commercial use only)"
GAUSSIAN_ANGSTROM = 0.3  # the gaussian filter's default sigma in A, when the pixel size is known

Filter = Callable[..., np.ndarray]  # (image float64, value, scale=None) -> filtered image


def _fixed(value: float) -> Callable[[Context], float]:
    return lambda context: value


def _gaussian_sigma(context: Context) -> float:
    if not context.pixel_size:
        return 1.0
    return float(np.clip(GAUSSIAN_ANGSTROM / context.pixel_size, 0.5, 3.0))


@dataclass(frozen=True)
class Baseline:
    """One classical denoiser: ``param`` is the name of its tuned parameter, ``grid`` the values tried,
    ``default`` the value used without tuning (from the context)."""

    name: str
    param: str
    grid: tuple[float, ...]
    filter: Filter = field(repr=False)
    default: Callable[[Context], float] = field(repr=False)
    fixed: dict = field(default_factory=dict)  # settings that are not tuned, recorded in the report
    package: str | None = None  # optional package it needs
    max_tune_images: int = 0  # cap on tuning images for slow methods (0: no cap)
    counts: bool = False  # models Poisson counts from zero (the beam-aware filters, the Anscombe transform)

    def apply(self, image: np.ndarray, value: float, scale: float | None = None) -> np.ndarray:
        """Filter one 2-D image with the parameter set to ``value``; float64 out. A filter of counts given
        detector values on an offset (STEM, CCD) and no count scale filters the counts above the offset that
        the frame's own noise gives (:func:`emdenoise.classical.detector.offset_model`) and maps the result
        back: on the values themselves the offset would pass for signal and the lattice for noise."""
        if not self.counts:
            return self.filter(np.asarray(image, dtype=np.float64), value, scale)
        counts = detector.as_counts(image, scale)
        return counts.back(self.filter(counts.values, value, counts.scale))

    def shown(self, value: float) -> int | float:
        """``value`` as reported: an int when whole."""
        return int(value) if float(value).is_integer() else float(value)


_BEAM = {"beam": "fitted", "low_pass_periods": filters.LOW_PASS_PERIODS}

BASELINES: dict[str, Baseline] = {
    b.name: b
    for b in (
        Baseline("gaussian", "sigma", (0.5, 0.75, 1.0, 1.5, 2.0, 3.0), filters.gaussian, _gaussian_sigma),
        Baseline("median", "size", (3, 5, 7), filters.median, _fixed(3)),
        Baseline("tv", "weight_per_sigma", (0.25, 0.5, 1.0, 2.0, 4.0), filters.tv, _fixed(1.0)),
        Baseline(
            "nlm",
            "h_per_sigma",
            (0.4, 0.6, 0.8, 1.0, 1.3),
            filters.nlm,
            _fixed(0.8),
            fixed={"patch_size": 5, "patch_distance": 6, "fast_mode": True},
        ),
        Baseline(
            "bm3d",
            "sigma_per_noise_sigma",
            (0.75, 1.0, 1.5),
            filters.bm3d,
            _fixed(1.0),
            package=filters.BM3D_PACKAGE,
            max_tune_images=4,
        ),
        Baseline(
            "anscombe_bm3d",
            "sigma",
            (1.0,),
            filters.anscombe_bm3d,
            _fixed(1.0),
            package=filters.BM3D_PACKAGE,
            max_tune_images=4,
            fixed={"count_scale": "estimated per image", "inverse": "exact unbiased (closed form)"},
            counts=True,
        ),
        Baseline(
            "flat_gaussian",
            "sigma",
            (1.0, 1.5, 2.0, 3.0, 4.0),
            filters.flat_gaussian,
            lambda context: 2.0 * _gaussian_sigma(context),
            fixed={"beam": "fitted"},
            counts=True,
        ),
        Baseline(
            "bragg",
            "radius",
            (1.0, 1.5, 2.0, 3.0, 4.0, 6.0),
            filters.bragg,
            _fixed(2.0),
            fixed={**_BEAM, "peak_ratio": flatfield.PEAK_RATIO},
            counts=True,
        ),
        Baseline(
            "wiener",
            "floor",
            (1.0, 1.5, 2.0, 3.0, 4.0),
            filters.wiener,
            _fixed(2.0),
            fixed={**_BEAM, "background": "ring median"},
            counts=True,
        ),
        Baseline(
            "pnlm",
            "h",
            (0.2, 0.4, 0.8, 1.6, 3.2),
            filters.poisson_nlm,
            _fixed(0.8),
            fixed={
                "beam": "fitted",
                "bin": filters.NLM_BIN,
                "patch": filters.NLM_PATCH,
                "similarity": "Poisson GLR",
                "matching": "lattice",
            },
            max_tune_images=8,
            counts=True,
        ),
        Baseline(
            "flat_anscombe_bm3d",
            "sigma",
            (0.75, 1.0, 1.25),
            filters.flat_anscombe_bm3d,
            _fixed(1.0),
            package=filters.BM3D_PACKAGE,
            max_tune_images=4,
            fixed={"beam": "fitted", "inverse": "exact unbiased (closed form)"},
            counts=True,
        ),
    )
}

if tuple(BASELINES) != baseline_names.ALL or baseline_names.NEEDS_BM3D != tuple(
    name for name, b in BASELINES.items() if b.package == filters.BM3D_PACKAGE
):  # the schema's list (emdenoise.classical.names) must name exactly this table
    raise RuntimeError("emdenoise.classical.names is out of step with the table of baselines")

# test.baselines' and study.baselines' default: every baseline that needs no optional package
DEFAULT_BASELINES = baseline_names.DEFAULT


def names() -> tuple[str, ...]:
    """Every registered baseline, installed or not."""
    return tuple(BASELINES)


def get(name: str) -> Baseline:
    try:
        return BASELINES[name]
    except KeyError:
        raise KeyError(f"unknown baseline {name!r}; known: {', '.join(BASELINES)}") from None


def missing_package(name: str) -> str | None:
    """The optional package baseline ``name`` needs and cannot import, or None when it can run."""
    package = get(name).package
    if package is None:
        return None
    try:
        importlib.import_module(package)
    except ImportError:
        return package
    return None


def available() -> tuple[str, ...]:
    """The baselines that can run here (the BM3D ones only when the optional package is installed)."""
    return tuple(name for name in BASELINES if missing_package(name) is None)


@dataclass(frozen=True)
class Tuning:
    """How a classical method's parameter and gain/offset were chosen on validation pairs."""

    tune_psnr: float  # mean per-image validation PSNR at the chosen value
    n_tune: int  # validation images used
    grid_psnr: dict[float, float]  # mean validation PSNR for every grid value
    seconds: float | None = None  # the tuning's wall time, once measured


@dataclass(frozen=True)
class Classical:
    """A configured classical filter, a :class:`~emdenoise.method.Method`: ``gain * filter(frame, value) +
    offset`` per frame. Built by :func:`build` (defaults) or :func:`emdenoise.classical.tuning.tune`."""

    baseline: Baseline
    value: float
    gain: float = 1.0
    offset: float = 0.0
    tuning: Tuning | None = None
    kind: Kind = "classical"

    @property
    def name(self) -> str:
        return self.baseline.name

    @property
    def settings(self) -> Mapping[str, Any]:
        """Everything needed to reproduce this row, as reported in ``test_metrics.json``."""
        out: dict[str, Any] = {
            self.baseline.param: self.baseline.shown(self.value),
            **self.baseline.fixed,
            "gain": self.gain,
            "offset": self.offset,
        }
        if self.tuning is None:
            return {**out, "tuned": False}
        out |= {
            "tuned_on_val_images": self.tuning.n_tune,
            "val_psnr": self.tuning.tune_psnr,
            "grid": {str(k): v for k, v in self.tuning.grid_psnr.items()},
        }
        if self.tuning.seconds is not None:
            out["tune_seconds"] = round(self.tuning.seconds, 3)
        return out

    def apply(self, image: np.ndarray, scale: float | None = None) -> np.ndarray:
        """Denoise one 2-D image; float32 out, same shape."""
        out = self.gain * self.baseline.apply(image, self.value, scale) + self.offset
        return out.astype(np.float32)

    def __call__(self, frames: np.ndarray, context: Context) -> np.ndarray:
        frames = np.asarray(frames)
        return np.stack([self.apply(frame, context.count_scale) for frame in frames]).reshape(frames.shape)


def build(name: str, context: Context, value: float | None = None) -> Classical:
    """The classical method ``name`` with its default setting for ``context`` (pixel size, count scale), or
    with its parameter set to ``value``; no gain/offset (1, 0). ``KeyError`` naming the known ones for an
    unknown name; ``ImportError`` saying how to install a missing optional package."""
    baseline = get(name)
    package = missing_package(name)
    if package is not None:
        raise ImportError(f"baseline {name!r} needs the optional {package} package: {BM3D_INSTALL}")
    return Classical(baseline, float(baseline.default(context) if value is None else value))
