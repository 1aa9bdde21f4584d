"""The schema's fixed choices come from the modules that implement them, and each one is implemented."""

from __future__ import annotations

import pytest
import torch

from emdenoise import runtime
from emdenoise.config import params
from emdenoise.training import choices, optim, supervision


def test_the_schema_offers_exactly_the_implemented_choices():
    train = params.TrainParams.fields()
    assert train["optimizer"].allowed == choices.OPTIMIZERS
    assert train["lr_schedule"].allowed == choices.LR_SCHEDULES
    assert train["loss"].allowed == choices.LOSSES
    assert train["supervision"].allowed == choices.SUPERVISIONS == supervision.MODES
    # the implementing tables hold exactly these names, in the same order
    assert tuple(optim.OPTIMIZERS) == choices.OPTIMIZERS and tuple(optim.SCHEDULES) == choices.LR_SCHEDULES
    assert tuple(optim.LOSSES) == choices.LOSSES
    for section in (params.TrainParams, params.TestParams, params.DenoiseParams):
        assert section.fields()["precision"].allowed == ("auto",) + runtime.PRECISIONS


@pytest.mark.parametrize("name", choices.OPTIMIZERS)
def test_every_optimizer_is_implemented(name):
    weight = torch.nn.Parameter(torch.ones(3))
    opt = optim.make_optimizer(name, [weight], lr=0.1)
    weight.sum().backward()
    opt.step()
    assert (weight < 1).all()


@pytest.mark.parametrize("name", choices.LR_SCHEDULES)
def test_every_schedule_is_implemented(name):
    factor = optim.lr_factor(name, 100)
    assert factor(0) == 1.0 and 0.0 <= factor(99) <= 1.0


@pytest.mark.parametrize("name", choices.LOSSES)
def test_every_loss_is_implemented(name):
    assert optim.make_loss(name)(torch.zeros(2), torch.full((2,), 2.0)).item() > 0


@pytest.mark.parametrize("mode", choices.SUPERVISIONS)
def test_every_supervision_is_implemented(mode):
    noisy = torch.rand(2, 1, 16, 16)
    x, y, _ = supervision.Supervisor(mode).batch(noisy, noisy.clone(), None, torch.full((2,), 10.0), key=0)
    assert x.shape == y.shape == noisy.shape


def test_an_unknown_choice_is_refused_by_the_implementation():
    with pytest.raises(ValueError):
        optim.make_optimizer("adagrad", [torch.nn.Parameter(torch.ones(1))], lr=0.1)
    with pytest.raises(ValueError):
        optim.lr_factor("linear", 10)
    with pytest.raises(ValueError):
        supervision.Supervisor("noise2self").batch(torch.rand(1, 1, 8, 8), torch.rand(1, 1, 8, 8), None, None, key=0)
