"""FFDNet, the fast and flexible denoiser with a noise-level map (``ffdnet``).

Paper: K. Zhang, W. Zuo, L. Zhang, "FFDNet: toward a fast and flexible solution for CNN-based image
denoising", IEEE Transactions on Image Processing 27(9), 4608-4622, 2018, arXiv:1710.04026.

Architecture (grayscale variant): pixel-unshuffle by 2 (H x W x 1 -> H/2 x W/2 x 4), concatenate a
noise-level map (one channel at H/2 x W/2), 15 layers of 3x3 convs with 64 channels (conv + ReLU,
13 x [conv + batch norm + ReLU], conv to 4 channels), pixel-shuffle back to H x W. The network predicts
the clean image directly (no residual). Odd sizes are padded (reflect) to even and cropped back.

The noise-level map. FFDNet's point is that the map may vary per pixel, which suits Poisson noise under a
non-uniform beam. It must be computed the same way in training and test from the noisy input alone, so the
model computes it itself, in its forward pass, without gradient (option (a) of the project's notes, as a
local estimate rather than sqrt(mean / dose), since the model sees normalised images whose offset and dose
it does not know):

    r     = x - box3(x)                       # high-pass residual: mostly noise
    sigma = sqrt(9/8 * box7(r ** 2))          # local noise standard deviation, same units as x

``boxK`` is a K x K local mean with mirrored borders. For white noise of standard deviation s on a flat
region, r has variance (8/9) s^2, hence the factor 9/8: sigma estimates s. Dead or hot pixels stand out
from their neighbours and get a large sigma, as the notes ask. Edges also raise sigma somewhat; the
network sees the image together with the map and learns how far to trust it. The map is then averaged over
2 x 2 blocks to the sub-image grid.

Parameters: 486,148 (about 0.49 M).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from emdenoise.models._common import HIGHPASS_GAIN, box_filter, conv3x3, conv_relu, highpass, padded_apply

SCALE = 2  # pixel-unshuffle factor
VARIANCE_SIZE = 7  # box filter smoothing the squared residual


def noise_level_map(x: torch.Tensor) -> torch.Tensor:
    """Per-pixel noise standard deviation estimated from a noisy (B, 1, H, W) image, same shape as x."""
    with torch.no_grad():
        x = x.float()
        residual = highpass(x)
        variance = box_filter(residual * residual, VARIANCE_SIZE) / HIGHPASS_GAIN
        return variance.clamp_min(0).sqrt()


class FFDNet(nn.Module):
    """Zhang et al.'s FFDNet with an in-model per-pixel noise map: 1 -> 1 channel, any H x W."""

    size_multiple = SCALE  # the sizes _forward takes; forward pads to them

    def __init__(self, depth: int = 15, channels: int = 64):
        super().__init__()
        if depth < 3:
            raise ValueError(f"ffdnet depth must be at least 3, got {depth}")
        sub = SCALE * SCALE
        layers: list[nn.Module] = [conv_relu(sub + 1, channels)]
        layers += [conv_relu(channels, channels, batch_norm=True) for _ in range(depth - 2)]
        layers.append(conv3x3(channels, sub))
        self.body = nn.Sequential(*layers)

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        sigma = F.avg_pool2d(noise_level_map(x), SCALE).to(x.dtype)
        h = torch.cat((F.pixel_unshuffle(x, SCALE), sigma), dim=1)
        return F.pixel_shuffle(self.body(h), SCALE)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return padded_apply(self._forward, x, self.size_multiple)
