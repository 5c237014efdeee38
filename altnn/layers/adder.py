"""Adder layer from AdderNet (Chen et al., "AdderNet: Do We Really Need
Multiplications in Deep Learning?", CVPR 2020).

Forward: each output is the negative L1 distance between an input window and
a filter, with no bias::

    Y[n, o, y, x] = -sum_{c, i, j} |X[n, c, y*s + i - p, x*s + j - p] - W[o, c, i, j]|

Stride ``s`` and zero padding ``p`` work as in ``nn.Conv2d``: padded positions
are zeros that take part in the distance.

Backward follows the paper and is NOT the exact gradient of the forward:

- weights: the full-precision gradient dY/dW = X - W replaces the exact
  sign(X - W), so ``grad_W[o, k] = sum_{n, l} G[n, o, l] * (Xcol[n, k, l] - W[o, k])``;
- inputs: the HardTanh-clipped gradient dY/dX = clamp(W - X, -1, 1) replaces
  the exact sign(W - X);
- adaptive learning-rate scaling: the weight gradient is rescaled to the norm
  ``eta * sqrt(W.numel())``. The paper's reference code
  (github.com/huawei-noah/AdderNet, ``adder.py``) divides by 5, so ``eta``
  defaults to 0.2. ``eta=None`` keeps the unscaled gradient.

Implementation: the input is unfolded (im2col) one batch chunk at a time. The
extra memory is a few chunk-sized buffers (the unfolded input and its
gradient) of at most ``_CHUNK_ELEMENTS`` values each, plus the chunk's output,
whatever ``out_channels`` is. Only a single sample larger than the budget
makes a bigger chunk. The distance and the input gradient are reductions over
broadcast expressions that ``torch.compile`` fuses into one loop nest
(vectorised C++ on CPU, Triton on CUDA), so the (C_out, C_in*k*k, N*L)
difference tensor is never built. The weight gradient uses the identity
``sum G * (Xcol - W) = G @ Xcol^T - W * sum(G)``, where the matrix product is
the convolution weight gradient.

Backends: ``compiled`` (the default) and ``eager``, a chunked plain-PyTorch
fallback that also tiles the output channels to keep the same memory bound.
The backend is chosen once per device type on first use: a failed
compilation logs one warning with the error and selects ``eager``. Set the
environment variable ``ALTNN_ADDER_BACKEND`` to ``eager`` or ``compiled`` to
force one before the first call. A forced ``compiled`` raises on failure.

NOTE: the code is device-agnostic, but only the CPU path has been run, so the
CUDA (Triton) path is untested. Compiling a whole model that contains this
layer with ``torch.compile`` is untested too.
"""

from __future__ import annotations

import logging
import math
import os

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.autograd.function import once_differentiable

logger = logging.getLogger(__name__)

BACKEND_ENV_VAR = "ALTNN_ADDER_BACKEND"
BACKENDS = ("compiled", "eager")

# Maximum number of unfolded input values (C_in*k*k per output position) that
# one batch chunk holds: 2**22 float32 values are 16 MiB. Each chunk runs a few
# parallel regions that wait for every thread. With other processes competing
# for 2 CPU cores, 16 MiB chunks ran the 32->64 layer at batch 256 about 2x as
# fast as 4 MiB chunks. On one thread, 1 to 16 MiB took the same CPU time.
_CHUNK_ELEMENTS = 1 << 22


# ---------------------------------------------------------------------------
# Kernels on unfolded inputs.
# xcol: (n, K, L) unfolded input, K = C_in*k*k, L = output positions.
# weight: (O, K). grad_out: (n, O, L).
# ---------------------------------------------------------------------------


def _negative_distance(xcol: Tensor, weight: Tensor) -> Tensor:
    """Return the negative L1 distances, shape (n, O, L)."""
    return -(xcol.unsqueeze(1) - weight[None, :, :, None]).abs().sum(2)


def _clipped_input_grad(xcol: Tensor, weight: Tensor, grad_out: Tensor) -> Tensor:
    """Return sum_o grad_out[n, o, l] * clamp(W[o, k] - xcol[n, k, l], -1, 1), shape (n, K, L)."""
    clipped = (weight[None, :, :, None] - xcol.unsqueeze(1)).clamp(-1.0, 1.0)
    return (grad_out.unsqueeze(2) * clipped).sum(1)


# Output channels that one compiled distance loop computes together.
_CHANNEL_BLOCK = 4


