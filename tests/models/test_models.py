"""Tests of the model registry and the eight denoisers in emdenoise/models/."""

from __future__ import annotations

import importlib
import inspect
import re

import pytest
import torch
import torch.nn.functional as F

from emdenoise import models
from emdenoise.config import params
from emdenoise.models._common import border_pad, box_filter, conv_macs, pad_to_multiple, padded_apply
from emdenoise.models.ffdnet import noise_level_map

# The parameter counts of the project's model notes (shared/reference/models.md), 1 -> 1 channel
NOTES_PARAMS = {
    "cafcn": 0.66e6,
    "dncnn": 0.56e6,
    "ffdnet": 0.49e6,
    "unet": 7.8e6,
    "rednet": 1.04e6,
    "mscnn": 0.34e6,
    "msdnet": 45_652,
    "sciml_ae": 122_737,
}
EXACT = ("msdnet", "sciml_ae")
LIGHT = ("ffdnet", "unet", "msdnet", "sciml_ae")  # cheap enough on CPU for full-size images by default


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """These small tensors run faster on one thread, and much faster on a shared, busy machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _build(name, **options):
    torch.manual_seed(0)
    return models.build(name, **options)


def _synthetic_pairs(n=4, size=20, sigma=0.5, seed=0):
    """n noisy/clean pairs of normalised images with blobs and a rectangle (real structure to learn)."""
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.arange(size).float(), torch.arange(size).float(), indexing="ij")
    clean = torch.zeros(n, 1, size, size)
    for img in clean[:, 0]:
        for _ in range(4):
            cy, cx = (torch.rand(2, generator=g) * size).tolist()
            r = 2 + torch.rand(1, generator=g).item() * size / 6
            img += torch.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * r * r))
        y0, x0 = (torch.rand(2, generator=g) * size / 2).long().tolist()
        img[y0 : y0 + size // 3, x0 : x0 + size // 4] += 1
    clean = (clean - clean.mean()) / clean.std()
    return clean + sigma * torch.randn(clean.shape, generator=g), clean


# --- registry ------------------------------------------------------------------------------------------

MODEL_NAMES = models.names()


def test_registry_lists_all_eight_models_and_the_schema_takes_its_names():
    assert MODEL_NAMES == ("cafcn", "dncnn", "ffdnet", "unet", "rednet", "mscnn", "msdnet", "sciml_ae")
    assert params.TrainParams.fields()["model"].allowed == MODEL_NAMES
    assert params.TestParams.fields()["models"].allowed == MODEL_NAMES + ("none",)


def test_unknown_model_is_a_clear_key_error():
    with pytest.raises(KeyError, match="unknown model 'resnet'.*unet"):
        models.get("resnet")


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_model_options_are_in_the_schema_and_defaults_agree(name):
    spec = models.get(name)
    options = models.options_from_train(name, params.defaults().train)
    assert set(options) == set(spec.options)
    signature = inspect.signature(spec.factory)
    train_fields = params.TrainParams.fields()
    for option, (key, fld) in spec.options.items():
        assert train_fields[key] is fld, f"{name}: train.{key} is not in the schema"
        assert signature.parameters[option].default == fld.default
    # building from the train defaults gives the documented model
    assert models.count_parameters(models.build(name, **options)) == spec.documented_params


def test_options_from_train_picks_the_model_options():
    train = params.defaults().train.replace(
        unet_base=64, msdnet_depth=7, msdnet_width=3, dncnn_depth=20, rednet_depth=10
    )
    assert models.options_from_train("unet", train) == {"base": 64}
    assert models.options_from_train("msdnet", train) == {"depth": 7, "width": 3}
    assert models.options_from_train("dncnn", train) == {"depth": 20}
    assert models.options_from_train("rednet", train) == {"depth": 10}
    assert models.options_from_train("sciml_ae", train) == {}
    msd = models.build("msdnet", **models.options_from_train("msdnet", train))
    assert len(msd.layers) == 7 and msd.layers[-1].out_channels == 3


# --- parameter counts ----------------------------------------------------------------------------------


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_parameter_count_matches_documented_and_notes(name):
    spec = models.get(name)
    count = models.count_parameters(models.build(name))
    assert abs(count - spec.documented_params) <= 0.03 * spec.documented_params
    assert abs(count - NOTES_PARAMS[name]) <= 0.03 * NOTES_PARAMS[name]
    if name in EXACT:
        assert count == spec.documented_params == NOTES_PARAMS[name]


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_docstring_states_the_documented_count(name):
    doc = importlib.import_module(f"emdenoise.models.{name}").__doc__
    match = re.search(r"Parameters: ([\d,]+)", doc)
    assert match, f"{name}: no 'Parameters: N' in the module docstring"
    assert int(match.group(1).replace(",", "")) == models.get(name).documented_params


def test_unet_paper_width_has_31_million_parameters():
    count = models.count_parameters(models.build("unet", base=64))
    assert count == 31_030_593
    assert "31,030,593" in importlib.import_module("emdenoise.models.unet").__doc__


def test_depth_options_change_the_networks():
    assert models.count_parameters(models.build("dncnn", depth=20)) > models.count_parameters(models.build("dncnn"))
    # RED10: 5 conv + 5 deconv layers
    assert len(models.build("rednet", depth=10).convs) == 5
    with pytest.raises(ValueError, match="even"):
        models.build("rednet", depth=7)
    # MS-D: layer i sees 1 + i * width maps
    assert models.count_parameters(models.build("msdnet", depth=3, width=2)) == (1 * 2 * 9 + 2) + (3 * 2 * 9 + 2) + (
        5 * 2 * 9 + 2
    ) + (7 + 1)


def test_sciml_ae_costs_1_34_gflop_per_256_image():
    flops = 2 * conv_macs(models.build("sciml_ae"), 256, 256)
    assert flops == pytest.approx(1.34e9, rel=0.01)


# --- shapes --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_small_odd_sizes_keep_shape_and_train(name):
    net = _build(name).train()
    x = torch.randn(2, 1, 29, 45, requires_grad=True)
    y = net(x)
    assert y.shape == x.shape
    y.square().mean().backward()
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    grads = [p.grad for p in net.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    net.eval()
    with torch.no_grad():
        tiny = torch.randn(1, 1, 7, 9)
        assert net(tiny).shape == tiny.shape


@pytest.mark.parametrize("size", [(256, 256), (250, 310)])
@pytest.mark.parametrize("name", [n if n in LIGHT else pytest.param(n, marks=pytest.mark.slow) for n in MODEL_NAMES])
def test_full_size_images_keep_shape(name, size):
    net = _build(name).eval()
    x = torch.randn(1, 1, *size)
    with torch.no_grad():
        y = net(x)
    assert y.shape == x.shape
    assert torch.isfinite(y).all()


def test_padding_is_cropped_back_exactly():
    # a model that needs a multiple of 16 sees the image itself in the top-left corner
    seen = {}

    def spy(t):
        seen["t"] = t
        return t * 2

    x = torch.randn(1, 1, 45, 61)
    y = padded_apply(spy, x, 16)
    assert seen["t"].shape[-2:] == (48, 64)
    assert torch.equal(seen["t"][..., :45, :61], x)
    assert torch.equal(y, 2 * x)
    assert pad_to_multiple(x, 1) is x
    # too small to mirror: falls back to repeating the edge
    assert pad_to_multiple(torch.randn(1, 1, 3, 3), 16).shape[-2:] == (16, 16)


# --- learning ------------------------------------------------------------------------------------------

SLOW_TO_FIT = ("cafcn", "dncnn", "rednet", "unet", "msdnet")  # several seconds each on CPU


@pytest.mark.parametrize(
    "name", [pytest.param(n, marks=pytest.mark.slow) if n in SLOW_TO_FIT else n for n in MODEL_NAMES]
)
def test_each_model_overfits_four_images(name):
    noisy, clean = _synthetic_pairs()
    net = _build(name).train()
    opt = torch.optim.Adam(net.parameters(), lr=2e-3)
    with torch.no_grad():
        initial = F.mse_loss(net(noisy), clean).item()
    for _ in range(30):
        opt.zero_grad()
        loss = F.mse_loss(net(noisy), clean)
        loss.backward()
        opt.step()
    with torch.no_grad():
        final = F.mse_loss(net(noisy), clean).item()
    assert final < 0.3 * initial, f"{name}: loss {initial:.3f} -> {final:.3f}"


# --- FFDNet's noise-level map --------------------------------------------------------------------------


def test_ffdnet_noise_map_estimates_the_local_noise_level():
    g = torch.Generator().manual_seed(1)
    # a smooth ramp with white noise 0.1 on the left half and 0.4 on the right half
    ramp = torch.linspace(-1, 1, 128).expand(128, 128)
    sigma = torch.full((128, 128), 0.1)
    sigma[:, 64:] = 0.4
    x = (ramp + sigma * torch.randn(128, 128, generator=g))[None, None]
    est = noise_level_map(x)[0, 0]
    assert est.shape == (128, 128)
    assert est[:, 8:56].mean().item() == pytest.approx(0.1, rel=0.1)
    assert est[:, 72:120].mean().item() == pytest.approx(0.4, rel=0.1)
    # a dead pixel stands out with a large sigma
    x[0, 0, 40, 30] = -5
    assert noise_level_map(x)[0, 0, 40, 30] > 5 * est[40, 30]


def test_ffdnet_noise_map_is_computed_from_the_input_without_gradient():
    x = torch.randn(1, 1, 32, 32, requires_grad=True)
    assert not noise_level_map(x).requires_grad
    net = _build("ffdnet").eval()
    with torch.no_grad():
        a, b = net(x), net(x.clone())
    assert torch.equal(a, b)  # deterministic: the same input gives the same map and output


def test_box_filter_is_a_local_mean():
    x = torch.randn(1, 1, 20, 20)
    inner = box_filter(x, 3)[0, 0, 5, 7]
    assert inner.item() == pytest.approx(x[0, 0, 4:7, 6:9].mean().item(), abs=1e-6)
    assert box_filter(torch.full((1, 1, 9, 9), 3.0), 7).allclose(torch.tensor(3.0))


# --- MS-D buffer implementation against plain concatenation --------------------------------------------


def _msd_by_concatenation(net, x):
    """MS-D as the paper writes it: concatenate every previous map at every layer (slow, obviously right)."""
    m = max(net.dilations)
    mirror = m < min(x.shape[-2:])  # the buffer mirrors by the largest dilation, else repeats the edge
    maps = [x]
    for conv, d in zip(net.layers, net.dilations):
        inp = torch.cat(maps, dim=1)
        inp = F.pad(inp, (d, d, d, d), mode="reflect" if mirror else "replicate")
        maps.append(F.relu(F.conv2d(inp, conv.weight, conv.bias, dilation=d)))
    return net.output(torch.cat(maps, dim=1))


@pytest.mark.parametrize("depth, width, size", [(12, 2, (17, 23)), (23, 1, (12, 14)), (11, 1, (6, 7))])
def test_msdnet_buffer_equals_concatenation_forward_and_gradients(depth, width, size):
    net = _build("msdnet", depth=depth, width=width).double()
    assert net.dilations[:11] == (1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 1)[:depth]
    x = torch.randn(2, 1, *size, dtype=torch.double, requires_grad=True)
    target = torch.randn(2, 1, *size, dtype=torch.double)

    y = net(x)
    (y * target).sum().backward()
    grads = [p.grad.clone() for p in net.parameters()] + [x.grad.clone()]
    net.zero_grad()
    x.grad = None

    y_ref = _msd_by_concatenation(net, x)
    (y_ref * target).sum().backward()
    grads_ref = [p.grad for p in net.parameters()] + [x.grad]

    torch.testing.assert_close(y, y_ref)
    assert len(grads) == len(grads_ref) == 2 * depth + 2 + 1
    for g, g_ref in zip(grads, grads_ref):
        torch.testing.assert_close(g, g_ref)
    assert any(g.abs().sum() > 0 for g in grads[:-1])


def test_msdnet_backward_passes_gradcheck():
    """The hand-written backward pass against finite differences, for the input and for every weight."""
    net = _build("msdnet", depth=3, width=2).double()
    with torch.no_grad():
        for p in net.parameters():  # non-zero biases: a generic point, away from ReLU kinks
            p.add_(0.01 * torch.randn_like(p))
    x = torch.randn(2, 1, 4, 5, dtype=torch.double, requires_grad=True)
    assert torch.autograd.gradcheck(net, (x,))

    names = [n for n, _ in net.named_parameters()]
    weights = tuple(p.detach().clone().requires_grad_() for p in net.parameters())

    def by_weights(*ws):
        return torch.func.functional_call(net, dict(zip(names, ws)), (x.detach(),))

    assert torch.autograd.gradcheck(by_weights, weights)


def test_msdnet_works_under_no_grad():
    net = _build("msdnet", depth=5).eval()
    x = torch.randn(1, 1, 30, 40)
    with torch.no_grad():
        y = net(x)
    assert not y.requires_grad
    torch.testing.assert_close(y, _msd_by_concatenation(net, x).detach())


def test_border_pad_falls_back_to_replicate_for_tiny_images():
    x = torch.arange(4.0).view(1, 1, 2, 2)
    assert torch.equal(border_pad(x, 1, 1, 1, 1), F.pad(x, (1, 1, 1, 1), mode="reflect"))
    assert torch.equal(border_pad(x, 2, 2, 2, 2), F.pad(x, (2, 2, 2, 2), mode="replicate"))
