"""The optimiser side of the recipe (emdenoise.training.optim): the warm-up before the schedule and the
exponential moving average of the weights (train.warmup_steps, train.ema)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from emdenoise.training import optim


def test_warmup_ramps_linearly_then_follows_the_schedule():
    plain, warm = optim.lr_factor("cosine", 100), optim.lr_factor("cosine", 100, warmup_steps=10)
    assert [warm(s) for s in (0, 4, 9)] == pytest.approx([0.1 * plain(0), 0.5 * plain(4), plain(9)])
    assert [warm(s) for s in (10, 50, 99)] == pytest.approx([plain(10), plain(50), plain(99)])
    assert optim.lr_factor("constant", 10, 4)(1) == pytest.approx(0.5)


def _linear(value: float) -> nn.Module:
    layer = nn.BatchNorm1d(2)
    with torch.no_grad():
        layer.weight.fill_(value)
        layer.running_mean.fill_(value)
    layer.num_batches_tracked.fill_(int(value))
    return layer


def test_the_average_follows_the_weights_with_its_decay():
    model = _linear(0.0)
    off = optim.Averager(model, 0.0)
    assert off.model is model and off.state() is None
    avg = optim.Averager(model, 0.9)
    assert avg.model is not model and not any(p.requires_grad for p in avg.model.parameters())
    expected = 0.0
    for n, value in enumerate((10.0, 10.0, 4.0), start=1):
        with torch.no_grad():
            model.weight.fill_(value)
            model.running_mean.fill_(value)
        model.num_batches_tracked.fill_(int(value))
        avg.update(model)
        d = min(0.9, (1 + n) / (10 + n))  # the early steps forget the start faster
        expected = d * expected + (1 - d) * value
        assert avg.model.weight[0].item() == pytest.approx(expected)
        assert avg.model.running_mean[0].item() == pytest.approx(expected)  # float buffers averaged too
        assert avg.model.num_batches_tracked.item() == int(value)  # integers copied
    assert model.weight[0].item() == 4.0  # the trained model itself is untouched


def test_the_average_survives_a_checkpoint():
    model = _linear(3.0)
    avg = optim.Averager(model, 0.99)
    avg.update(_linear(5.0))
    state = avg.state()
    again = optim.Averager(_linear(0.0), 0.99)
    again.load(state, model)
    assert again.updates == 1 and again.model.weight[0].item() == pytest.approx(avg.model.weight[0].item())
    fresh = optim.Averager(_linear(0.0), 0.99)
    fresh.load(None, model)  # a checkpoint written without an average: it starts from the weights
    assert fresh.model.weight[0].item() == 3.0
