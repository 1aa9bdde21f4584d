"""Device and precision resolution (emdenoise.runtime.device): choices, one-line errors naming the field."""

from __future__ import annotations

import pytest
import torch

from emdenoise.errors import InputError
from emdenoise.runtime import device as runtime


def test_runtime_choices():
    cpu = torch.device("cpu")
    assert runtime.resolve_device("cpu") == cpu
    assert runtime.resolve_precision("fp32", cpu) == "fp32"
    assert runtime.resolve_precision("auto", cpu) == ("bf16" if runtime.cpu_has_native_bf16() else "fp32")
    with pytest.raises(InputError, match="^my.yaml: test.precision: expected fp32, bf16 or auto on the CPU"):
        runtime.resolve_precision("fp16", cpu, "test.precision", "my.yaml")
    if not torch.cuda.is_available():
        assert runtime.resolve_device("auto") == cpu
        with pytest.raises(InputError, match="^my.yaml: train.device: expected auto or cpu"):
            runtime.resolve_device("cuda:0", "train.device", "my.yaml")
