"""Input conditioning (``train.condition``): what a model sees of the noisy frame, built inside its forward pass.

Every model maps a normalised noisy frame to the normalised clean estimate (see :mod:`emdenoise.models`).
:class:`Conditioned` wraps a model so that it sees a conditioned version of that frame instead, computed in
torch from the frame alone (so it runs on the GPU, is traced by the export, and training and inference do
exactly the same thing: the model file records the choice and :func:`emdenoise.io.modelfile.load_model`
wraps the model again). The output is the wrapped model's, unchanged: the clean estimate, normalised by the
model file's clean statistics. ``raw = x * noisy.std + noisy.mean`` brings the input back to stored units.

- ``none``: no wrapper (the model as before; model files without the choice read as none).
- ``flatfield``: ``raw / B`` with ``B = G*raw / G*1`` the frame's own beam estimate, a Gaussian of
  :data:`BEAM_SIGMA` px by normalised convolution (zero padding divided by the blurred ones, so borders and
  crops need no mirroring); then standardised with fixed numbers (``(f - 1) / (noisy.std / noisy.mean)``).
  The physics generator's clean image is flat-illuminated with mean about 1 (``noisy = Poisson(dose * beam *
  clean) / dose``): the flat-fielded frame estimates it directly. Clean targets only (a self-supervised target
  keeps the beam, which the input then no longer shows).
- ``anscombe``: counts ``c = raw / g`` with ``g`` the frame's gain (stored units per count, see
  :func:`frame_gain`), ``A = 2 sqrt(c + 3/8)`` (noise standard deviation about 1 everywhere, whatever the
  local dose), then standardised over the frame (mean 0, std 1), which the statistics of a crop and of a
  whole frame give a little differently.
- ``noise_level``: a second channel, the local Poisson standard deviation ``sqrt(g * G*raw)`` in normalised
  units. The models take one channel, so the two enter through a learned per-pixel map added to the frame:
  ``x + mlp(x, sigma)`` (1x1 convolutions, :data:`MIX_WIDTH` hidden channels, the last one zero at the start:
  the wrapped model starts as the bare one). It can rescale the frame by its noise level, not add spatial
  features of it.
- ``flatfield+noise_level``: both (the flat-fielded input and the noise channel of the raw frame, scaled to it).
- ``wiener_prior``: the frame and, as a second input channel, a classical estimate of it the network can lean on
  and repair: the spectral Wiener filter of the flat-fielded frame (:func:`wiener_estimate`; after Kilaas,
  J. Microsc. 190, 45, 1998: gain ``max(0, 1 - 2 N / P)`` with ``P`` the frame's power spectrum smoothed over 3x3
  frequencies and ``N`` the white Poisson noise power its own counts give; the flat-fielded frame shrunk towards
  its mean where the counts are few, the estimate kept within [0, 3]), normalised as the clean targets
  are (clean supervision only, as flatfield). Where a lattice stands out of the noise the estimate keeps it; the
  network sees both, so it can keep the lattice prior and mend what the filter smears (vacancies, edges). Needs a
  model that takes two input channels (:func:`emdenoise.models.multichannel`). Computed on what the network is given (a
  training crop, a tile or a whole frame), so training and inference do the same.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from emdenoise import models
from emdenoise.models._common import HIGHPASS_GAIN, highpass, padded_apply
from emdenoise.training.choices import CONDITION_CHANNELS, CONDITIONS

PRESMOOTH_SIGMA = 3.0  # px: the blur before the beam fit's logarithm
LEVEL_FLOOR = 0.05  # wiener_prior: the local level's floor, as a fraction of its mean, in the noise estimate
# wiener_prior: the noise power over-subtracted this many times (the Wiener gain max(0, 1 - OVERSUBTRACT N / P)),
# chosen on the 152 non-vacuum val images of the zoo's graphene data (seed 11): 30.9 dB against 30.4 at 3, 29.4 at 6
WIENER_OVERSUBTRACT = 2.0
PRIOR_MAX = 3.0  # wiener_prior: the estimate's bound, in units of the flat frame's mean (1)
MIX_WIDTH = 16  # hidden channels of the noise_level mixing
EPS = 1e-6  # smallest beam / gain, relative to the frame's mean, before dividing by it


def gaussian_kernel(sigma: float) -> torch.Tensor:
    """A normalised 1-D Gaussian of ``sigma`` px, 3 sigma each side."""
    r = int(math.ceil(3 * sigma))
    t = torch.arange(-r, r + 1, dtype=torch.float32)
    k = torch.exp(-0.5 * (t / sigma) ** 2)
    return k / k.sum()


def smooth(x: torch.Tensor, kernel: torch.Tensor) -> torch.Tensor:
    """Normalised convolution of a (B, 1, H, W) tensor with the separable ``kernel``: ``G*x / G*1`` with zero
    padding, so a border pixel is the weighted mean of the pixels that exist (any size, no mirroring)."""
    r = kernel.numel() // 2
    kh, kw = kernel.view(1, 1, -1, 1), kernel.view(1, 1, 1, -1)

    def blur(t: torch.Tensor) -> torch.Tensor:
        return F.conv2d(F.conv2d(t, kh, padding=(r, 0)), kw, padding=(0, r))

    return blur(x) / blur(torch.ones_like(x[:1]))


def quadratic_fit(z: torch.Tensor) -> torch.Tensor:
    """The least-squares fit of ``a + b y + c x + d y^2 + e x^2 + f x y`` to each frame of a (B, 1, H, W)
    tensor. On a full grid the centred monomials ``1, y, x, y^2 - <y^2>, x^2 - <x^2>, x y`` are orthogonal, so
    the fit is six projections (means), no solve: it runs on any device, for any size, and exports."""
    h, w = z.shape[-2:]
    y = torch.linspace(-1.0, 1.0, h, device=z.device, dtype=z.dtype).view(h, 1).expand(h, w)
    x = torch.linspace(-1.0, 1.0, w, device=z.device, dtype=z.dtype).view(1, w).expand(h, w)
    fit = z.mean(dim=(-2, -1), keepdim=True).expand_as(z)
    for basis in (y, x, y * y - (y * y).mean(), x * x - (x * x).mean(), x * y):
        norm = (basis * basis).mean().clamp_min(EPS)
        fit = fit + basis * ((z * basis).mean(dim=(-2, -1), keepdim=True) / norm)
    return fit


def beam_estimate(raw: torch.Tensor, fine: torch.Tensor) -> torch.Tensor:
    """The frame's illumination up to a constant factor: a Gaussian beam of any centre, width and ellipse is the
    exponential of a quadratic, so ``exp(quadratic_fit(log(G_fine * raw)))`` (the fine blur keeps the log off
    zero counts). Exact for such a beam, whether it fills a crop or a whole frame; the specimen's own slow
    variations enter the fit a little."""
    level = smooth(raw.clamp_min(0), fine)
    floor = EPS * level.mean(dim=(-2, -1), keepdim=True).clamp_min(EPS)
    return torch.exp(quadratic_fit(torch.log(level + floor)))


def frame_gain(raw: torch.Tensor) -> torch.Tensor:
    """Stored units per count of each frame of a (B, 1, H, W) Poisson image, (B, 1, 1, 1): the high-pass
    residual's variance over the mean level (Poisson: variance = gain x mean), pooled over the frame. Signal in
    the residual (fine lattices) raises it a little; an offset in the data would bias it."""
    level = raw.clamp_min(0)
    residual = highpass(raw)
    variance = (residual * residual).mean(dim=(-2, -1), keepdim=True) / HIGHPASS_GAIN
    mean = level.mean(dim=(-2, -1), keepdim=True)
    return variance / mean.clamp_min(EPS)


def wiener_estimate(flat: torch.Tensor, noise_variance: torch.Tensor) -> torch.Tensor:
    """The spectral Wiener estimate of each (B, 1, H, W) zero-mean frame ``flat`` whose white noise has variance
    ``noise_variance`` (B, 1, 1, 1) per pixel: each frequency scaled by ``max(0, 1 - k N / P)``, ``N = H W x
    variance`` the noise's expected power, ``k`` :data:`WIENER_OVERSUBTRACT` and ``P`` the frame's power
    smoothed over 3x3 neighbouring frequencies (circularly). Frequencies the noise explains go to 0; a
    lattice's peaks pass almost whole."""
    h, w = flat.shape[-2:]
    spectrum = torch.fft.fft2(flat)
    power = spectrum.real**2 + spectrum.imag**2
    power = F.avg_pool2d(F.pad(power, (1, 1, 1, 1), mode="circular"), 3, stride=1)
    gain = (1.0 - WIENER_OVERSUBTRACT * noise_variance * (h * w) / power.clamp_min(1e-30)).clamp(0.0, 1.0)
    return torch.fft.ifft2(spectrum * gain).real


