"""DnCNN, the residual denoising CNN (``dncnn``).

Paper: K. Zhang, W. Zuo, Y. Chen, D. Meng, L. Zhang, "Beyond a Gaussian denoiser: residual learning of
deep CNN for image denoising", IEEE Transactions on Image Processing 26(7), 3142-3155, 2017,
arXiv:1608.03981.

Architecture: 3x3 conv + ReLU, then (depth - 2) x [3x3 conv + batch norm + ReLU], then a 3x3 conv to one
channel; 64 channels, same zero padding. Residual learning: the network predicts the noise and the output
is ``input - prediction``. Depth 17 is the paper's choice for a known noise level, 20 for blind denoising
(``train.dncnn_depth``). Convolutions are initialised orthogonally, as in the authors' PyTorch training code.
Caveat for this benchmark: residual learning assumes the input is a noisy copy of the target, while here
the clean target also lacks the beam profile, so the "noise" also contains that profile.

Parameters: 556,097 at depth 17 (about 0.56 M).
"""

from __future__ import annotations

import torch
from torch import nn

from emdenoise.models._common import conv3x3, conv_relu


class DnCNN(nn.Module):
    """Zhang et al.'s DnCNN: 1 -> 1 channel, any H x W."""

    def __init__(self, depth: int = 17, channels: int = 64):
        super().__init__()
        if depth < 3:
            raise ValueError(f"dncnn depth must be at least 3, got {depth}")
        layers: list[nn.Module] = [conv_relu(1, channels)]
        layers += [conv_relu(channels, channels, batch_norm=True) for _ in range(depth - 2)]
        layers.append(conv3x3(channels, 1))
        self.body = nn.Sequential(*layers)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.orthogonal_(m.weight)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x - self.body(x)
