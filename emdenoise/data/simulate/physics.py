"""Image formation for HRTEM of thin specimens: projected potential, phase-object exit wave, lens, detector.

Stable API (the fast generator :mod:`emdenoise.data.simulate.pairs` and the abTEM source use it; keep it small):

- :func:`wavelength_angstrom`, :func:`interaction_constant`: relativistic electron wavelength (A) and
  interaction constant sigma (rad / (V A)) at an accelerating voltage in kV.
- :class:`Optics` (frozen): voltage, defocus, Cs, focal spread, beam convergence, objective aperture.
  :func:`draw_optics` draws one from the documented ranges (:data:`OPTICS_REGIMES`).
- :func:`chi`, :func:`ctf`: aberration phase and the wave transfer function at spatial frequencies (1/A).
- :func:`scattering_factor`, :func:`projected_potential`: the projected potential (V A) of atoms from the
  Peng et al. electron scattering factors, built in Fourier space.
- :func:`exit_wave`, :func:`image`, :func:`detector_mtf`: phase-object exit wave, intensity after the
  objective lens and the detector MTF (mean about 1; vacuum = 1 exactly before the aperture cuts anything).

Conventions. Spatial frequencies ``k`` are in cycles per angstrom (no 2 pi), arrays are indexed (row, column) =
(y, x), and pixel ``[r, c]`` has its centre at ``(r * pixel_size, c * pixel_size)`` angstrom.

- ``lambda = h c / sqrt(E (E + 2 m0 c^2))`` (E the kinetic energy): 0.0418 A at 80 kV, 0.0251 A at 200 kV.
- ``sigma = (2 pi / (lambda V)) (m0 c^2 + E) / (2 m0 c^2 + E)`` (Kirkland 2010, eq. 5.6): 1.01e-3 rad/(V A)
  at 80 kV.
- ``chi(k) = pi lambda df k^2 + (pi / 2) Cs lambda^3 k^4``; the wave is multiplied by ``exp(-i chi)``.
  Negative ``df`` is underfocus; Scherzer defocus is ``df = -1.2 sqrt(Cs lambda)``. With this sign a weak
  phase object images as ``I = 1 + 2 sigma IFFT[V(k) sin chi(k)]``: at Scherzer (sin chi < 0) atoms are dark.
- Partial coherence in the quasi-coherent approximation, as envelopes on the wave:
  temporal ``E_t = exp(-(pi lambda Delta)^2 k^4 / 2)`` (Delta the focal spread, A), spatial
  ``E_s = exp(-(pi alpha)^2 (df k + Cs lambda^2 k^3)^2)`` (alpha the convergence semi-angle, rad), and a hard
  objective aperture ``lambda k <= aperture``.
- Projected potential: ``V(k) = (h^2 / (2 pi m0 e)) f_e(k)`` per atom (47.88 V A^2 times the scattering factor
  in A), ``f_e(k) = sum_i a_i exp(-b_i k^2 / 4)`` (Peng, Ren, Dudarev & Whelan, Acta Cryst. A52 (1996) 257,
  the fit valid to sin(theta)/lambda = 6 1/A). The atoms are spread onto the grid with bilinear weights, twice
  (the second grid offset by half a pixel, "interlacing", which cancels the odd aliases); the averaged Fourier
  transform is divided by the bilinear kernel's transform (sinc^2 per axis), multiplied by the form factor and
  cut at ``band_limit`` of the Nyquist frequency (2/3 by default, as multislice codes do against aliasing of
  exp(i sigma V)). Sub-pixel positions are kept: the spectrum's remaining error (aliasing) is about 0.2 % below
  0.1 cycles/px, 1 % at 0.1-0.2 and 3 % at 0.2-0.33 cycles/px (without interlacing 1 %, 6 % and 21 %).
  The integral of V_z per atom is exact (47.88 V A^2 times f_e(0): 120 V A^3 for C).
- The FFT is periodic: atoms near one edge act on the other. Callers that need an exact field draw a margin
  of specimen around it (the lens delocalises detail by ``lambda |df| k + Cs lambda^3 k^3``) and crop.
- Detector MTF: ``sinc(f_x) sinc(f_y)`` (f in cycles per pixel; a counting detector's pixel aperture) times a
  Gaussian ``exp(-2 pi^2 b^2 f^2)`` for a scintillator's spread of ``b`` pixels.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from scipy import fft as sfft

# CODATA 2018
_H = 6.62607015e-34  # J s
_M0 = 9.1093837015e-31  # kg
_E = 1.602176634e-19  # C
_C = 299792458.0  # m / s
ELECTRON_REST_KEV = _M0 * _C**2 / _E / 1e3  # 510.999 keV
_HC_KEV_ANGSTROM = _H * _C / _E / 1e3 * 1e10  # 12.398 keV A
POTENTIAL_PER_SCATTERING_FACTOR = _H**2 / (2 * math.pi * _M0 * _E) * 1e20  # h^2 / (2 pi m0 e): 47.88 V A^2

# Peng et al. (1996) electron scattering factors, the fit for 0 < s < 6 1/A: Z -> (a_1..a_5 in A, b_1..b_5 in A^2),
# f_e(s) = sum a_i exp(-b_i s^2), s = sin(theta) / lambda = k / 2.
PENG_PARAMETERS: dict[int, tuple[tuple[float, ...], tuple[float, ...]]] = {
    6: ((0.0489, 0.2091, 0.7537, 1.1420, 0.3555), (0.1140, 1.0825, 5.4281, 17.8811, 51.1341)),  # C
    8: ((0.0365, 0.1729, 0.5805, 0.8814, 0.3121), (0.0652, 0.6184, 2.9449, 9.6298, 28.2194)),  # O
    16: ((0.0915, 0.4312, 1.0847, 2.4671, 1.0852), (0.0838, 0.7788, 4.3462, 15.5846, 44.6365)),  # S
    22: ((0.2123, 0.8960, 2.1765, 3.0436, 2.4439), (0.1399, 1.4568, 6.7534, 33.1168, 101.8238)),  # Ti
    38: ((0.3723, 1.4598, 3.5124, 4.4612, 3.3031), (0.1480, 1.4643, 9.2320, 49.8807, 148.0937)),  # Sr
    42: ((0.3069, 1.1714, 3.2293, 3.4254, 2.1224), (0.1101, 1.0222, 5.9613, 25.1965, 93.5831)),  # Mo
}
ELEMENTS = {6: "C", 8: "O", 16: "S", 22: "Ti", 38: "Sr", 42: "Mo"}


def wavelength_angstrom(kv: float) -> float:
    """Relativistic electron wavelength in angstrom at ``kv`` kilovolts (0.0418 A at 80 kV)."""
    if kv <= 0:
        raise ValueError(f"voltage must be > 0 kV, got {kv}")
    return _HC_KEV_ANGSTROM / math.sqrt(kv * (kv + 2 * ELECTRON_REST_KEV))


def interaction_constant(kv: float) -> float:
    """Relativistic interaction constant sigma in rad / (V A): the exit wave's phase is sigma times V_z."""
    lam = wavelength_angstrom(kv)
    return 2 * math.pi / (lam * kv * 1e3) * (ELECTRON_REST_KEV + kv) / (2 * ELECTRON_REST_KEV + kv)


