"""The optimisers, learning-rate schedules and losses a run may name (``train.optimizer``, ``train.lr_schedule``,
``train.loss``), each a table from the name to what implements it; the weight average (``train.ema``)."""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import nn

STEP_MILESTONES = (0.5, 0.75)  # lr_schedule "step": x0.1 after half and after three quarters of all steps
SGD_MOMENTUM = 0.9

OptimizerFactory = Callable[[Iterable[nn.Parameter], float], torch.optim.Optimizer]
Schedule = Callable[[int], float]

OPTIMIZERS: dict[str, OptimizerFactory] = {
    "adam": lambda params, lr: torch.optim.Adam(params, lr=lr),
    "adamw": lambda params, lr: torch.optim.AdamW(params, lr=lr),
    "sgd": lambda params, lr: torch.optim.SGD(params, lr=lr, momentum=SGD_MOMENTUM),
}


def _cosine(total_steps: int) -> Schedule:
    return lambda s: 0.5 * (1.0 + math.cos(math.pi * min(s, total_steps) / total_steps))


def _step(total_steps: int) -> Schedule:
    milestones = [int(m * total_steps) for m in STEP_MILESTONES]
    return lambda s: 0.1 ** sum(s >= m for m in milestones)


SCHEDULES: dict[str, Callable[[int], Schedule]] = {
    "constant": lambda total_steps: lambda s: 1.0,
    "cosine": _cosine,
    "step": _step,
}

LOSSES: dict[str, Callable[[], nn.Module]] = {"mse": nn.MSELoss, "l1": nn.L1Loss}


def make_optimizer(name: str, params: Iterable[nn.Parameter], lr: float) -> torch.optim.Optimizer:
    if name not in OPTIMIZERS:
        raise ValueError(f"unknown optimizer {name!r}")
    return OPTIMIZERS[name](params, lr)


def lr_factor(schedule: str, total_steps: int, warmup_steps: int = 0) -> Schedule:
    """The learning-rate multiplier of optimiser step ``s`` (0-based) over a run of ``total_steps``: the
    schedule's, times a linear ramp from ``1 / warmup_steps`` to 1 over the first ``warmup_steps`` steps."""
    if schedule not in SCHEDULES:
        raise ValueError(f"unknown lr_schedule {schedule!r}")
    base = SCHEDULES[schedule](total_steps)
    if warmup_steps <= 0:
        return base
    return lambda s: min(1.0, (s + 1) / warmup_steps) * base(s)


def make_loss(name: str) -> nn.Module:
    return LOSSES[name]()


def masked_loss(name: str, out: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The loss ``name`` (``mse`` or ``l1``) over the pixels of ``mask``."""
    err = out - target
    err = err.square() if name == "mse" else err.abs()
    weight = mask.to(err.dtype)
    return (err * weight).sum() / weight.sum().clamp(min=1.0)


class Averager:
    """The exponential moving average of a model's weights (``train.ema``: the decay per optimiser step; 0: no
    average, :attr:`model` is the trained model itself). Every floating-point tensor of the state is averaged
    (weights and batch-norm statistics), integer ones are copied. The first steps
    average with a smaller decay, ``min(decay, (1 + n) / (10 + n))`` after ``n`` updates, so the early,
    random weights fade out quickly."""

    def __init__(self, model: nn.Module, decay: float):
        self.decay, self.updates = float(decay), 0
        self.model = copy.deepcopy(model).eval().requires_grad_(False) if decay > 0 else model

    @property
    def enabled(self) -> bool:
        return self.decay > 0

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """One step of the average towards ``model``'s current weights."""
        if not self.enabled:
            return
        self.updates += 1
        d = min(self.decay, (1 + self.updates) / (10 + self.updates))
        mine, theirs = self.model.state_dict(), model.state_dict()
        floats = [k for k, v in mine.items() if v.is_floating_point()]
        torch._foreach_lerp_([mine[k] for k in floats], [theirs[k].detach() for k in floats], 1.0 - d)
        for k, v in mine.items():
            if not v.is_floating_point():
                v.copy_(theirs[k])

    def state(self) -> dict[str, Any] | None:
        """What a checkpoint keeps of the average (None when there is none)."""
        if not self.enabled:
            return None
        return {"updates": self.updates, "weights": {k: v.clone() for k, v in self.model.state_dict().items()}}

    def load(self, state: dict[str, Any] | None, model: nn.Module) -> None:
        """Restore :meth:`state`; a checkpoint without one (written with no average) starts it from ``model``."""
        if not self.enabled:
            return
        if state is None:
            self.model.load_state_dict(model.state_dict())
            return
        self.updates = int(state["updates"])
        self.model.load_state_dict(state["weights"])