def input_channels(condition: str) -> int:
    """How many input channels a model conditioned as ``condition`` takes."""
    return CONDITION_CHANNELS.get(condition, 1)


class Conditioned(nn.Module):
    """``net`` fed the ``condition`` of its normalised input (module docstring); ``noisy`` and ``clean`` are
    the model file's normalisation statistics (mean, std)."""

    def __init__(self, net: nn.Module, condition: str, noisy: tuple[float, float], clean: tuple[float, float]):
        super().__init__()
        if condition not in CONDITIONS or condition == "none":
            raise ValueError(f"condition must be one of {CONDITIONS[1:]}, got {condition!r}")
        self.net, self.condition = net, condition
        self.size_multiple = int(getattr(net, "size_multiple", 1))
        self.in_mean, self.in_std = float(noisy[0]), float(noisy[1])
        self.out_mean, self.out_std = float(clean[0]), float(clean[1])
        # the noisy frames' relative spread: scales the flat-fielded frame (about 1) to unit-ish values
        self.flat_scale = self.in_std / self.in_mean if self.in_mean > 0 else 1.0
        self.fine: torch.Tensor
        self.register_buffer("fine", gaussian_kernel(PRESMOOTH_SIGMA), persistent=False)
        self.mix: nn.Module | None = None
        if condition.endswith("noise_level"):
            last = nn.Conv2d(MIX_WIDTH, 1, 1, bias=False)
            nn.init.zeros_(last.weight)
            self.mix = nn.Sequential(nn.Conv2d(2, MIX_WIDTH, 1), nn.ReLU(inplace=True), last)

    def inputs(self, x: torch.Tensor) -> torch.Tensor:
        """The model's input for a normalised (B, 1, H, W) frame x (H, W already padded as the model needs)."""
        raw = x.float() * self.in_std + self.in_mean
        if self.condition == "anscombe":
            counts = raw.clamp_min(0) / frame_gain(raw).clamp_min(EPS)
            a = 2.0 * torch.sqrt(counts + 0.375)
            mean = a.mean(dim=(-2, -1), keepdim=True)
            return (a - mean) / a.std(dim=(-2, -1), keepdim=True).clamp_min(EPS)
        beam = beam_estimate(raw, self.fine)
        # the local mean level (stored units): the beam estimate's constant factor set so the flat frame's mean is 1
        level = beam * (raw / beam).mean(dim=(-2, -1), keepdim=True).clamp_min(EPS)
        if self.condition == "wiener_prior":
            return torch.cat((x.float(), self.prior(raw, level)), dim=1)
        if self.condition.startswith("flatfield"):
            h = (raw / level - 1.0) / self.flat_scale
            unit = level * self.flat_scale  # one unit of h, in stored units
        else:
            h, unit = x.float(), torch.full_like(level, self.in_std)
        if self.mix is None:
            return h
        sigma = torch.sqrt(frame_gain(raw) * level) / unit
        return h + self.mix(torch.cat((h, sigma), dim=1))

    def prior(self, raw: torch.Tensor, level: torch.Tensor) -> torch.Tensor:
        """wiener_prior's second channel: ``1 +`` the Wiener estimate of the flat-fielded frame ``raw / level -
        1`` (noise variance ``gain / level`` per pixel, averaged over the frame), normalised as the clean targets
        are: an estimate of the output itself, which the network may pass on where it holds."""
        gain = frame_gain(raw)
        floor = LEVEL_FLOOR * level.mean(dim=(-2, -1), keepdim=True)
        variance = (gain / torch.maximum(level, floor.clamp_min(EPS))).mean(dim=(-2, -1), keepdim=True)
        # shrunk towards the mean where the counts are few (c = level / gain counts per pixel: weight c / (c + 1)),
        # else a crop outside the beam, flat-fielded by a level near 0, gives values of 1e4 and more
        flat = (raw / level - 1.0) * level / (level + gain + EPS * EPS)
        estimate = (1.0 + wiener_estimate(flat, variance)).clamp(0.0, PRIOR_MAX)
        return (estimate - self.out_mean) / self.out_std

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.autocast(x.device.type, enabled=False):
            h = self.inputs(x)
        return self.net(h.to(x.dtype))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # padded here first, so the conditioning sees the frame the model sees (and the export, which pads
        # outside the traced network, computes the same)
        return padded_apply(self._forward, x, self.size_multiple)


