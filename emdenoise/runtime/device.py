"""Where and how a model runs: device and precision choice, autocast, seeding, RNG state capture.

``device: auto`` picks CUDA when present, else the CPU. ``precision: auto`` picks bfloat16 autocast on a GPU
that supports it (float16 on an older one) and on a CPU only when the CPU computes bfloat16 natively
(AVX512-BF16 or AMX). Measured on a 2-core AMD EPYC with AVX2 only (no native bfloat16), training the
reference autoencoder (256x256, batch 16, one thread): float32 5.4 images/s, bfloat16 autocast 0.2-0.5
images/s; bfloat16 there is emulated and 10-25 times slower, so ``auto`` means float32 on such a CPU.
"""

from __future__ import annotations

import contextlib
import platform
import random
from contextlib import AbstractContextManager
from typing import Any

import numpy as np
import torch

from emdenoise.errors import InputError
from emdenoise.runtime import PRECISIONS

_AUTOCAST_DTYPE = {"bf16": torch.bfloat16, "fp16": torch.float16}


def resolve_device(spec: str, field: str = "train.device", where: str = "parameters") -> torch.device:
    """``auto`` -> cuda if available else cpu; ``cpu``; ``cuda``/``cuda:N`` (InputError naming the parameters
    file ``where`` and ``field`` when CUDA or that GPU is missing)."""
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(spec)
    except (RuntimeError, ValueError):
        raise InputError.at(where, field, f"expected auto, cpu, cuda or cuda:N, got {spec!r}") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise InputError.at(
                where,
                field,
                f"expected auto or cpu: {spec!r} was asked for but this machine (or this torch build) has no CUDA",
            )
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise InputError.at(where, field, f"expected a GPU index below {torch.cuda.device_count()}, got {spec!r}")
    elif device.type != "cpu":
        raise InputError.at(where, field, f"expected auto, cpu, cuda or cuda:N, got {spec!r}")
    return device


def cpu_has_native_bf16() -> bool:
    """Whether this CPU computes bfloat16 in hardware (AVX512-BF16 or AMX), where bf16 autocast pays off."""
    try:
        native = torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()
        return bool(native and torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):  # older or unusual torch builds: play safe
        return False


def resolve_precision(
    spec: str, device: torch.device, field: str = "train.precision", where: str = "parameters"
) -> str:
    """``auto``/``fp32``/``bf16``/``fp16`` -> ``fp32``, ``bf16`` or ``fp16`` for ``device``.

    auto: bf16 on a GPU that supports it, else fp16; on a CPU bf16 only with native bfloat16, else fp32.
    fp16 on the CPU, or bf16 on a GPU without bfloat16, is an InputError naming ``field``.
    """
    if spec not in ("auto",) + PRECISIONS:
        raise InputError.at(where, field, f"expected auto, fp32, bf16 or fp16, got {spec!r}")
    device = torch.device(device)
    if device.type == "cuda":
        bf16_ok = torch.cuda.is_bf16_supported()
        if spec == "auto":
            return "bf16" if bf16_ok else "fp16"
        if spec == "bf16" and not bf16_ok:
            raise InputError.at(where, field, "expected fp32, fp16 or auto: this GPU has no bfloat16")
        return spec
    if spec == "auto":
        return "bf16" if cpu_has_native_bf16() else "fp32"
    if spec == "fp16":
        raise InputError.at(
            where, field, "expected fp32, bf16 or auto on the CPU, got 'fp16' (float16 autocast is for GPUs)"
        )
    return spec


def autocast(device: torch.device, precision: str) -> AbstractContextManager:
    """Mixed-precision autocast for ``precision`` on ``device``; a no-op context for fp32."""
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device_type=torch.device(device).type, dtype=_AUTOCAST_DTYPE[precision])


def seed_everything(seed: int) -> None:
    """Seed Python's, NumPy's and torch's (CPU and every GPU) global random generators."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def rng_state() -> dict[str, Any]:
    """The global random states (Python, NumPy, torch CPU and CUDA), for a checkpoint."""
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what :func:`rng_state` captured (tuples may have come back as lists)."""
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), int(pos), int(has_gauss), float(cached)))
    torch.set_rng_state(torch.as_tensor(state["torch"], dtype=torch.uint8).cpu())
    if "cuda" in state and torch.cuda.is_available():
        cuda = [torch.as_tensor(s, dtype=torch.uint8).cpu() for s in state["cuda"]]
        torch.cuda.set_rng_state_all(cuda[: torch.cuda.device_count()])


def cpu_name() -> str:
    """The CPU's model name (``/proc/cpuinfo``), else what :mod:`platform` knows."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()