def _blocked_negative_distance(xcol: Tensor, weight_blocks: Tensor) -> Tensor:
    """Return the negative L1 distances for weight_blocks (O/B, B, K), shape (n, O/B, B, L).

    One reduction per block position, which inductor fuses into one loop with
    B independent accumulators that share each load of ``xcol``. A single
    accumulator makes the loop wait on the latency of every addition. Blocks
    of 4 cut the forward kernel's time by about 25% on a 2-core AMD EPYC
    (Zen 4) with torch 2.14.
    """
    parts = [
        (xcol.unsqueeze(1) - weight_blocks[None, :, j, :, None]).abs().sum(2) for j in range(_CHANNEL_BLOCK)
    ]
    return -torch.stack(parts, dim=2)


def _clipped_input_grad_by_abs(xcol: Tensor, weight: Tensor, grad_out: Tensor) -> Tensor:
    """Compute ``_clipped_input_grad`` with clamp(d, -1, 1) = (|d + 1| - |d - 1|) / 2.

    Inductor's vectorised CPU clamp propagates NaN with extra compare and
    blend instructions per element. The abs form compiles to plain subtract
    and mask instructions. It ran about 20% faster on a 2-core AMD EPYC (Zen 4)
    with torch 2.14.
    """
    difference = weight[None, :, :, None] - xcol.unsqueeze(1)
    doubled = (difference + 1.0).abs() - (difference - 1.0).abs()
    return 0.5 * (grad_out.unsqueeze(2) * doubled).sum(1)


