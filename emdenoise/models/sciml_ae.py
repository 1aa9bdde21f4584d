"""The SciML-Bench reference autoencoder for em_denoise (``sciml_ae``).

Source: the em_denoise benchmark of SciML-Bench, Scientific Machine Learning Research Group, STFC
Rutherford Appleton Laboratory (github.com/stfc-sciml/sciml-bench, ``em_denoise``), described in
Thiyagalingam et al., "Scientific machine learning benchmarks", Nature Reviews Physics 4, 413-420 (2022).
It is the benchmark's only released model and is restated here (not copied) so that results and speed can
be compared with the original.

Architecture (a small U-Net):

- encoder: three blocks of [3x3 conv, ReLU, batch norm] x 2 at 8, 16 and 32 channels; the block output
  is kept as a skip, then 2x2 max-pooled;
- bottleneck: [3x3 conv, ReLU, batch norm] x 2 at 64 channels;
- decoder: three blocks at 32, 16 and 8 channels, each bilinear x2 upsampling (corners aligned, as in the
  original), concatenating the matching skip, then [3x3 conv, ReLU, batch norm] x 2;
- a final linear 3x3 conv to 1 channel.

Note the original order conv -> ReLU -> batch norm (BN after the activation), kept here.
Parameters: 122,737 (122,033 in convolutions, 704 batch-norm scales and shifts); about 0.67 G
multiply-accumulates, i.e. 1.34 GFLOP, per 256 x 256 forward pass.
Any H x W works: the input is padded (reflect) to a multiple of 8 and the output cropped back.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from emdenoise.models._common import contract, conv3x3, padded_apply

ENCODER_CHANNELS = (8, 16, 32)
BOTTLENECK_CHANNELS = 64


def _double_conv(in_ch: int, out_ch: int) -> nn.Sequential:
    """[3x3 conv, ReLU, BN] twice, in the original's order (batch norm after the activation)."""
    return nn.Sequential(
        conv3x3(in_ch, out_ch),
        nn.ReLU(inplace=True),
        nn.BatchNorm2d(out_ch),
        conv3x3(out_ch, out_ch),
        nn.ReLU(inplace=True),
        nn.BatchNorm2d(out_ch),
    )


class SciMLAutoencoder(nn.Module):
    """The SciML-Bench em_denoise autoencoder: 1 -> 1 channel, any H x W."""

    size_multiple = 2 ** len(ENCODER_CHANNELS)  # the sizes _forward takes; forward pads to them

    def __init__(self):
        super().__init__()
        self.encoders = nn.ModuleList()
        in_ch = 1
        for ch in ENCODER_CHANNELS:
            self.encoders.append(_double_conv(in_ch, ch))
            in_ch = ch
        self.bottleneck = _double_conv(in_ch, BOTTLENECK_CHANNELS)
        in_ch = BOTTLENECK_CHANNELS
        self.decoders = nn.ModuleList()
        for ch in reversed(ENCODER_CHANNELS):
            self.decoders.append(_double_conv(in_ch + ch, ch))
            in_ch = ch
        self.head = conv3x3(in_ch, 1)

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        x, skips = contract(self.encoders, x)
        x = self.bottleneck(x)
        for block, skip in zip(self.decoders, reversed(skips)):
            x = F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=True)
            x = block(torch.cat((x, skip), dim=1))
        return self.head(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return padded_apply(self._forward, x, self.size_multiple)
