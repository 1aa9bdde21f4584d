"""Class-aware fully convolutional denoiser (``cafcn``).

Paper: T. Remez, O. Litany, R. Giryes, A. M. Bronstein, "Class-aware fully convolutional Gaussian and
Poisson denoising", IEEE Transactions on Image Processing 27(11), 5707-5722, 2018, arXiv:1808.06562.

Architecture: 20 layers of 3x3 convolutions (bias, same zero padding, no batch norm). Layers 1-19 have 64
outputs each: one output channel is a 1-channel estimate of the residual (noise-free minus noisy image),
added to a running sum; the other 63 channels go through a ReLU and feed the next layer. Layer 20 has a
single output, also added to the sum. The result is ``input + sum / 10``.
"Class-aware" refers to fine-tuning the same network per image class (e.g. per specimen type); this is the
class-agnostic network, the baseline the paper starts from. The authors trained one model per Poisson peak
level without an Anscombe transform; here the model sees normalised images like every other model.

Parameters: 655,544 with the default 20 layers (about 0.66 M).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from emdenoise.models._common import conv3x3

RESIDUAL_SCALE = 10.0  # output = input + (sum of the per-layer residual estimates) / 10


class CAFCN(nn.Module):
    """Remez et al.'s fully convolutional Poisson denoiser: 1 -> 1 channel, any H x W."""

    def __init__(self, depth: int = 20, channels: int = 64):
        super().__init__()
        if depth < 2:
            raise ValueError(f"cafcn depth must be at least 2, got {depth}")
        features = channels - 1  # the channels passed on; one channel per layer is the residual estimate
        layers = [conv3x3(1, channels)]
        layers += [conv3x3(features, channels) for _ in range(depth - 2)]
        layers.append(conv3x3(features, 1))
        self.layers = nn.ModuleList(layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        residual = torch.zeros_like(x)
        h = x
        for conv in self.layers[:-1]:
            out = conv(h)
            residual = residual + out[:, :1]
            h = F.relu(out[:, 1:])
        residual = residual + self.layers[-1](h)
        return x + residual / RESIDUAL_SCALE
