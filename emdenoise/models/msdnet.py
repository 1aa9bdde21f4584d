"""Mixed-scale dense network, MS-D (``msdnet``).

Paper: D. M. Pelt, J. A. Sethian, "A mixed-scale dense convolutional neural network for image analysis",
PNAS 115(2), 254-259, 2018.

Architecture: ``depth`` layers of ``width`` feature maps each (defaults 100 and 1, ``train.msdnet_depth``
and ``train.msdnet_width``). Every map of layer i is ReLU(sum over ALL previous maps, the input image
included, of a 3x3 convolution dilated by 1 + (i mod 10), plus a bias): the layers are densely connected
and mix scales through their dilations, with no down-sampling and no batch norm. Borders are mirrored
(reflect padding; replicate for images smaller than 11 pixels, which cannot be mirrored by 10). The output
is a linear 1x1 convolution over the input and every map. The paper trains with Adam (1e-3) and an L2 loss
on inputs and targets normalised by the dataset mean and standard deviation, which is what the train task
does for every model. Weights are initialised from a normal distribution of standard deviation
sqrt(2 / fan-in) and biases at zero.

Implementation. Concatenating all previous maps at every layer costs memory and time quadratic in depth.
Instead one buffer of shape (B, 1 + depth * width, H + 2m, W + 2m) is allocated per forward pass, where
m = the largest dilation: each new map is written into its channel slice, together with its mirrored
border of width m, and layer i convolves (without padding) the first 1 + i * width channels, read in place
(mirroring by d equals the inner d pixels of mirroring by m). Each convolution is computed by kernel taps:
one matrix product reduces the channels to 9 * width tap maps, which are shifted by the tap's offset and
summed; with one output map per layer this is several times faster on CPU than a convolution call (one
256 x 256 forward pass takes about 0.7 s on one busy CPU thread, against several seconds concatenating).
PyTorch's autograd refuses in-place writes into a tensor it has saved for backward, so the whole network is
one ``torch.autograd.Function`` whose backward pass walks the layers in reverse with a gradient buffer of
the same shape. Training memory is therefore two buffers (feature maps and their gradients) and nothing
per layer: no checkpointing is needed. The tests check forward values and every gradient against a plain
concatenating implementation, and the backward pass against finite differences. The backward pass runs in
the buffer's precision (float32) even when the forward pass runs under autocast; double backward is not
supported.

Parameters: 45,652 at depth 100, width 1 (45,550 in the 3x3 layers, 102 in the output layer).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from torch.autograd.function import once_differentiable

from emdenoise.models._common import border_pad

DILATION_CYCLE = 10  # layer i is dilated by 1 + (i mod 10)


def _pad(x: torch.Tensor, m: int) -> torch.Tensor:
    return border_pad(x, m, m, m, m)


def _unpad_grad(grad_padded: torch.Tensor, m: int) -> torch.Tensor:
    """The adjoint of ``_pad``: fold the gradient of a padded map back onto the unpadded map."""
    b, c, hp, wp = grad_padded.shape
    with torch.enable_grad():
        z = grad_padded.new_zeros(b, c, hp - 2 * m, wp - 2 * m, requires_grad=True)
        (grad,) = torch.autograd.grad(_pad(z, m), z, grad_padded)
    return grad


class _BufferConv:
    """A k x k convolution (dilation d) of the first ``c`` channels of the padded buffer, bias excluded.

    Computed by taps: one matrix product reduces the c channels to k*k*o maps at once (o output maps, one
    per kernel tap), then the tap maps are shifted by the tap's offset and summed. With few outputs per
    layer (MS-D has ``width`` of them) this is several times faster than a convolution on CPU, and it reads
    the buffer in place, without copying the growing input.
    """

    def __init__(self, weight: torch.Tensor, dilation: int, margin: int, h: int, w: int):
        self.o, self.c, k, _ = weight.shape
        self.k, self.h, self.w = k, h, w
        # row (ky * k + kx) * o + out; contiguous, as matrix products with a transposed one are slow here
        self.matrix = weight.permute(2, 3, 0, 1).reshape(k * k * self.o, self.c).contiguous()
        self.offsets = [
            (margin + (ky - k // 2) * dilation, margin + (kx - k // 2) * dilation) for ky in range(k) for kx in range(k)
        ]

    def _flat_input(self, buf: torch.Tensor) -> torch.Tensor:
        b, _, hp, wp = buf.shape
        return buf[:, : self.c].reshape(b, self.c, hp * wp)  # a view: no copy

    def forward(self, buf: torch.Tensor) -> torch.Tensor:
        b, _, hp, wp = buf.shape
        taps = torch.matmul(self.matrix, self._flat_input(buf)).view(b, -1, hp, wp)
        parts = [
            taps[:, t * self.o : (t + 1) * self.o, y0 : y0 + self.h, x0 : x0 + self.w]
            for t, (y0, x0) in enumerate(self.offsets)
        ]
        out = parts[0]
        for part in parts[1:]:
            out = out + part
        return out

    def backward(self, buf: torch.Tensor, grad_out: torch.Tensor, grad_buf: torch.Tensor) -> torch.Tensor:
        """Add the gradient with respect to the buffer into ``grad_buf``; return the weight's gradient."""
        b, _, hp, wp = buf.shape
        grad_taps = grad_out.new_zeros(b, len(self.offsets) * self.o, hp, wp)
        for t, (y0, x0) in enumerate(self.offsets):
            grad_taps[:, t * self.o : (t + 1) * self.o, y0 : y0 + self.h, x0 : x0 + self.w] = grad_out
        grad_taps = grad_taps.view(b, -1, hp * wp)
        grad_matrix = torch.matmul(grad_taps, self._flat_input(buf).transpose(1, 2)).sum(0)
        grad_buf[:, : self.c].view(b, self.c, hp * wp).baddbmm_(self.matrix.t().expand(b, -1, -1), grad_taps)
        return grad_matrix.view(self.k, self.k, self.o, self.c).permute(2, 3, 0, 1)


