"""Multiscale CNN (``mscnn``).

The name "multiscale CNN" in the em_denoise benchmark's list of baselines points to no single paper. This
model follows C. Liu, Z. Shang, A. Qin, "A multiscale image denoising algorithm based on dilated residual
convolution network", arXiv:1812.09131, 2018. (The electron-microscopy alternative, Ede & Beanland,
Ultramicroscopy 202, 2019, is an Xception encoder with atrous spatial pyramid pooling and tens of millions
of parameters; it is not what is built here.)

Architecture:

- a multi-scale head: parallel 7x7 (12 channels), 5x5 (20 channels) and 3x3 (32 channels) convolutions of
  the image, each followed by a PReLU, concatenated to 64 channels;
- three hybrid-dilated residual blocks, each 3 x [3x3 conv with 64 channels and dilation 1, 3, 5, batch
  norm, PReLU] with an inner skip adding the block's input to its output (the dilations 1, 3, 5 share no
  common factor, which avoids the gridding artefacts of repeated equal dilations);
- a final 3x3 conv to one channel, the predicted noise; output = input - prediction.

Every PReLU has one slope per channel; convolutions followed by batch norm have no bias; zero padding keeps
H x W at every layer, so any H x W works.

Parameters: 335,585 (about 0.34 M).
"""

from __future__ import annotations

import torch
from torch import nn

from emdenoise.models._common import conv3x3

HEAD = ((7, 12), (5, 20), (3, 32))  # (kernel size, channels) of the parallel first convolutions
DILATIONS = (1, 3, 5)
BLOCKS = 3


class _HybridDilatedBlock(nn.Module):
    """3 x [3x3 dilated conv, batch norm, PReLU] with the block input added to its output."""

    def __init__(self, channels: int):
        super().__init__()
        self.body = nn.Sequential(
            *(
                nn.Sequential(
                    conv3x3(channels, channels, dilation=d, bias=False), nn.BatchNorm2d(channels), nn.PReLU(channels)
                )
                for d in DILATIONS
            )
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


class MSCNN(nn.Module):
    """Liu, Shang and Qin's multiscale dilated residual denoiser: 1 -> 1 channel, any H x W."""

    def __init__(self):
        super().__init__()
        self.head = nn.ModuleList(nn.Sequential(nn.Conv2d(1, ch, k, padding=k // 2), nn.PReLU(ch)) for k, ch in HEAD)
        channels = sum(ch for _, ch in HEAD)
        self.blocks = nn.Sequential(*(_HybridDilatedBlock(channels) for _ in range(BLOCKS)))
        self.tail = conv3x3(channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.cat([branch(x) for branch in self.head], dim=1)
        return x - self.tail(self.blocks(h))
