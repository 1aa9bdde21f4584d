"""Input conditioning (emdenoise.models.conditioning): the wrapper's input and output shapes, where it is the
bare model (noise_level at its start, flatfield on a frame without a beam), that flat-fielding takes the beam
out, the gain estimate on Poisson frames of known dose, the Wiener prior's estimate of a lattice and of a frame
without one, and the weights of train.init_from across conditions (a one-channel model into a two-channel one)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from emdenoise import models
from emdenoise.models import conditioning
from emdenoise.models.conditioning import Conditioned

NORM = {"noisy": {"mean": 0.5, "std": 0.2}, "clean": {"mean": 1.0, "std": 0.05}}
CONDITIONS = conditioning.CONDITIONS[1:]  # all but none


def _net() -> torch.nn.Module:
    torch.manual_seed(0)
    return models.build("ffdnet", depth=3, channels=8)


def _beam(h: int, w: int) -> torch.Tensor:
    """A Gaussian beam with peak 1, centred off the middle, as the physics generator draws it."""
    y, x = torch.meshgrid(torch.arange(h, dtype=torch.float32), torch.arange(w, dtype=torch.float32), indexing="ij")
    return torch.exp(-((y - 0.3 * h) ** 2 + (x - 0.6 * w) ** 2) / (2 * (0.4 * h) ** 2))


def _lattice(h: int, w: int, contrast: float = 0.1) -> torch.Tensor:
    """A flat-illuminated image of mean 1 with a fine periodic pattern (period 6 px)."""
    y, x = torch.meshgrid(torch.arange(h, dtype=torch.float32), torch.arange(w, dtype=torch.float32), indexing="ij")
    return 1.0 + contrast * torch.cos(2 * np.pi * x / 6) * torch.cos(2 * np.pi * y / 6)


def _poisson(mean: torch.Tensor, dose: float, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.poisson(mean * dose, generator=gen) / dose


def _normalised(raw: torch.Tensor) -> torch.Tensor:
    return ((raw - NORM["noisy"]["mean"]) / NORM["noisy"]["std"])[None, None]


@pytest.mark.parametrize("condition", CONDITIONS)
def test_one_channel_in_and_out_for_any_size(condition):
    channels = conditioning.input_channels(condition)
    torch.manual_seed(0)
    name, options = ("unet", {"base": 4}) if channels > 1 else ("ffdnet", {"depth": 3, "channels": 8})
    wrapped = conditioning.build(name, options, condition, NORM)
    assert isinstance(wrapped, Conditioned) and wrapped.size_multiple == (16 if channels > 1 else 2)
    x = torch.randn(3, 1, 37, 50)
    assert wrapped.inputs(x).shape == (3, channels, 37, 50)
    out = wrapped(x)
    assert out.shape == (3, 1, 37, 50) and torch.isfinite(out).all()
    out.mean().backward()  # trainable end to end
    assert all(p.grad is not None for p in wrapped.net.parameters())


def test_none_is_the_bare_model_and_unknown_names_are_refused():
    net = _net()
    assert conditioning.wrap(net, "none", NORM) is net and conditioning.condition_of(net) == "none"
    with pytest.raises(ValueError, match="condition must be one of"):
        Conditioned(net, "gamma", (0.5, 0.2), (1.0, 0.05))


def test_noise_level_starts_as_the_bare_model():
    """The mixing's last layer starts at zero: before training the wrapped model computes what the bare one does
    (fine-tuning a bare model with a noise channel starts where it was)."""
    net = _net().eval()
    wrapped = conditioning.wrap(net, "noise_level", NORM).eval()
    x = _normalised(_poisson(0.5 * _lattice(48, 64), 200.0))
    with torch.no_grad():
        torch.testing.assert_close(wrapped(x), net(x))
    torch.nn.init.normal_(wrapped.mix[-1].weight)  # type: ignore[index]
    with torch.no_grad():
        assert not torch.allclose(wrapped(x), net(x))


def test_flatfield_is_the_normalised_frame_without_a_beam():
    """A frame of uniform illumination at the training data's mean level: the beam estimate is that level, so
    the flat-fielded input is the normalised frame itself (up to the pattern's leak into the blur)."""
    wrapped = conditioning.wrap(_net(), "flatfield", NORM)
    raw = NORM["noisy"]["mean"] * _lattice(96, 96, contrast=0.2)
    x = _normalised(raw)
    torch.testing.assert_close(wrapped.inputs(x), x, atol=0.02, rtol=0)


def test_flatfield_takes_the_beam_out():
    """The same lattice under a strong beam: the flat-fielded input matches the beamless one (within 10 % of its
    range away from the borders) and no longer follows the beam, which the raw input does, with or without
    Poisson noise."""
    wrapped = conditioning.wrap(_net(), "flatfield", NORM)
    flat = _lattice(128, 128)
    beam = _beam(128, 128)
    lit, even = wrapped.inputs(_normalised(0.5 * beam * flat))[0, 0], wrapped.inputs(_normalised(0.5 * flat))[0, 0]
    inner = (slice(16, -16), slice(16, -16))
    assert (lit[inner] - even[inner]).abs().max() < 0.1 * float(even.max() - even.min())
    corr = lambda a, b: float(np.corrcoef(a.flatten().numpy(), b.flatten().numpy())[0, 1])  # noqa: E731
    assert corr(_normalised(beam * flat)[0, 0], beam) > 0.9
    assert abs(corr(lit, beam)) < 0.2
    counted = _normalised(_poisson(0.5 * beam * flat, 100.0))
    assert corr(counted[0, 0], beam) > 0.9 and abs(corr(wrapped.inputs(counted)[0, 0], beam)) < 0.1


@pytest.mark.parametrize("dose", [30.0, 300.0, 3000.0])
def test_frame_gain_is_one_over_the_dose_of_a_poisson_frame(dose):
    raw = _poisson(_beam(128, 128) * _lattice(128, 128, contrast=0.01), dose)
    gain = conditioning.frame_gain(raw[None, None]).item()
    assert gain * dose == pytest.approx(1.0, rel=0.08)


def test_anscombe_gives_noise_of_one_level_under_the_beam():
    """Poisson noise under a beam: twice as noisy (relative) in the dim corner as in the bright middle on the
    raw frame; after the Anscombe transform the noise is the same everywhere (frame standardised: mean 0, std 1)."""
    wrapped = conditioning.wrap(_net(), "anscombe", NORM)
    beam = _beam(128, 128)
    a, b = (wrapped.inputs(_normalised(_poisson(0.5 * beam, 400.0, seed)))[0, 0] for seed in (1, 2))
    assert abs(a.mean().item()) < 1e-4 and a.std().item() == pytest.approx(1.0, abs=1e-3)
    noise = (a - b) / np.sqrt(2)
    bright, dim = beam > 0.8, beam < 0.3
    ratio = noise[bright].std() / noise[dim].std()
    assert ratio == pytest.approx(1.0, abs=0.15)


def test_init_weights_cross_conditions():
    bare, wrapped = _net(), conditioning.wrap(models.build("ffdnet", depth=3, channels=8), "noise_level", NORM)
    conditioning.load_weights(wrapped, bare)
    for key, value in bare.state_dict().items():
        torch.testing.assert_close(wrapped.state_dict()[f"net.{key}"], value)
    other = conditioning.wrap(models.build("ffdnet", depth=3, channels=8), "noise_level", NORM)
    conditioning.load_weights(other, wrapped)  # the same condition: every tensor, the mixing too
    for key, value in wrapped.state_dict().items():
        torch.testing.assert_close(other.state_dict()[key], value)


def test_wiener_prior_recovers_a_lattice_under_a_beam():
    """The second channel is the clean flat lattice within a small fraction of the noise a flat-fielded frame
    keeps; on a frame without a lattice it is nearly flat (the noise's power is what it removes)."""
    h = w = 96
    beam, clean = _beam(h, w), _lattice(h, w)
    wrapped = conditioning.build("unet", {"base": 4}, "wiener_prior", NORM)
    for image, most in ((clean, 0.05), (torch.ones(h, w), 0.05)):
        noisy = _poisson(0.5 * beam * image, 200.0)
        prior = wrapped.inputs(_normalised(noisy))[0, 1] * NORM["clean"]["std"] + NORM["clean"]["mean"]
        noise = noisy / (0.5 * beam) - image  # what flat-fielding with the true beam leaves
        inner = (slice(16, -16), slice(16, -16))  # away from the dim corners of the beam
        ratio = ((prior - image)[inner].pow(2).mean() / noise[inner].pow(2).mean()).item()
        assert ratio < most, ratio


def test_wiener_prior_needs_a_two_channel_model_and_starts_as_the_one_channel_one():
    with pytest.raises(ValueError, match="ffdnet takes one input channel.*unet"):
        conditioning.build("ffdnet", {"depth": 3, "channels": 8}, "wiener_prior", NORM)
    torch.manual_seed(0)
    bare = models.build("unet", base=4)
    prior = conditioning.build("unet", {"base": 4}, "wiener_prior", NORM)
    conditioning.load_weights(prior, bare)  # the prior channel's weights zero: the same output at the start
    x = _normalised(_poisson(0.5 * _beam(48, 48) * _lattice(48, 48), 100.0))
    with torch.no_grad():
        torch.testing.assert_close(prior(x), bare(x))
    first = prior.state_dict()["net.down.0.0.0.weight"]
    assert first.shape[1] == 2 and first[:, 1].abs().sum() == 0 and first[:, 0].abs().sum() > 0
