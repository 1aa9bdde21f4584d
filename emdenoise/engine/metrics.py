"""Image-quality metrics, per image, with a fixed data range.

PSNR = 10 log10(R^2 / MSE) with R the dataset card's ``data_range`` (max - min of the clean test set):
fixed, never taken from the prediction, never 255 by habit. PSNR and SSIM are computed per image and then
averaged (pooling the MSE over a batch gives a different, wrong number). SSIM uses the standard 11x11
Gaussian window with sigma 1.5 (torchmetrics' default).
"""

from __future__ import annotations

import torch
from torchmetrics.functional.image import structural_similarity_index_measure


def _as_bchw(x) -> torch.Tensor:
    x = torch.as_tensor(x, dtype=torch.float32)
    if x.dim() == 2:
        x = x[None, None]
    elif x.dim() == 3:
        x = x[:, None]
    return x


def mse_per_image(pred, target) -> torch.Tensor:
    pred, target = _as_bchw(pred), _as_bchw(target)
    return ((pred.float() - target.float()) ** 2).mean(dim=(1, 2, 3))


def psnr_per_image(pred, target, data_range: float) -> torch.Tensor:
    """PSNR in dB of each image of a batch, (B,) tensor. An exact match gives +inf."""
    mse = mse_per_image(pred, target)
    return 10.0 * torch.log10(torch.as_tensor(float(data_range)) ** 2 / mse)


def ssim_per_image(pred, target, data_range: float) -> torch.Tensor:
    """SSIM of each image of a batch, (B,) tensor, Gaussian 11x11 window, sigma 1.5."""
    pred, target = _as_bchw(pred).float(), _as_bchw(target).float()
    ssim = structural_similarity_index_measure(
        pred, target, data_range=float(data_range), reduction="none", gaussian_kernel=True, sigma=1.5, kernel_size=11
    )
    assert isinstance(ssim, torch.Tensor)  # a tuple only when asked for the full SSIM image
    return ssim