# --------------------------------------------------------------------------------------------------------------
# Optics
# --------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Optics:
    """Objective-lens settings. ``defocus_angstrom`` < 0 is underfocus; ``aperture_mrad`` 0 means none."""

    voltage_kv: float
    defocus_angstrom: float
    cs_mm: float
    focal_spread_angstrom: float = 0.0
    convergence_mrad: float = 0.0
    aperture_mrad: float = 0.0

    def __post_init__(self) -> None:
        if not self.voltage_kv > 0:
            raise ValueError(f"voltage_kv must be > 0, got {self.voltage_kv}")
        for name in ("focal_spread_angstrom", "convergence_mrad", "aperture_mrad"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")

    @property
    def wavelength(self) -> float:
        """Electron wavelength, A."""
        return wavelength_angstrom(self.voltage_kv)

    @property
    def sigma(self) -> float:
        """Interaction constant, rad / (V A)."""
        return interaction_constant(self.voltage_kv)

    @property
    def scherzer_defocus(self) -> float:
        """``-1.2 sqrt(Cs lambda)`` in A (for Cs > 0)."""
        return -1.2 * math.sqrt(abs(self.cs_mm) * 1e7 * self.wavelength)


# Ranges of draw_optics. Each value is drawn uniformly in its range unless said otherwise.
OPTICS_REGIMES: dict[str, dict] = {
    # Aberration-corrected low-kV imaging (graphene, 2D materials): |Cs| of tens of um, a few nm of defocus,
    # a monochromated or cold-FEG focal spread, no objective aperture to speak of (a large one: 40-60 mrad).
    "corrected": {
        "voltage_kv": (60.0, 80.0),  # one of the two
        "cs_mm": (-0.04, 0.04),
        "defocus_angstrom": (-80.0, 80.0),
        "focal_spread_angstrom": (10.0, 40.0),
        "convergence_mrad": (0.05, 0.3),
        "aperture_mrad": (40.0, 60.0),
    },
    # Uncorrected 200-300 kV: Cs 0.5-1.5 mm, defocus 0.6-1.4 x Scherzer, an objective aperture.
    "uncorrected": {
        "voltage_kv": (200.0, 300.0),  # one of the two
        "cs_mm": (0.5, 1.5),
        "scherzer_factor": (0.6, 1.4),
        "focal_spread_angstrom": (20.0, 60.0),
        "convergence_mrad": (0.1, 0.5),
        "aperture_mrad": (10.0, 25.0),
    },
}
OPTICS_MIXED_CORRECTED = 0.75  # "mixed": this fraction corrected, the rest uncorrected
REGIMES = ("mixed", "corrected", "uncorrected")


def draw_optics(rng: np.random.Generator, regime: str = "mixed") -> Optics:
    """Random optics from :data:`OPTICS_REGIMES`; ``regime`` ``mixed`` picks corrected with probability 0.75."""
    if regime not in REGIMES:
        raise ValueError(f"regime must be one of {', '.join(REGIMES)}, got {regime!r}")
    corrected = rng.random() < OPTICS_MIXED_CORRECTED if regime == "mixed" else regime == "corrected"
    r = OPTICS_REGIMES["corrected" if corrected else "uncorrected"]
    kv = float(r["voltage_kv"][int(rng.integers(0, 2))])
    cs = float(rng.uniform(*r["cs_mm"]))
    if corrected:
        df = float(rng.uniform(*r["defocus_angstrom"]))
    else:
        df = -1.2 * math.sqrt(cs * 1e7 * wavelength_angstrom(kv)) * float(rng.uniform(*r["scherzer_factor"]))
    return Optics(
        voltage_kv=kv,
        defocus_angstrom=df,
        cs_mm=cs,
        focal_spread_angstrom=float(rng.uniform(*r["focal_spread_angstrom"])),
        convergence_mrad=float(rng.uniform(*r["convergence_mrad"])),
        aperture_mrad=float(rng.uniform(*r["aperture_mrad"])),
    )


def chi(k, optics: Optics):
    """Aberration phase ``pi lambda df k^2 + (pi / 2) Cs lambda^3 k^4`` (rad) at frequencies ``k`` (1/A)."""
    lam = optics.wavelength
    k2 = np.square(k)
    return np.pi * lam * optics.defocus_angstrom * k2 + 0.5 * np.pi * optics.cs_mm * 1e7 * lam**3 * k2 * k2


def ctf(k, optics: Optics) -> np.ndarray:
    """Wave transfer function ``A(k) E_t(k) E_s(k) exp(-i chi(k))`` (complex) at frequencies ``k`` (1/A).

    The phase-contrast transfer function of a weak phase object is ``2 Im(-ctf) = 2 E sin chi`` (see the module
    docstring); :func:`chi` gives its zeros.
    """
    k = np.asarray(k, dtype=np.float64)
    lam = optics.wavelength
    cs = optics.cs_mm * 1e7
    envelope = np.exp(-0.5 * (np.pi * lam * optics.focal_spread_angstrom) ** 2 * k**4)
    alpha = optics.convergence_mrad * 1e-3
    if alpha > 0:
        envelope = envelope * np.exp(-((np.pi * alpha) ** 2) * (optics.defocus_angstrom * k + cs * lam**2 * k**3) ** 2)
    if optics.aperture_mrad > 0:
        envelope = envelope * (lam * k <= optics.aperture_mrad * 1e-3)
    return envelope * np.exp(-1j * chi(k, optics))


# --------------------------------------------------------------------------------------------------------------
# Potential and image
# --------------------------------------------------------------------------------------------------------------


def scattering_factor(z: int, k) -> np.ndarray:
    """Electron scattering factor f_e (A) of element ``z`` at spatial frequencies ``k`` (1/A)."""
    try:
        a, b = PENG_PARAMETERS[int(z)]
    except KeyError:
        raise ValueError(f"no scattering factor for Z = {z}; known: {sorted(PENG_PARAMETERS)}") from None
    s2 = np.square(np.asarray(k, dtype=np.float64)) / 4
    out = np.zeros_like(s2)
    for ai, bi in zip(a, b):
        out += ai * np.exp(-bi * s2)
    return out


def frequencies(shape: tuple[int, int], pixel_size: float, *, real: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Spatial frequency grids ``(ky[:, None], kx[None, :])`` in 1/A of an FFT (``real``: of an rfft2)."""
    ky = sfft.fftfreq(shape[0], d=pixel_size)[:, None]
    kx = (sfft.rfftfreq if real else sfft.fftfreq)(shape[1], d=pixel_size)[None, :]
    return ky, kx


def _splat(yx_px: np.ndarray, weights: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Bilinear spreading of point weights at (row, col) pixel positions onto a periodic grid (float64)."""
    ny, nx = shape
    y0 = np.floor(yx_px[:, 0])
    x0 = np.floor(yx_px[:, 1])
    fy = yx_px[:, 0] - y0
    fx = yx_px[:, 1] - x0
    iy = y0.astype(np.int64) % ny
    ix = x0.astype(np.int64) % nx
    iy1 = (iy + 1) % ny
    ix1 = (ix + 1) % nx
    index = np.concatenate([iy * nx + ix, iy * nx + ix1, iy1 * nx + ix, iy1 * nx + ix1])
    w = np.concatenate([(1 - fy) * (1 - fx), (1 - fy) * fx, fy * (1 - fx), fy * fx]) * np.tile(weights, 4)
    return np.bincount(index, w, minlength=ny * nx).reshape(ny, nx)


def projected_potential(
    atoms_yx_angstrom,
    z,
    shape: tuple[int, int],
    pixel_size: float,
    *,
    band_limit: float = 2 / 3,
) -> np.ndarray:
    """Projected potential V_z (V A, float32, ``shape``) of atoms at (y, x) angstrom with atomic numbers ``z``.

    The grid is periodic (see the module docstring); ``band_limit`` is the fraction of the Nyquist frequency
    kept (a circle).
    """

    def form(element: int, k: np.ndarray) -> np.ndarray:
        return POTENTIAL_PER_SCATTERING_FACTOR * scattering_factor(element, k)

    return atom_field(atoms_yx_angstrom, z, shape, pixel_size, form, band_limit=band_limit)


def atom_field(
    atoms_yx_angstrom,
    z,
    shape: tuple[int, int],
    pixel_size: float,
    form: Callable[[int, np.ndarray], np.ndarray],
    *,
    band_limit: float = 2 / 3,
) -> np.ndarray:
    """The sum over atoms of a kernel per element, ``sum_j f_Zj(r - r_j)`` (float32, ``shape``), on a periodic
    grid: ``form(Z, k)`` is the kernel's continuous Fourier transform (value x A^2) at the frequencies ``k``
    (1/A, the rfft2 grid's magnitudes). The atoms are spread with interlaced bilinear weights (module
    docstring); ``band_limit`` is the fraction of the Nyquist frequency kept (a circle). The projected potential
    and the STEM images (:mod:`emdenoise.data.simulate.stem`) are both made by it."""
    yx = np.asarray(atoms_yx_angstrom, dtype=np.float64).reshape(-1, 2) / pixel_size
    z = np.broadcast_to(np.asarray(z, dtype=np.int64), (len(yx),))
    ky, kx = frequencies(shape, pixel_size, real=True)
    k = np.sqrt(ky**2 + kx**2)
    spectrum = np.zeros(k.shape, np.complex64)
    # Interlacing: a second grid offset by half a pixel cancels the aliases of odd order of the first.
    half_pixel = np.exp(-1j * np.pi * (ky + kx) * pixel_size).astype(np.complex64)
    kernel = np.sinc(ky * pixel_size) ** 2 * np.sinc(kx * pixel_size) ** 2  # the bilinear kernel's transform
    keep = k <= band_limit * 0.5 / pixel_size
    scale = np.where(keep, 0.5 / pixel_size**2 / kernel, 0.0)
    for element in np.unique(z):
        mine = yx[z == element]
        ones = np.ones(len(mine))
        grid = sfft.rfft2(_splat(mine, ones, shape).astype(np.float32), workers=1)
        grid += sfft.rfft2(_splat(mine - 0.5, ones, shape).astype(np.float32), workers=1) * half_pixel
        spectrum += grid * (scale * form(int(element), k)).astype(np.complex64)
    return sfft.irfft2(spectrum, s=shape, workers=1).astype(np.float32)


def exit_wave(potential: np.ndarray, kv: float) -> np.ndarray:
    """Phase-object exit wave ``exp(i sigma V_z)`` (complex64)."""
    phase = np.float32(interaction_constant(kv)) * potential
    return (np.cos(phase) + 1j * np.sin(phase)).astype(np.complex64)


def detector_mtf(shape: tuple[int, int], blur_px: float = 0.0, *, real: bool = True) -> np.ndarray:
    """Detector MTF on an rfft2 (``real``) or fft2 grid: pixel-aperture sinc times a Gaussian of ``blur_px``."""
    fy, fx = frequencies(shape, 1.0, real=real)
    mtf = np.sinc(fy) * np.sinc(fx)
    if blur_px > 0:
        mtf = mtf * np.exp(-2 * np.pi**2 * blur_px**2 * (fy**2 + fx**2))
    return mtf


def _transfer(shape: tuple[int, int], pixel_size: float, optics: Optics) -> np.ndarray:
    """:func:`ctf` on an fft2 grid (complex64), computed on one quadrant (it depends on |k| only) and mirrored."""
    ny, nx = shape
    qy = np.arange(ny // 2 + 1) / (ny * pixel_size)
    qx = np.arange(nx // 2 + 1) / (nx * pixel_size)
    quadrant = ctf(np.sqrt(qy[:, None] ** 2 + qx[None, :] ** 2), optics).astype(np.complex64)
    # row / column of |ky|, |kx| in the quadrant, in integers (np.abs(fftfreq(n) * n).astype(int) truncates
    # 46.99999 to 46 for n = 96, 288, 375, 384 ...: the CTF of a wrong frequency)
    iy = np.minimum(np.arange(ny), ny - np.arange(ny))
    ix = np.minimum(np.arange(nx), nx - np.arange(nx))
    return quadrant[iy[:, None], ix[None, :]]


def image(
    potential: np.ndarray,
    optics: Optics,
    pixel_size: float,
    *,
    detector_blur_px: float | None = 0.0,
) -> np.ndarray:
    """Intensity (float32, mean about 1) of a phase object ``potential`` (V A) through ``optics`` and a detector.

    ``detector_blur_px``: None for an ideal detector (no MTF), otherwise the Gaussian spread of
    :func:`detector_mtf` (0: a counting detector's pixel aperture only).
    """
    shape = potential.shape
    transfer = _transfer(shape, pixel_size, optics)
    wave = sfft.ifft2(sfft.fft2(exit_wave(potential, optics.voltage_kv), workers=1) * transfer, workers=1)
    intensity = (wave.real**2 + wave.imag**2).astype(np.float32)
    if detector_blur_px is None:
        return intensity
    mtf = detector_mtf(shape, detector_blur_px).astype(np.float32)
    return sfft.irfft2(sfft.rfft2(intensity, workers=1) * mtf, s=shape, workers=1).astype(np.float32)
