"""Image formation for scanning TEM: HAADF (incoherent Z-contrast) and ABF (an approximation), a probe from the
convergence semi-angle and the aberrations, scan distortions and an analogue detector.

Stable API (used by :mod:`emdenoise.data.simulate.pairs`; the guide is docs/explanation/image-formation.md):

- :class:`StemOptics` (frozen): voltage, convergence semi-angle, defocus, Cs, source size;
  :func:`draw_stem_optics` draws one from :data:`STEM_REGIMES`.
- :func:`make_probe`: a :class:`Probe`, the Fourier transform of the probe intensity on an image's rfft2
  grid (1 at k = 0: the probe's integral is 1) and its full width at half maximum (A).
- :func:`cross_section`: each atom's signal, ``HAADF_SIGMA_C (Z/6)^1.7`` or ``ABF_SIGMA_C (Z/6)^0.6`` (A^2).
- :func:`yield_image`: the expected detected electrons per incident electron at every probe position.
- :class:`Scan`, :func:`draw_scan`, :func:`scan_positions`, :func:`image_positions`: scan distortions.
- :class:`Detector`, :func:`detect`: ``offset + gain Poisson(dose * yield) + N(0, read_noise^2)``, rounded;
  :func:`fitted_detector` lowers the gain of an image that would saturate.
- :class:`StemSettings` (the ``download.stem_*`` parameters), :func:`draw_mode`, :func:`reach_px`;
  ``python -m emdenoise.data.simulate.stem`` prints the numbers the docs quote (:func:`summary`).

The model (the incoherent imaging approximation, e.g. Kirkland, *Advanced Computing in Electron Microscopy*,
2010, ch. 5; Findlay et al., Ultramicroscopy 110 (2010) 903 for ABF):

- Probe: ``psi(r) = IFFT[A(k) exp(-i chi(k))]`` with the aperture ``A = [lambda k <= alpha]`` and
  :func:`emdenoise.data.simulate.physics.chi` (defocus, Cs); its intensity, blurred by a Gaussian source of
  ``source_size_angstrom`` (sigma), normalised to integral 1. It is computed on a grid twice as fine as the
  image (so that ``|psi|^2``, band-limited to ``2 alpha / lambda``, does not alias) and its transform cut to
  the image's frequencies. An aberration-free probe is the Airy disc of FWHM ``0.5145 lambda / alpha``.
- HAADF: ``yield(r) = sum_j sigma(Z_j) P(r - r_j)``, ``sigma = HAADF_SIGMA_C (Z/6)^HAADF_EXPONENT``: each atom
  scatters a fixed fraction of the probe's electrons onto the annular detector, rising with Z^1.7 (the
  screened Rutherford cross-section integrated over a high-angle annulus goes as Z^1.6-2). Atoms add
  linearly within a column: no channelling, no thickness saturation. Vacuum is 0.
- ABF: ``yield(r) = ABF_BACKGROUND - sum_j sigma_abf(Z_j) P_abf(r - r_j)``: a bright background (the part of
  the bright-field disc an annulus from alpha/2 to alpha collects, 3/4) with a dip at every column that
  grows slowly with Z (``(Z/6)^0.6``), so light and heavy columns are both dark, seen through a broader
  probe response ``P_abf`` (the probe blurred by a Gaussian of ``ABF_BLUR_FWHM`` probe FWHMs). This is a
  phenomenological APPROXIMATION, not a dynamical ABF calculation: real ABF contrast depends on thickness,
  defocus and tilt, can reverse, and is not a convolution.
- The images are band-limited to the pixel grid's Nyquist circle: the detail of a real scan beyond it would
  alias, here it is dropped.

Units: ``yield`` is detected electrons per incident electron (HRTEM's normalised intensity has the same
meaning: 1 = every incident electron reaches the pixel). ``dose`` is electrons per probe position (= per
pixel; STEM illumination is flat).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import fft as sfft

from emdenoise.data.simulate import physics

MODES = ("haadf", "abf")
IMAGING = ("hrtem", "haadf", "abf", "mixed")  # download.imaging; mixed: one of hrtem, haadf, abf per image
MIXED_MODES = ("hrtem", "haadf", "abf")  # drawn with equal probabilities
MODE_CODES = {"hrtem": 0, "haadf": 1, "abf": 2}  # the per-image "imaging_mode" attribute of the files
# download.stem_units: detector (the readings), electrons ((reading - offset) / (gain x dose): yield, HRTEM's
# units) or mean ((reading - offset) / (gain x the image's mean expected counts): mean 1 whatever the mode, the
# level at which emdenoise.inference.levels brings a microscope's frames to a counts / mean model)
UNITS = ("detector", "electrons", "mean")
VACUUM_COUNTS = 0.01  # mean expected counts per pixel below which an image counts as vacuum: mean level 1 count


def mean_level(expected: np.ndarray, dose: float) -> float:
    """Counts per stored unit under ``stem_units: mean``: the image's mean expected counts per pixel (``dose`` x
    the mean yield), 1 for an image with less than :data:`VACUUM_COUNTS` (vacuum in HAADF: no level to divide by)."""
    level = float(np.mean(expected, dtype=np.float64)) * dose
    return level if level >= VACUUM_COUNTS else 1.0


HAADF_EXPONENT = 1.7
HAADF_SIGMA_C = 0.0002  # A^2 per carbon atom: screened Rutherford over a 60-200 mrad annulus, in order of magnitude
ABF_EXPONENT = 0.6
ABF_SIGMA_C = 0.02  # A^2: the dip of one carbon atom (about 7 % of the background under a 0.5 A probe)
ABF_BACKGROUND = 0.75  # the fraction of the bright-field disc an annulus from alpha/2 to alpha collects
ABF_BLUR_FWHM = 0.5  # the ABF response: the probe blurred by a Gaussian of this many probe FWHMs (FWHM)
FWHM_PER_SIGMA = 2 * math.sqrt(2 * math.log(2))


@dataclass(frozen=True)
class StemOptics:
    """Probe-forming optics. ``defocus_angstrom`` < 0 is underfocus; ``source_size_angstrom`` is the Gaussian
    sigma of the demagnified source's image."""

    voltage_kv: float
    convergence_mrad: float
    defocus_angstrom: float = 0.0
    cs_mm: float = 0.0
    source_size_angstrom: float = 0.0

    def __post_init__(self) -> None:
        if not (self.voltage_kv > 0 and self.convergence_mrad > 0):
            raise ValueError(
                f"voltage_kv and convergence_mrad must be > 0, got {self.voltage_kv}, {self.convergence_mrad}"
            )
        if self.source_size_angstrom < 0:
            raise ValueError(f"source_size_angstrom must be >= 0, got {self.source_size_angstrom}")

    @property
    def wavelength(self) -> float:
        return physics.wavelength_angstrom(self.voltage_kv)

    @property
    def lens(self) -> physics.Optics:
        """The same aberrations as :class:`~emdenoise.data.simulate.physics.Optics` (for :func:`physics.chi`)."""
        return physics.Optics(self.voltage_kv, self.defocus_angstrom, self.cs_mm)