def stats(normalisation: Mapping[str, Any]) -> tuple[tuple[float, float], tuple[float, float]]:
    """(noisy (mean, std), clean (mean, std)) of a model file's ``normalisation``."""
    pick = lambda side: (float(normalisation[side]["mean"]), float(normalisation[side]["std"]))  # noqa: E731
    return pick("noisy"), pick("clean")


def wrap(net: nn.Module, condition: str, normalisation: Mapping[str, Any]) -> nn.Module:
    """``net`` conditioned as ``condition`` says (itself for none), for a model file's ``normalisation``."""
    if condition == "none":
        return net
    return Conditioned(net, condition, *stats(normalisation))


def build(name: str, options: Mapping[str, Any], condition: str, normalisation: Mapping[str, Any]) -> nn.Module:
    """Model ``name`` built with its constructor ``options`` and the input channels ``condition`` gives it,
    wrapped to see that condition (training and the model file's loader build it so)."""
    net = models.build(name, in_channels=input_channels(condition), **options)
    return wrap(net, condition, normalisation)


def condition_of(model: nn.Module) -> str:
    return model.condition if isinstance(model, Conditioned) else "none"


def load_weights(target: nn.Module, source: nn.Module) -> None:
    """``source``'s weights into ``target`` (train.init_from): whole when both have the same conditioning,
    else the bare models' weights (a mixing layer not in the source keeps its start: the bare model). A weight
    with more input channels in the target (wiener_prior from a one-channel model) takes the source's in its
    first channels and zeros in the rest, so the target starts as the source."""
    if condition_of(target) == condition_of(source):
        target.load_state_dict(source.state_dict())
        return
    bare = lambda m: m.net if isinstance(m, Conditioned) else m  # noqa: E731
    state = bare(source).state_dict()
    for key, value in bare(target).state_dict().items():
        have = state.get(key)
        if have is not None and have.dim() > 1 and have.shape[1] < value.shape[1] and have.shape[2:] == value.shape[2:]:
            widened = torch.zeros_like(value)
            widened[:, : have.shape[1]] = have
            state[key] = widened
    bare(target).load_state_dict(state)
