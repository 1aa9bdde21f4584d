"""Inference: :class:`Denoiser`, a trained model ready to use on raw images (the tiling of large frames is
:mod:`emdenoise.engine.tiling`). The test, denoise and study tasks and the training engine's validation use it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from emdenoise.engine import runtime
from emdenoise.io import modelfile


class Denoiser:
    """A trained model ready to use on raw images: normalise in, run the model, de-normalise out.

        den = Denoiser.from_file("workspace/models/unet/em_denoise_model.h5", device="cpu", precision="fp32")
        clean = den.denoise(noisy)        # (B, 1, H, W) raw units -> (B, 1, H, W) raw units, float32

    The output is float32 on the input's device. The model is put in eval mode and channels_last layout.
    """

    def __init__(self, model: nn.Module, meta: dict[str, Any], device: str | torch.device = "cpu",
                 precision: str = "fp32"):
        if precision not in runtime.PRECISIONS:
            raise ValueError(f"precision must be one of {runtime.PRECISIONS} (resolve 'auto' first)")
        self.device = torch.device(device)
        self.precision = precision
        self.meta = meta
        self.model = model.to(self.device, memory_format=torch.channels_last).eval()
        norm = meta["normalisation"]
        self._in = (float(norm["noisy"]["mean"]), float(norm["noisy"]["std"]))
        self._out = (float(norm["clean"]["mean"]), float(norm["clean"]["std"]))

    @property
    def name(self) -> str:
        return self.meta["model"]

    @classmethod
    def from_file(cls, path: str | Path, device: str | torch.device = "cpu", precision: str = "fp32") -> "Denoiser":
        model, meta = modelfile.load_model(path, device)
        return cls(model, meta, device, precision)

    def denoise(self, noisy: torch.Tensor) -> torch.Tensor:
        if noisy.dim() != 4 or noisy.shape[1] != 1:
            raise ValueError(f"expected a (B, 1, H, W) tensor, got shape {tuple(noisy.shape)}")
        with torch.inference_mode():
            x = noisy.to(self.device, torch.float32)
            x = ((x - self._in[0]) / self._in[1]).contiguous(memory_format=torch.channels_last)
            with runtime.autocast(self.device, self.precision):
                y = self.model(x)
            y = y.float() * self._out[1] + self._out[0]
            return y.contiguous().to(noisy.device)