# Ranges of draw_stem_optics, each uniform unless said otherwise.
STEM_REGIMES: dict[str, dict] = {
    # Aberration-corrected probes at 60-80 kV: 20-35 mrad, residual Cs of a few um, a few nm of defocus.
    "corrected": {
        "voltage_kv": (60.0, 80.0),  # one of the two
        "convergence_mrad": (20.0, 35.0),
        "cs_mm": (-0.005, 0.005),
        "defocus_angstrom": (-20.0, 20.0),
        "source_size_angstrom": (0.1, 0.3),
    },
    # Uncorrected 200-300 kV: Cs 0.5-1.5 mm, alpha 0.8-1.0 x (4 lambda / Cs)^(1/4), defocus 0.6-1.4 x
    # -sqrt(Cs lambda) (the probe's Scherzer conditions).
    "uncorrected": {
        "voltage_kv": (200.0, 300.0),
        "cs_mm": (0.5, 1.5),
        "alpha_factor": (0.8, 1.0),
        "defocus_factor": (0.6, 1.4),
        "source_size_angstrom": (0.2, 0.5),
    },
}


def draw_stem_optics(rng: np.random.Generator, regime: str = "mixed") -> StemOptics:
    """Random probe optics from :data:`STEM_REGIMES` (``mixed``: corrected with probability 0.75, as HRTEM)."""
    if regime not in physics.REGIMES:
        raise ValueError(f"regime must be one of {', '.join(physics.REGIMES)}, got {regime!r}")
    corrected = rng.random() < physics.OPTICS_MIXED_CORRECTED if regime == "mixed" else regime == "corrected"
    r = STEM_REGIMES["corrected" if corrected else "uncorrected"]
    kv = float(r["voltage_kv"][int(rng.integers(0, 2))])
    cs = float(rng.uniform(*r["cs_mm"]))
    if corrected:
        alpha, df = float(rng.uniform(*r["convergence_mrad"])), float(rng.uniform(*r["defocus_angstrom"]))
    else:
        lam = physics.wavelength_angstrom(kv)
        alpha = 1e3 * (4 * lam / (cs * 1e7)) ** 0.25 * float(rng.uniform(*r["alpha_factor"]))
        df = -math.sqrt(cs * 1e7 * lam) * float(rng.uniform(*r["defocus_factor"]))
    return StemOptics(kv, alpha, df, cs, float(rng.uniform(*r["source_size_angstrom"])))


