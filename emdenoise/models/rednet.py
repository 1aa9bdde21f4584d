"""RED-Net, the deep encoder-decoder with symmetric skip connections (``rednet``).

Paper: X.-J. Mao, C. Shen, Y.-B. Yang, "Image restoration using very deep convolutional encoder-decoder
networks with symmetric skip connections", NeurIPS 2016, arXiv:1606.08921.

Architecture: ``depth / 2`` convolutional layers followed by ``depth / 2`` transposed-convolutional
layers, all 3x3 with 64 channels, stride 1, no pooling, a ReLU after every layer. Every second layer is
linked to its mirror: the output of conv layer k (k = 2, 4, ...) is added to the output of the deconv layer
whose output has the same place in the mirrored stack, and the sum goes through the ReLU. Following that
pattern to the end, the last skip carries the input image itself to the last deconv layer, so the network
learns a residual; that last sum is left linear (no ReLU) because the images are normalised and may be
negative. RED30 (15 + 15 layers, ``train.rednet_depth: 30``) is the paper's best network.
Deviation: the paper's layers use no padding (the conv stack shrinks the image, the deconv stack grows it
back); here both use 1-pixel zero padding so every feature map keeps H x W. The parameter count is the
same and any H x W works.

Parameters: 1,035,201 at depth 30 (about 1.04 M).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from emdenoise.models._common import conv3x3

SKIP_EVERY = 2  # layers spanned by each symmetric skip


class REDNet(nn.Module):
    """Mao et al.'s RED-Net (RED30 by default): 1 -> 1 channel, any H x W."""

    def __init__(self, depth: int = 30, channels: int = 64):
        super().__init__()
        if depth < 2 or depth % 2:
            raise ValueError(f"rednet depth (conv + deconv layers) must be even and at least 2, got {depth}")
        half = depth // 2
        self.convs = nn.ModuleList(conv3x3(1 if i == 0 else channels, channels) for i in range(half))
        self.deconvs = nn.ModuleList(
            nn.ConvTranspose2d(channels, 1 if i == half - 1 else channels, 3, padding=1) for i in range(half)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        half = len(self.convs)
        # features[k] is the output of conv layer k (features[0] is the image itself); the output of deconv
        # layer j (1-based) mirrors features[half - j]
        features = [x]
        h = x
        for conv in self.convs:
            h = F.relu(conv(h))
            features.append(h)
        for j, deconv in enumerate(self.deconvs[:-1], start=1):
            h = deconv(h)
            if (half - j) % SKIP_EVERY == 0:
                h = h + features[half - j]
            h = F.relu(h)
        return self.deconvs[-1](h) + x  # the last skip is the image itself: a linear, residual output
