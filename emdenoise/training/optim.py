"""The optimisers, learning-rate schedules and losses a run may name (``train.optimizer``, ``train.lr_schedule``,
``train.loss``), each a table from the name to what implements it."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable

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


def lr_factor(schedule: str, total_steps: int) -> Schedule:
    """The learning-rate multiplier of optimiser step ``s`` (0-based) over a run of ``total_steps``."""
    if schedule not in SCHEDULES:
        raise ValueError(f"unknown lr_schedule {schedule!r}")
    return SCHEDULES[schedule](total_steps)


def make_loss(name: str) -> nn.Module:
    return LOSSES[name]()


def masked_loss(name: str, out: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The loss ``name`` (``mse`` or ``l1``) over the pixels of ``mask``."""
    err = out - target
    err = err.square() if name == "mse" else err.abs()
    weight = mask.to(err.dtype)
    return (err * weight).sum() / weight.sum().clamp(min=1.0)