# --------------------------------------------------------------------------------------------------------------
# Probe
# --------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Probe:
    """A probe on the grid of an ``n x n`` image: ``spectrum``, the Fourier transform of its intensity on the
    rfft2 grid (complex64 (n, n // 2 + 1), 1 at k = 0: the intensity's integral is 1), and ``fwhm_angstrom``."""

    spectrum: np.ndarray
    fwhm_angstrom: float

    def blurred(self, sigma_angstrom: float, pixel_size: float) -> np.ndarray:
        """The spectrum of the probe blurred by a Gaussian of ``sigma_angstrom``."""
        n = self.spectrum.shape[0]
        ky, kx = physics.frequencies((n, n), pixel_size, real=True)
        a = -2 * np.pi**2 * sigma_angstrom**2
        return self.spectrum * (np.exp(a * ky**2) * np.exp(a * kx**2)).astype(np.float32)


def _fine_spectrum(optics: StemOptics, n: int, pixel_size: float) -> np.ndarray:
    """The rfft2 of the probe intensity (source blur included, 1 at k = 0) on a periodic ``(2n, 2n)`` grid of
    ``pixel_size / 2``: fine enough that ``|psi|^2`` (band-limited to ``2 alpha / lambda``) does not alias."""
    ky, kx = physics.frequencies((2 * n, 2 * n), pixel_size / 2)
    k2 = ky**2 + kx**2
    inside = optics.wavelength**2 * k2 <= (optics.convergence_mrad * 1e-3) ** 2
    aperture = np.zeros(k2.shape, np.complex128)
    aperture[inside] = np.exp(-1j * physics.chi(np.sqrt(k2[inside]), optics.lens))  # only where it is needed
    wave = sfft.ifft2(aperture, workers=1)
    spectrum = sfft.rfft2(wave.real**2 + wave.imag**2, workers=1)
    if optics.source_size_angstrom > 0:  # a Gaussian: separable, two small vectors
        ky, kx = physics.frequencies((2 * n, 2 * n), pixel_size / 2, real=True)
        a = -2 * np.pi**2 * optics.source_size_angstrom**2
        spectrum *= np.exp(a * ky**2) * np.exp(a * kx**2)
    return spectrum / spectrum[0, 0].real


