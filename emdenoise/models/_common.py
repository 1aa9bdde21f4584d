"""Small building blocks shared by the model files: padded 3x3 convolutions, pad-to-a-multiple-and-crop,
and a multiply-accumulate counter used to report a model's cost.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn


def conv3x3(
    in_ch: int,
    out_ch: int,
    *,
    dilation: int = 1,
    bias: bool = True,
    padding_mode: Literal["zeros", "reflect", "replicate", "circular"] = "zeros",
) -> nn.Conv2d:
    """A 3x3 convolution that keeps H x W ("same" padding, ``dilation`` pixels on each side)."""
    return nn.Conv2d(in_ch, out_ch, 3, padding=dilation, dilation=dilation, bias=bias, padding_mode=padding_mode)


def conv_relu(in_ch: int, out_ch: int, *, batch_norm: bool = False) -> nn.Sequential:
    """3x3 conv, optional batch norm (conv bias dropped then, as BN has its own), ReLU."""
    if batch_norm:
        return nn.Sequential(conv3x3(in_ch, out_ch, bias=False), nn.BatchNorm2d(out_ch), nn.ReLU(inplace=True))
    return nn.Sequential(conv3x3(in_ch, out_ch), nn.ReLU(inplace=True))


def contract(blocks: nn.ModuleList, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """The contracting path of a U-shaped net: each block then a 2x2 max-pool. Returns the pooled result and
    the blocks' outputs before pooling (the skips), shallowest first."""
    skips = []
    for block in blocks:
        x = block(x)
        skips.append(x)
        x = F.max_pool2d(x, 2)
    return x, skips


def border_pad(x: torch.Tensor, left: int, right: int, top: int, bottom: int) -> torch.Tensor:
    """Pad a (B, C, H, W) tensor by mirroring (reflect), or by repeating the edge (replicate) where the
    image is too small to mirror (a pad must be smaller than the side it mirrors)."""
    h, w = x.shape[-2:]
    mode = "reflect" if max(top, bottom) < h and max(left, right) < w else "replicate"
    return F.pad(x, (left, right, top, bottom), mode=mode)


def pad_to_multiple(x: torch.Tensor, multiple: int) -> torch.Tensor:
    """Pad the bottom and right of a (B, C, H, W) tensor so H and W become multiples of ``multiple``."""
    h, w = x.shape[-2:]
    ph, pw = (-h) % multiple, (-w) % multiple
    if ph == 0 and pw == 0:
        return x
    return border_pad(x, 0, pw, 0, ph)


def box_filter(x: torch.Tensor, size: int) -> torch.Tensor:
    """Local mean over a ``size`` x ``size`` window (odd size), same H x W, mirrored borders."""
    r = size // 2
    return F.avg_pool2d(border_pad(x, r, r, r, r), size, stride=1)


HIGHPASS_SIZE = 3  # box filter whose residual is taken as noise
# For white noise, var(x - box3(x)) = (1 - 1/9)^2 + 8/81 = 8/9 of the noise variance
HIGHPASS_GAIN = 1.0 - 1.0 / HIGHPASS_SIZE**2


def highpass(x: torch.Tensor) -> torch.Tensor:
    """``x`` minus its :data:`HIGHPASS_SIZE` local mean: mostly noise, of :data:`HIGHPASS_GAIN` x the noise
    variance for white noise (the noise estimate of ffdnet's map and of the input conditioning)."""
    return x - box_filter(x, HIGHPASS_SIZE)


def padded_apply(fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, multiple: int) -> torch.Tensor:
    """Run ``fn`` on ``x`` padded to a multiple of ``multiple`` and crop the result back to x's H x W."""
    h, w = x.shape[-2:]
    return fn(pad_to_multiple(x, multiple))[..., :h, :w]


def conv_macs(model: nn.Module, height: int = 256, width: int = 256) -> int:
    """Multiply-accumulates of the (transposed) convolutions in one forward pass of a 1 x 1 x H x W image.

    FLOPs are commonly quoted as 2 x MACs. Only convolutions are counted (they dominate every model here).
    """
    total = 0

    def hook(module, inputs, output):
        nonlocal total
        per_output = module.in_channels // module.groups * module.kernel_size[0] * module.kernel_size[1]
        # a transposed conv spreads each input over the kernel: count by input elements instead
        if isinstance(module, nn.ConvTranspose2d):
            total += (
                inputs[0].numel() * module.out_channels // module.groups * module.kernel_size[0] * module.kernel_size[1]
            )
        else:
            total += output.numel() * per_output

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d))]
    try:
        was_training = model.training
        model.eval()
        with torch.no_grad():
            model(torch.zeros(1, 1, height, width))
        model.train(was_training)
    finally:
        for h in handles:
            h.remove()
    return total