def _mixed_scale_dense(x, dilations, out_weight, out_bias, weights, biases) -> tuple[torch.Tensor, torch.Tensor]:
    """The forward pass over one preallocated feature buffer: ``(output, buffer)``."""
    width = weights[0].shape[0]
    m = max(dilations)
    b, _, h, w = x.shape
    buf = x.new_empty(b, 1 + len(weights) * width, h + 2 * m, w + 2 * m)
    buf[:, :1] = _pad(x, m)
    for i, (weight, bias, d) in enumerate(zip(weights, biases, dilations)):
        c = 1 + i * width
        pre = _BufferConv(weight, d, m, h, w).forward(buf) + bias.view(1, -1, 1, 1)
        buf[:, c : c + width] = _pad(F.relu(pre), m)
    return _BufferConv(out_weight, 1, m, h, w).forward(buf) + out_bias.view(1, -1, 1, 1), buf


class _MixedScaleDense(torch.autograd.Function):
    """Forward and backward of the whole MS-D network over one preallocated feature buffer.

    Arguments: the image (B, 1, H, W), the dilation of every layer, the output layer's weight and bias,
    then each hidden layer's weight and bias in turn.
    """

    @staticmethod
    def forward(ctx, x, dilations, out_weight, out_bias, *layer_params):
        weights, biases = layer_params[0::2], layer_params[1::2]
        y, buf = _mixed_scale_dense(x, dilations, out_weight, out_bias, weights, biases)
        ctx.dilations, ctx.margin = dilations, max(dilations)
        ctx.save_for_backward(buf, out_weight, *weights)
        return y

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_y):
        buf, out_weight, *weights = ctx.saved_tensors
        dilations, m = ctx.dilations, ctx.margin
        width = weights[0].shape[0]
        h, w = buf.shape[-2] - 2 * m, buf.shape[-1] - 2 * m
        grad_y = grad_y.to(buf.dtype)
        grad_buf = torch.zeros_like(buf)  # gradient with respect to the padded buffer

        grad_out_weight = _BufferConv(out_weight, 1, m, h, w).backward(buf, grad_y, grad_buf)
        grad_out_bias = grad_y.sum((0, 2, 3))
        layer_grads = []
        for i in reversed(range(len(weights))):
            c = 1 + i * width
            # every later layer has added its share: fold the border gradient onto the map, then the ReLU
            grad_map = _unpad_grad(grad_buf[:, c : c + width], m)
            grad_pre = grad_map * (buf[:, c : c + width, m : m + h, m : m + w] > 0)
            layer_grads.append(grad_pre.sum((0, 2, 3)))
            layer_grads.append(_BufferConv(weights[i], dilations[i], m, h, w).backward(buf, grad_pre, grad_buf))
        grad_x = _unpad_grad(grad_buf[:, :1], m)
        layer_grads.reverse()  # now weight_0, bias_0, weight_1, bias_1, ...
        return (grad_x, None, grad_out_weight, grad_out_bias, *layer_grads)


class MSDNet(nn.Module):
    """Pelt and Sethian's mixed-scale dense network: 1 -> 1 channel, any H x W."""

    def __init__(self, depth: int = 100, width: int = 1):
        super().__init__()
        if depth < 1 or width < 1:
            raise ValueError(f"msdnet depth and width must be at least 1, got depth={depth}, width={width}")
        self.width = width
        self.dilations = tuple(1 + i % DILATION_CYCLE for i in range(depth))
        # the convolutions hold the weights; forward applies them over the shared buffer itself
        self.layers = nn.ModuleList(
            nn.Conv2d(1 + i * width, width, 3, dilation=d) for i, d in enumerate(self.dilations)
        )
        self.output = nn.Conv2d(1 + depth * width, 1, 1)
        for conv in self.layers:
            assert isinstance(conv, nn.Conv2d) and conv.bias is not None
            nn.init.normal_(conv.weight, std=math.sqrt(2.0 / (conv.in_channels * 9)))
            nn.init.zeros_(conv.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        params = [p for conv in self.layers for p in (conv.weight, conv.bias)]
        if torch.jit.is_tracing():  # TorchScript records tensor operations, not a Python autograd.Function
            weights, biases = params[0::2], params[1::2]
            return _mixed_scale_dense(x, self.dilations, self.output.weight, self.output.bias, weights, biases)[0]
        return _MixedScaleDense.apply(x, self.dilations, self.output.weight, self.output.bias, *params)