def _fwhm(fine: np.ndarray, step: float, upsample: int = 16) -> float:
    """FWHM (A) of the intensity along x through the centre, from its rfft2 ``fine`` on a grid of ``step`` A:
    the row's spectrum is the sum over ky, interpolated exactly (zero-padded), the half-maximum crossing
    linear between samples ``step / upsample`` apart."""
    row = np.fft.irfft(fine.sum(axis=0), fine.shape[0] * upsample)
    half = row[: len(row) // 2]
    below = int(np.argmax(half < 0.5 * half[0]))
    if below == 0:
        return math.nan
    step /= upsample
    y0, y1 = half[below - 1], half[below]
    return 2 * step * (below - 1 + (y0 - 0.5 * half[0]) / (y0 - y1))


def make_probe(optics: StemOptics, n: int, pixel_size: float) -> Probe:
    """The probe of ``optics`` for an ``n x n`` field of ``pixel_size`` A (module docstring)."""
    fine = _fine_spectrum(optics, n, pixel_size)
    rows = np.arange(n) - n * (np.arange(n) >= (n + 1) // 2)  # fftfreq(n) * n: the same frequencies, fine grid
    return Probe(fine[rows % (2 * n), : n // 2 + 1].astype(np.complex64), _fwhm(fine, pixel_size / 2))


# --------------------------------------------------------------------------------------------------------------
# Images
# --------------------------------------------------------------------------------------------------------------


def cross_section(z, mode: str) -> np.ndarray:
    """Each atom's signal (A^2): HAADF ``HAADF_SIGMA_C (Z/6)^1.7``, ABF ``ABF_SIGMA_C (Z/6)^0.6``."""
    z = np.asarray(z, dtype=np.float64) / 6.0
    if mode == "haadf":
        return HAADF_SIGMA_C * z**HAADF_EXPONENT
    if mode == "abf":
        return ABF_SIGMA_C * z**ABF_EXPONENT
    raise ValueError(f"mode must be one of {', '.join(MODES)}, got {mode!r}")


def yield_image(atoms_yx_angstrom, z, probe: Probe, pixel_size: float, mode: str) -> np.ndarray:
    """Expected detected electrons per incident electron at each probe position of the periodic field of
    ``probe`` (float32, n x n): HAADF or ABF (module docstring)."""
    n = probe.spectrum.shape[0]
    if mode == "abf":
        spectrum = probe.blurred(ABF_BLUR_FWHM * probe.fwhm_angstrom / FWHM_PER_SIGMA, pixel_size)
    else:
        spectrum = probe.spectrum

    def form(element: int, k: np.ndarray) -> np.ndarray:
        return cross_section(element, mode) * spectrum

    signal = physics.atom_field(atoms_yx_angstrom, z, (n, n), pixel_size, form, band_limit=1.0)
    if mode == "abf":
        signal = np.float32(ABF_BACKGROUND) - signal
    return np.maximum(signal, 0.0).astype(np.float32)


# --------------------------------------------------------------------------------------------------------------
# Scan distortions
# --------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Scan:
    """The distortions of one frame: ``jitter_px`` (one x shift per scan line, px), ``drift_yx_px`` (the
    specimen's displacement over the whole frame, px; the probe at time t in [0, 1) sees it shifted by
    ``t drift``), ``flyback_px`` and ``flyback_tau_px`` (the first columns of each line lag: x is moved by
    ``flyback_px exp(-c / flyback_tau_px)``, compressing them)."""

    jitter_px: np.ndarray
    drift_yx_px: tuple[float, float] = (0.0, 0.0)
    flyback_px: float = 0.0
    flyback_tau_px: float = 1.0

    @property
    def jitter_rms(self) -> float:
        return float(np.sqrt(np.mean(np.square(self.jitter_px)))) if len(self.jitter_px) else 0.0


FLYBACK_TAU_FRACTION = 0.05  # the flyback lag decays over this fraction of a line


def draw_scan(rng: np.random.Generator, size: int, jitter_px: float, drift_px: float, flyback_px: float) -> Scan:
    """Random distortions: the jitter's RMS, the drift's length and the flyback amplitude each uniform in
    [0, its parameter]; the drift's direction uniform; the per-line jitter Gaussian and independent."""
    rms = float(rng.uniform(0, jitter_px))
    jitter = rng.standard_normal(size) * rms
    angle, length = float(rng.uniform(0, 2 * np.pi)), float(rng.uniform(0, drift_px))
    tau = max(1.0, FLYBACK_TAU_FRACTION * size)
    amplitude = min(float(rng.uniform(0, flyback_px)), 0.9 * tau)  # below tau: the positions keep their order
    drift = (length * math.sin(angle), length * math.cos(angle))
    return Scan(jitter.astype(np.float32), drift, amplitude, tau)


def scan_positions(scan: Scan, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Where the probe really is (row, column, float64 (size, size) each, in nominal pixels) when pixel
    ``[r, c]`` is recorded: nominal position + jitter of line r + flyback of column c + drift at that time."""
    r, c = np.mgrid[0:size, 0:size].astype(np.float64)
    t = (r * size + c) / (size * size)
    y = r + scan.drift_yx_px[0] * t
    x = c + scan.drift_yx_px[1] * t + scan.jitter_px[:, None] + scan.flyback_px * np.exp(-c / scan.flyback_tau_px)
    return y, x


def image_positions(scan: Scan, size: int, yx: np.ndarray) -> np.ndarray:
    """Where points at true positions ``yx`` (M, 2; nominal pixels) appear in the distorted image: the inverse
    of :func:`scan_positions`, the row by fixed-point iteration (the drift per frame is small), the column by
    Newton's method (the flyback is steep at the line start)."""
    yx = np.asarray(yx, dtype=np.float64)
    r, c = yx[:, 0].copy(), yx[:, 1].copy()
    rows = np.arange(size, dtype=np.float64)
    dy, dx = scan.drift_yx_px
    for _ in range(10):
        r = yx[:, 0] - dy * (r * size + c) / size**2
        lag = scan.flyback_px * np.exp(-np.clip(c, 0, None) / scan.flyback_tau_px)
        f = c + dx * (r * size + c) / size**2 + np.interp(r, rows, scan.jitter_px) + lag - yx[:, 1]
        slope = 1 + dx / size**2 - np.where(c > 0, lag / scan.flyback_tau_px, 0.0)
        c = c - f / slope
    return np.stack([r, c], 1)


def sample(field: np.ndarray, y: np.ndarray, x: np.ndarray) -> np.ndarray:
    """``field`` (periodic) at fractional (row, column) positions, by cubic B-spline interpolation."""
    from scipy.ndimage import map_coordinates

    return map_coordinates(field.astype(np.float64), [y, x], order=3, mode="grid-wrap").astype(np.float32)


# --------------------------------------------------------------------------------------------------------------
# Detector
# --------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Detector:
    """An analogue STEM detector: ``offset`` (detector units, DU, with no electrons), ``gain`` (DU per detected
    electron), ``read_noise`` (Gaussian sigma, DU). Values are rounded to whole DU and clipped to uint16."""

    offset: float = 33000.0
    gain: float = 4.0
    read_noise: float = 3.0

    def expected(self, electrons: np.ndarray) -> np.ndarray:
        """The noise-free detector value for an expected number of electrons (float32), saturating at 65535
        like the readings (at 4 DU per electron and an offset of 33,000: above 8,134 electrons)."""
        return np.minimum(np.float32(self.offset) + np.float32(self.gain) * electrons, 65535).astype(np.float32)


HEADROOM = 0.8  # fitted_detector keeps the brightest expected reading below this fraction of the range


def fitted_detector(detector: Detector, brightest_electrons: float) -> Detector:
    """``detector`` with its gain lowered (as an operator turns down a photomultiplier) where the brightest
    expected pixel would read above ``HEADROOM`` of the range above the offset; otherwise unchanged."""
    room = HEADROOM * (65535 - detector.offset)
    if brightest_electrons * detector.gain <= room:
        return detector
    return Detector(detector.offset, float(np.float32(room / brightest_electrons)), detector.read_noise)


def detect(rng: np.random.Generator, electrons: np.ndarray, detector: Detector) -> np.ndarray:
    """A detector reading (float32, whole numbers in [0, 65535]) of Poisson(``electrons``) electrons:
    ``offset + gain N + read noise``; its mean is :meth:`Detector.expected`, its variance ``gain (mean - offset)
    + read_noise^2 + 1/12`` (the rounding)."""
    counts = rng.poisson(np.maximum(electrons, 0.0)).astype(np.float64)
    raw = detector.offset + detector.gain * counts + rng.normal(0.0, detector.read_noise, counts.shape)
    return np.clip(np.rint(raw), 0, 65535).astype(np.float32)


@dataclass(frozen=True)
class StemSettings:
    """The generator's STEM parameters (``download.stem_*``): ``units`` of the stored images (``detector``:
    detector units, clean = the expected detector value; ``electrons``: ``(reading - offset) / (gain dose)``,
    clean = the expected yield, HRTEM's units; ``mean``: ``(reading - offset) / (gain level)``, ``level`` the
    image's mean expected counts per pixel, clean of mean 1), the dose range (electrons per probe position,
    log-uniform), the largest jitter RMS, drift and flyback (px; each image draws its own in [0, the largest]) and
    the detector."""

    units: str = "detector"
    dose_min: float = 1e4
    dose_max: float = 1e5
    jitter_px: float = 0.3
    drift_px: float = 2.0
    flyback_px: float = 1.0
    offset: float = 33000.0
    gain: float = 4.0
    read_noise: float = 3.0

    def __post_init__(self) -> None:
        if self.units not in UNITS:
            raise ValueError(f"units must be one of {', '.join(UNITS)}, got {self.units!r}")

    @property
    def detector(self) -> Detector:
        return Detector(self.offset, self.gain, self.read_noise)


def draw_mode(rng: np.random.Generator, imaging: str) -> str:
    """The imaging mode of one image: ``imaging`` itself, or for ``mixed`` one of :data:`MIXED_MODES` (the only
    case that draws from ``rng``)."""
    if imaging not in IMAGING:
        raise ValueError(f"imaging must be one of {', '.join(IMAGING)}, got {imaging!r}")
    return MIXED_MODES[int(rng.integers(0, len(MIXED_MODES)))] if imaging == "mixed" else imaging


def reach_px(optics: StemOptics, pixel_size: float) -> int:
    """How far (px) the probe's tails reach: ``lambda |df| k + |Cs| lambda^3 k^3`` at the aperture edge
    ``k = alpha / lambda``, plus ``2 lambda / alpha`` (about four probe widths: the ABF blur, the probe's rings)."""
    lam, k = optics.wavelength, optics.convergence_mrad * 1e-3 / optics.wavelength
    reach = lam * abs(optics.defocus_angstrom) * k + abs(optics.cs_mm) * 1e7 * lam**3 * k**3 + 2 / k
    return int(math.ceil(reach / pixel_size))


# --------------------------------------------------------------------------------------------------------------
# The numbers of the docs: python -m emdenoise.data.simulate.stem
# --------------------------------------------------------------------------------------------------------------


def _column_ratio(mode: str, z_pair: tuple[int, int], pixel: float = 0.1) -> float:
    """Signal ratio of two isolated atoms (HAADF: peak values; ABF: dips below the background)."""
    yx = np.array([[32, 32], [32, 96]], np.float64) * pixel
    probe = make_probe(StemOptics(200.0, 25.0), 128, pixel)
    values = yield_image(yx, np.array(z_pair, np.uint8), probe, pixel, mode)[32, [32, 96]].astype(np.float64)
    if mode == "abf":
        values = ABF_BACKGROUND - values
    return float(values[0] / values[1])


def summary() -> list[str]:
    """Measured against hand-computed values: probe FWHM vs Airy, column ratios vs Z laws, the detector's
    mean-variance line, the drawn probes' FWHM."""
    lines = []
    for kv, alpha, pixel in ((200.0, 25.0, 0.08), (80.0, 30.0, 0.1), (300.0, 10.0, 0.2)):
        fwhm = make_probe(StemOptics(kv, alpha), 256, pixel).fwhm_angstrom
        airy = 2 * 1.6163 / (2 * math.pi) * physics.wavelength_angstrom(kv) / (alpha * 1e-3)
        lines.append(f"probe {kv:g} kV {alpha:g} mrad: FWHM {fwhm:.4f} A, Airy 0.5145 lambda/alpha {airy:.4f} A")
    lines.append(f"HAADF Mo/S: {_column_ratio('haadf', (42, 16)):.4f}, (42/16)^1.7 = {(42 / 16) ** HAADF_EXPONENT:.4f}")
    lines.append(f"ABF Mo/C dips: {_column_ratio('abf', (42, 6)):.4f}, (42/6)^0.6 = {(42 / 6) ** ABF_EXPONENT:.4f}")
    detector, rng = Detector(33000.0, 4.0, 3.0), np.random.default_rng(1)
    readings = [detect(rng, np.full(200_000, lam, np.float32), detector) for lam in (0.0, 1.0, 3.0, 10.0)]
    means, variances = [float(r.mean()) for r in readings], [float(r.var()) for r in readings]
    slope, intercept = np.polyfit(np.array(means) - detector.offset, variances, 1)
    lines.append(f"detector gain 4, read noise 3: slope {slope:.3f}, variance at the offset {intercept:.2f} (9.08)")
    for regime in ("corrected", "uncorrected"):
        widths = [make_probe(draw_stem_optics(rng, regime), 128, 0.15).fwhm_angstrom for _ in range(30)]
        low, high = np.percentile(widths, [10, 90])
        lines.append(f"{regime} probes: FWHM {low:.2f}-{high:.2f} A (10-90 %)")
    return lines


if __name__ == "__main__":
    print("\n".join(summary()))
