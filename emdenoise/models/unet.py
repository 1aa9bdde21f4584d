"""U-Net (``unet``).

Paper: O. Ronneberger, P. Fischer, T. Brox, "U-Net: convolutional networks for biomedical image
segmentation", MICCAI 2015, LNCS 9351, 234-241, arXiv:1505.04597.

Architecture: 4 down steps. Each level is 2 x [3x3 conv + ReLU] (same zero padding, unlike the paper's
valid convolutions, so the output keeps the input size), followed on the way down by 2x2 max-pooling;
channels double per level from ``base`` (base, 2 base, ..., 16 base at the bottom). The up path uses 2x2
up-convolutions (transposed, stride 2) halving the channels, concatenates the skip of the same level, then
2 x [3x3 conv + ReLU]; a 1x1 conv gives the single output channel (linear). No batch norm, as in the paper.
Any H x W works: the input is padded (reflect) to a multiple of 16 and the output cropped back. ``in_channels``
is 1 (the noisy frame) unless an input conditioning adds a channel (``train.condition: wiener_prior``, see
:mod:`emdenoise.models.conditioning`).

Parameters: 7,759,521 at ``base=32`` (the practical denoising default, ``train.unet_base``) and 31,030,593
at ``base=64`` (the paper's width).
"""

from __future__ import annotations

import torch
from torch import nn

from emdenoise.models._common import contract, conv_relu, padded_apply

LEVELS = 4  # down steps


def _double_conv(in_ch: int, out_ch: int) -> nn.Sequential:
    return nn.Sequential(conv_relu(in_ch, out_ch), conv_relu(out_ch, out_ch))


class UNet(nn.Module):
    """Ronneberger et al.'s U-Net for ``in_channels`` -> 1 channel denoising, any H x W."""

    size_multiple = 2**LEVELS  # the sizes _forward takes; forward pads to them (see models/__init__.py)

    def __init__(self, base: int = 32, in_channels: int = 1):
        super().__init__()
        if base < 1 or in_channels < 1:
            raise ValueError(f"unet base and in_channels must be at least 1, got {base} and {in_channels}")
        widths = [base * 2**level for level in range(LEVELS + 1)]
        self.down = nn.ModuleList()
        in_ch = in_channels
        for ch in widths[:-1]:
            self.down.append(_double_conv(in_ch, ch))
            in_ch = ch
        self.bottom = _double_conv(in_ch, widths[-1])
        self.upconv = nn.ModuleList()
        self.up = nn.ModuleList()
        for deep, ch in zip(reversed(widths[1:]), reversed(widths[:-1])):
            self.upconv.append(nn.ConvTranspose2d(deep, ch, 2, stride=2))
            self.up.append(_double_conv(2 * ch, ch))
        self.head = nn.Conv2d(base, 1, 1)

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        x, skips = contract(self.down, x)
        x = self.bottom(x)
        for upconv, block, skip in zip(self.upconv, self.up, reversed(skips)):
            x = block(torch.cat((upconv(x), skip), dim=1))
        return self.head(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return padded_apply(self._forward, x, self.size_multiple)