def _channel_tile(n: int, k: int, length: int) -> int:
    """Return how many output channels the eager path broadcasts at once."""
    return max(1, _CHUNK_ELEMENTS // max(1, n * k * length))


def _negative_distance_eager(xcol: Tensor, weight: Tensor) -> Tensor:
    tile = _channel_tile(xcol.shape[0], xcol.shape[1], xcol.shape[2])
    parts = [_negative_distance(xcol, weight[o : o + tile]) for o in range(0, weight.shape[0], tile)]
    return torch.cat(parts, dim=1)


def _clipped_input_grad_eager(xcol: Tensor, weight: Tensor, grad_out: Tensor) -> Tensor:
    tile = _channel_tile(xcol.shape[0], xcol.shape[1], xcol.shape[2])
    total = torch.zeros_like(xcol)
    for o in range(0, weight.shape[0], tile):
        total += _clipped_input_grad(xcol, weight[o : o + tile], grad_out[:, o : o + tile])
    return total


# ---------------------------------------------------------------------------
# Backend selection.
# ---------------------------------------------------------------------------

_compiled_kernels: tuple | None = None
_backend_by_device: dict[str, str] = {}


def _compile_kernels() -> tuple:
    global _compiled_kernels
    if _compiled_kernels is None:
        # dynamic=True so that new batch sizes and layer shapes reuse the same
        # two graphs instead of compiling one per shape.
        _compiled_kernels = (
            torch.compile(_blocked_negative_distance, dynamic=True),
            torch.compile(_clipped_input_grad_by_abs, dynamic=True),
        )
    return _compiled_kernels


def _negative_distance_compiled(xcol: Tensor, weight: Tensor) -> Tensor:
    """Return the negative L1 distances (n, O, L) from the compiled blocked kernel."""
    blocked_negative_distance, _ = _compile_kernels()
    out_channels = weight.shape[0]
    padded_channels = -(-out_channels // _CHANNEL_BLOCK) * _CHANNEL_BLOCK
    # Zero rows pad the channels to whole blocks, and their outputs are dropped.
    weight = F.pad(weight, (0, 0, 0, padded_channels - out_channels))
    weight_blocks = weight.view(padded_channels // _CHANNEL_BLOCK, _CHANNEL_BLOCK, -1)
    distances = blocked_negative_distance(xcol, weight_blocks)
    return distances.view(xcol.shape[0], padded_channels, -1)[:, :out_channels]


def _input_grad_compiled(xcol: Tensor, weight: Tensor, grad_out: Tensor) -> Tensor:
    _, input_grad = _compile_kernels()
    return input_grad(xcol, weight, grad_out)


def _run_compile_check(device: torch.device) -> None:
    """Compile both kernels and run them once on ``device``."""
    if device.type == "cpu":
        # Inductor imports cpp_extension, which warns on every CPU-only machine that it
        # found no CUDA runtime. The CPU kernels do not use CUDA.
        logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)
    # With dynamic shapes, inductor decides loop parallelisation from the
    # sizes seen at compile time, so these are typical layer sizes. All are
    # above 1 and distinct, which keeps the graphs free of size-1
    # specialisation and of equal-size guards, so real inputs reuse them.
    xcol = torch.rand(6, 72, 196, device=device)
    weight = torch.rand(40, 72, device=device)
    grad_out = torch.rand(6, 40, 196, device=device)
    with torch.no_grad():
        _negative_distance_compiled(xcol, weight)
        _input_grad_compiled(xcol, weight, grad_out)


def select_backend(device: torch.device) -> str:
    """Return the backend for ``device``, choosing and caching it on first call."""
    device_type = device.type
    if device_type in _backend_by_device:
        return _backend_by_device[device_type]

    requested = os.environ.get(BACKEND_ENV_VAR, "").strip().lower()
    if requested and requested not in BACKENDS:
        raise ValueError(f"invalid {BACKEND_ENV_VAR}={requested!r}: expected one of {', '.join(BACKENDS)}")

    if requested == "eager":
        backend = "eager"
    elif requested == "compiled":
        _run_compile_check(device)
        backend = "compiled"
    else:
        try:
            _run_compile_check(device)
            backend = "compiled"
        except Exception as error:  # noqa: BLE001 - any compiler failure selects the fallback
            logger.warning(
                "torch.compile failed for the adder kernels on %s, using the eager "
                "fallback (set %s=eager to skip the attempt): %s: %s",
                device_type,
                BACKEND_ENV_VAR,
                type(error).__name__,
                error,
            )
            backend = "eager"

    logger.info("adder backend on %s: %s", device_type, backend)
    _backend_by_device[device_type] = backend
    return backend


def _kernels_for(device: torch.device) -> tuple:
    if select_backend(device) == "compiled":
        return _negative_distance_compiled, _input_grad_compiled
    return _negative_distance_eager, _clipped_input_grad_eager


# ---------------------------------------------------------------------------
# Forward and backward on images.
# ---------------------------------------------------------------------------


def _output_size(size: int, kernel_size: int, stride: int, padding: int) -> int:
    return (size + 2 * padding - kernel_size) // stride + 1


def _unfold(x: Tensor, kernel_size: int, stride: int, padding: int) -> Tensor:
    """Return ``F.unfold(x, kernel_size, padding=padding, stride=stride)``, shape (n, C*k*k, L).

    One strided copy of the window view replaces aten's im2col, which loops over
    the batch and took about 3x as long for a 32-channel 14x14 input on a 2-core
    AMD EPYC (Zen 4) with torch 2.14.
    """
    if padding:
        x = F.pad(x, (padding, padding, padding, padding))
    n, channels = x.shape[:2]
    windows = x.unfold(2, kernel_size, stride).unfold(3, kernel_size, stride)  # (n, C, H_out, W_out, k, k)
    windows = windows.permute(0, 1, 4, 5, 2, 3)
    return windows.reshape(n, channels * kernel_size * kernel_size, -1)


def _batch_chunks(x: Tensor, kernel_size: int, length: int) -> list[tuple[int, int]]:
    """Split the batch into even chunks of at most ``_CHUNK_ELEMENTS`` unfolded values."""
    per_sample = x.shape[1] * kernel_size * kernel_size * length
    n = x.shape[0]
    # A sample larger than the budget still gets a chunk of its own.
    samples_per_chunk = max(1, _CHUNK_ELEMENTS // per_sample)
    # Integer ceiling division: torch.export can serialize // on a symbolic batch size,
    # but not math.ceil.
    count = -(-n // samples_per_chunk)
    # Even sizes, each at most samples_per_chunk, so the last chunk is not a
    # lone sample that would need its own size-1 compiled graph.
    bounds = [i * n // count for i in range(count + 1)]
    return list(zip(bounds[:-1], bounds[1:], strict=True))


def adder_forward(x: Tensor, weight: Tensor, stride: int, padding: int) -> Tensor:
    """Compute the adder layer output, shape (N, C_out, H_out, W_out)."""
    n, _, height, width = x.shape
    out_channels, _, kernel_size, _ = weight.shape
    out_height = _output_size(height, kernel_size, stride, padding)
    out_width = _output_size(width, kernel_size, stride, padding)
    length = out_height * out_width

    negative_distance, _ = _kernels_for(x.device)
    weight_col = weight.reshape(out_channels, -1)
    chunk_outputs = []
    for start, stop in _batch_chunks(x, kernel_size, length):
        xcol = _unfold(x[start:stop], kernel_size, stride, padding)
        chunk_outputs.append(negative_distance(xcol, weight_col))
        # Freed now, so that two chunks' buffers are never alive at once.
        del xcol

    # A single chunk's output is returned without a copy.
    out = chunk_outputs[0] if len(chunk_outputs) == 1 else torch.cat(chunk_outputs)
    return out.reshape(n, out_channels, out_height, out_width)


def adder_weight_grad(
    x: Tensor, weight: Tensor, grad_out: Tensor, stride: int, padding: int, eta: float | None
) -> Tensor:
    """Compute the full-precision weight gradient sum G * (X - W), rescaled when ``eta`` is set."""
    # sum_{n,l} G[n,o,l] * Xcol[n,k,l] is the convolution weight gradient.
    correlation = torch.nn.grad.conv2d_weight(x, weight.shape, grad_out, stride=stride, padding=padding)
    grad_sum = grad_out.sum(dim=(0, 2, 3))
    grad_weight = correlation - weight * grad_sum[:, None, None, None]

    if eta is not None:
        norm = torch.linalg.vector_norm(grad_weight)
        target = eta * math.sqrt(weight.numel())
        # The floor of 1e-12, as in AdderNet's reference code, keeps a zero gradient
        # at zero. A floor near the smallest float would overflow target / norm to inf.
        grad_weight = grad_weight * (target / norm.clamp_min(1e-12))
    return grad_weight


def adder_input_grad(x: Tensor, weight: Tensor, grad_out: Tensor, stride: int, padding: int) -> Tensor:
    """Compute the HardTanh-clipped input gradient sum_o G * clamp(W - X, -1, 1)."""
    n, _, height, width = x.shape
    out_channels, _, kernel_size, _ = weight.shape
    length = grad_out.shape[2] * grad_out.shape[3]

    _, input_grad = _kernels_for(x.device)
    weight_col = weight.reshape(out_channels, -1)
    grad_col = grad_out.reshape(n, out_channels, length)
    grad_x = torch.empty_like(x)
    for start, stop in _batch_chunks(x, kernel_size, length):
        xcol = _unfold(x[start:stop], kernel_size, stride, padding)
        grad_xcol = input_grad(xcol, weight_col, grad_col[start:stop])
        grad_x[start:stop] = F.fold(grad_xcol, (height, width), kernel_size, padding=padding, stride=stride)
        del xcol, grad_xcol
    return grad_x


class _Adder2dFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor, stride: int, padding: int, eta: float | None) -> Tensor:
        ctx.save_for_backward(x, weight)
        ctx.stride = stride
        ctx.padding = padding
        ctx.eta = eta
        return adder_forward(x, weight, stride, padding)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out: Tensor):
        # Detached inputs match the compiled graphs' guards, which were traced
        # with tensors that do not require grad. A mismatch would recompile.
        x, weight = (tensor.detach() for tensor in ctx.saved_tensors)
        grad_out = grad_out.contiguous()
        grad_x = grad_weight = None
        if ctx.needs_input_grad[0]:
            grad_x = adder_input_grad(x, weight, grad_out, ctx.stride, ctx.padding)
        if ctx.needs_input_grad[1]:
            grad_weight = adder_weight_grad(x, weight, grad_out, ctx.stride, ctx.padding, ctx.eta)
        return grad_x, grad_weight, None, None, None


def adder2d(x: Tensor, weight: Tensor, stride: int = 1, padding: int = 0, eta: float | None = 0.2) -> Tensor:
    """Apply the adder layer with AdderNet's backward rules (see the module docstring).

    ``x`` is (N, C_in, H, W) and ``weight`` is (C_out, C_in, k, k), both float32
    on the same device. Returns (N, C_out, H_out, W_out) as ``F.conv2d`` would.
    """
    if x.dim() != 4:
        raise ValueError(f"adder2d expects a 4-D input (N, C, H, W), got shape {tuple(x.shape)}")
    if weight.dim() != 4 or weight.shape[2] != weight.shape[3]:
        raise ValueError(
            f"adder2d expects a square 4-D weight (C_out, C_in, k, k), got shape {tuple(weight.shape)}"
        )
    if x.shape[1] != weight.shape[1]:
        raise ValueError(f"invalid input: {x.shape[1]} channels, but the weight expects {weight.shape[1]}")
    return _Adder2dFunction.apply(x.contiguous(), weight.contiguous(), stride, padding, eta)


class Adder2d(nn.Module):
    """2-D adder layer: a convolution-shaped layer whose output is the negative L1
    distance between input windows and filters (AdderNet, Chen et al., CVPR 2020).

    The weight is drawn from N(0, 1), as in the paper's reference code, and not
    from a small convolution-style initialisation. The filters are compared to
    the inputs directly, so they start on the scale of normalised inputs. The
    adaptive scaling also gives plain SGD weight steps of root-mean-square size
    ``lr * eta`` whatever the weight scale, so small initial weights would be
    swamped by the first steps.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        stride: int = 1,
        padding: int = 0,
        eta: float | None = 0.2,
    ) -> None:
        super().__init__()
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.kernel_size = kernel_size
        self.stride = stride
        self.padding = padding
        self.eta = eta
        self.weight = nn.Parameter(torch.empty(out_channels, in_channels, kernel_size, kernel_size))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        nn.init.normal_(self.weight, mean=0.0, std=1.0)

    def forward(self, x: Tensor) -> Tensor:
        return adder2d(x, self.weight, self.stride, self.padding, self.eta)

    def extra_repr(self) -> str:
        return (
            f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
            f"stride={self.stride}, padding={self.padding}, eta={self.eta}"
        )
