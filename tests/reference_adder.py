"""Plain unfold-and-broadcast adder layer, for tests and benchmarks.

It computes AdderNet's forward and backward rules (Chen et al., "AdderNet: Do We
Really Need Multiplications in Deep Learning?", CVPR 2020) the direct way, in
the layout of the paper's reference code: the unfolded input Xcol is (K, N*L)
with K = C_in*k*k, the weight W is (C_out, K), and every rule broadcasts them
into one (C_out, K, N*L) tensor. That tensor takes about 680 MB for the
study's 32->64 layer at batch 64, so use it on small inputs only.
"""

import math

import torch
import torch.nn.functional as F
from torch import Tensor


def unfold_columns(x: Tensor, kernel_size: int, stride: int, padding: int) -> Tensor:
    """Unfold ``x`` (N, C, H, W) into Xcol, shape (C*k*k, N*L)."""
    xcol = F.unfold(x, kernel_size, padding=padding, stride=stride)
    return xcol.permute(1, 0, 2).reshape(xcol.shape[1], -1)


def output_size(size: int, kernel_size: int, stride: int, padding: int) -> int:
    return (size + 2 * padding - kernel_size) // stride + 1


def forward(x: Tensor, weight: Tensor, stride: int = 1, padding: int = 0) -> Tensor:
    """Compute Y[n, o, l] = -sum_k |Xcol[k, (n, l)] - W[o, k]|, shape (N, C_out, H_out, W_out)."""
    n, _, height, width = x.shape
    out_channels, _, kernel_size, _ = weight.shape
    out_height = output_size(height, kernel_size, stride, padding)
    out_width = output_size(width, kernel_size, stride, padding)

    xcol = unfold_columns(x, kernel_size, stride, padding)
    weight_col = weight.reshape(out_channels, -1)
    difference = xcol.unsqueeze(0) - weight_col.unsqueeze(2)
    out = -difference.abs().sum(1)
    return out.reshape(out_channels, n, out_height, out_width).transpose(0, 1)


def weight_grad(
    x: Tensor, weight: Tensor, grad_out: Tensor, stride: int = 1, padding: int = 0, eta: float | None = 0.2
) -> Tensor:
    """Compute grad_W[o, k] = sum G[o, (n, l)] * (Xcol[k, (n, l)] - W[o, k]).

    With ``eta`` set, the result is rescaled to the norm eta * sqrt(W.numel()).
    """
    out_channels, _, kernel_size, _ = weight.shape
    xcol = unfold_columns(x, kernel_size, stride, padding)
    weight_col = weight.reshape(out_channels, -1)
    grad_col = grad_out.transpose(0, 1).reshape(out_channels, -1)

    difference = xcol.unsqueeze(0) - weight_col.unsqueeze(2)
    grad_weight = (difference * grad_col.unsqueeze(1)).sum(2)
    if eta is not None:
        grad_weight = grad_weight / grad_weight.norm().clamp(min=1e-12) * eta * math.sqrt(weight.numel())
    return grad_weight.reshape(weight.shape)


def input_grad(x: Tensor, weight: Tensor, grad_out: Tensor, stride: int = 1, padding: int = 0) -> Tensor:
    """Compute grad_X = col2im(sum_o G[o, (n, l)] * clamp(W[o, k] - Xcol[k, (n, l)], -1, 1))."""
    n, _, height, width = x.shape
    out_channels, _, kernel_size, _ = weight.shape
    xcol = unfold_columns(x, kernel_size, stride, padding)
    weight_col = weight.reshape(out_channels, -1)
    grad_col = grad_out.transpose(0, 1).reshape(out_channels, -1)

    clipped = (weight_col.unsqueeze(2) - xcol.unsqueeze(0)).clamp(-1, 1)
    grad_xcol = (clipped * grad_col.unsqueeze(1)).sum(0)
    grad_xcol = grad_xcol.reshape(grad_xcol.shape[0], n, -1).transpose(0, 1)
    return F.fold(grad_xcol, (height, width), kernel_size, padding=padding, stride=stride)


class ReferenceAdder2dFunction(torch.autograd.Function):
    """Autograd wrapper around ``forward``, ``input_grad`` and ``weight_grad``."""

    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor, stride: int, padding: int, eta: float | None) -> Tensor:
        ctx.save_for_backward(x, weight)
        ctx.stride = stride
        ctx.padding = padding
        ctx.eta = eta
        return forward(x, weight, stride, padding)

    @staticmethod
    def backward(ctx, grad_out: Tensor):
        x, weight = ctx.saved_tensors
        grad_x = grad_weight = None
        if ctx.needs_input_grad[0]:
            grad_x = input_grad(x, weight, grad_out, ctx.stride, ctx.padding)
        if ctx.needs_input_grad[1]:
            grad_weight = weight_grad(x, weight, grad_out, ctx.stride, ctx.padding, ctx.eta)
        return grad_x, grad_weight, None, None, None


def adder2d(x: Tensor, weight: Tensor, stride: int = 1, padding: int = 0, eta: float | None = 0.2) -> Tensor:
    """Apply the reference adder layer with AdderNet's backward rules."""
    return ReferenceAdder2dFunction.apply(x, weight, stride, padding, eta)
