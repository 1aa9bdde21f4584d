"""Where a run computes: :class:`Runtime`, the device, the precision, this process's place among the processes
and the logger, resolved once by the task and passed down as one value."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import torch

from emdenoise.runtime import device as devices
from emdenoise.runtime.distributed import SINGLE, World


@dataclass(frozen=True)
class Runtime:
    """The device (``cpu``, ``cuda:N``), the resolved precision (``fp32``, ``bf16``, ``fp16``: never ``auto``),
    the process's :class:`~emdenoise.runtime.distributed.World` (SINGLE for one process) and the logger."""

    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    precision: str = "fp32"
    world: World = SINGLE
    log: logging.Logger = field(default_factory=lambda: logging.getLogger("emdenoise"))

    def __post_init__(self) -> None:
        object.__setattr__(self, "device", torch.device(self.device))
        if self.precision not in devices.PRECISIONS:
            raise ValueError(
                f"Runtime.precision: expected one of {', '.join(devices.PRECISIONS)}, got {self.precision!r}"
            )

    @classmethod
    def resolve(
        cls,
        device: str,
        precision: str,
        section: str,
        where: str,
        log: logging.Logger,
        world: World = SINGLE,
    ) -> Runtime:
        """The runtime that ``<section>.device`` and ``<section>.precision`` of the parameters file ``where``
        ask for on this machine (one-line InputErrors naming the field, see :mod:`emdenoise.runtime.device`)."""
        dev = devices.resolve_device(device, f"{section}.device", where)
        return cls(dev, devices.resolve_precision(precision, dev, f"{section}.precision", where), world, log)

    def on(self, device: torch.device) -> Runtime:
        """The same runtime on another device (the GPU a torchrun process is given)."""
        return Runtime(device, self.precision, self.world, self.log)

    @property
    def is_main(self) -> bool:
        """The process that logs and writes files (rank 0)."""
        return self.world.is_main
