"""The Runtime (emdenoise.runtime.context): resolved once from the parameters, one value passed down."""

from __future__ import annotations

import dataclasses
import logging

import pytest
import torch

from emdenoise.errors import InputError
from emdenoise.runtime import device as devices
from emdenoise.runtime.context import Runtime
from emdenoise.runtime.distributed import SINGLE, World


def test_runtime_resolves_the_parameters_once_and_is_frozen():
    log = logging.getLogger("test-runtime")
    rt = Runtime.resolve("cpu", "fp32", "train", "my.yaml", log)
    assert (rt.device, rt.precision, rt.world, rt.log) == (torch.device("cpu"), "fp32", SINGLE, log)
    assert rt.is_main and Runtime().precision == "fp32" and Runtime("cpu").device == torch.device("cpu")
    with pytest.raises(dataclasses.FrozenInstanceError):
        rt.precision = "bf16"  # type: ignore[misc]
    other = Runtime(world=World(rank=1, size=2)).on(torch.device("cpu"))
    assert other.world.rank == 1 and not other.is_main
    auto = Runtime.resolve("cpu", "auto", "test", "my.yaml", log)
    assert auto.precision == ("bf16" if devices.cpu_has_native_bf16() else "fp32")


def test_a_bad_choice_names_the_section_field():
    with pytest.raises(InputError, match="^my.yaml: denoise.precision: expected fp32, bf16 or auto on the CPU"):
        Runtime.resolve("cpu", "fp16", "denoise", "my.yaml", logging.getLogger("t"))
    with pytest.raises(ValueError, match="Runtime.precision: expected one of fp32, bf16, fp16, got 'auto'"):
        Runtime(precision="auto")  # a Runtime holds a resolved precision, never auto
