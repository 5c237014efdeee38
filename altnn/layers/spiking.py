"""Layers for spiking networks that process all T time steps of a batch at once.

A feed-forward spiking network can run layer by layer instead of step by step: each
stateless layer (convolution, BatchNorm, pooling, linear) takes all T steps as one
batch of T*B samples, and only the neurons loop over T. The pieces here keep that
fast path equal to a per-step loop:

- `StepBatchNorm2d`: BatchNorm with per-step batch statistics for (T, B, C, H, W)
  inputs, and for an input that repeats at every step.
- `spike_adder2d` and `SpikeAdder2d`: an adder layer for binary (spike) inputs,
  computed as a convolution.
- `run_leaky`: a snnTorch `Leaky` neuron run over precomputed input currents.
"""

import snntorch as snn
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.modules.utils import _pair

from altnn.layers.adder import Adder2d, adder_weight_grad

# ---------------------------------------------------------------------------
# BatchNorm over time steps.
# ---------------------------------------------------------------------------


class StepBatchNorm2d(nn.BatchNorm2d):
    """BatchNorm2d that also normalizes T time steps at once as T separate calls would.

    `forward` on (B, C, H, W) is plain `nn.BatchNorm2d`, which is what a per-step loop
    calls. `forward_steps` and `forward_repeated` give the same outputs, gradients and
    running statistics as calling `forward` once per step.
    """

    def forward_steps(self, x: Tensor) -> Tensor:
        """Normalize (T, B, C, H, W) with separate batch statistics for each step.

        In training mode, and whenever running statistics are not tracked, this runs
        the native BatchNorm kernel once per step on the contiguous slice x[t]. That is
        the per-step computation itself, so the running statistics receive T
        sequential updates, exactly as in a per-step loop. In eval mode with running
        statistics every sample is normalized independently, so one call covers all
        steps.
        """
        if x.dim() != 5:
            raise ValueError(f"forward_steps expects a 5-D input (T, B, C, H, W), got shape {tuple(x.shape)}")
        uses_batch_stats = self.training or self.running_mean is None
        if not uses_batch_stats:
            return super().forward(x.flatten(0, 1)).unflatten(0, x.shape[:2])
        normalize_step = super().forward
        return torch.stack([normalize_step(step) for step in x.unbind(0)])

    def forward_repeated(self, x: Tensor, steps: int) -> Tensor:
        """Normalize (B, C, H, W) that a per-step loop would feed `steps` times.

        Each of those calls computes the same batch statistics and returns the same output,
        so the input is normalized once. In training mode the running statistics
        then get the result of `steps` sequential updates with the same batch mean mu
        and unbiased variance in one update with an effective momentum M:

        - momentum m: r_T = (1-m)^T r_0 + (1 - (1-m)^T) mu, so M = 1 - (1-m)^T;
        - momentum None (cumulative average over n_0 earlier batches):
          r_T = (n_0 r_0 + T mu) / (n_0 + T), so M = T / (n_0 + T).

        The running statistics differ from T sequential updates by float32 rounding
        only, and `num_batches_tracked` grows by `steps`.
        """
        if steps < 1:
            raise ValueError(f"steps must be at least 1, got {steps}")
        if not (self.training and self.track_running_stats):
            return super().forward(x)
        self._check_input_dim(x)

        assert self.num_batches_tracked is not None
        batches_before = int(self.num_batches_tracked)
        self.num_batches_tracked.add_(steps)
        if self.momentum is None:
            momentum = steps / (batches_before + steps)
        else:
            momentum = 1.0 - (1.0 - self.momentum) ** steps
        return F.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias,
                            training=True, momentum=momentum, eps=self.eps)


# ---------------------------------------------------------------------------
# Adder layer fed by spikes.
# ---------------------------------------------------------------------------


def spike_adder_forward(spikes: Tensor, weight: Tensor, stride: int, padding: int) -> Tensor:
    """Compute the adder output -sum |s - W| for binary s with one convolution.

    For s in {0, 1}, |s - w| = |w| + s (|1 - w| - |w|), so
    -sum |s - W| = conv2d(s, |W| - |1 - W|) - sum |W| per filter. Zero padding is
    binary too, so the identity is exact at padded positions.
    """
    conv_weight = weight.abs() - (1.0 - weight).abs()
    bias = -weight.abs().sum(dim=(1, 2, 3))
    return F.conv2d(spikes, conv_weight, bias, stride=stride, padding=padding)


def spike_adder_input_grad(spikes: Tensor, weight: Tensor, grad_out: Tensor, stride: int,
                           padding: int) -> Tensor:
    """Compute AdderNet's clipped input gradient sum_o G * clamp(W - s, -1, 1) for binary s.

    For s in {0, 1}, clamp(w - s, -1, 1) = c0 + s (c1 - c0) with c0 = clamp(w, -1, 1)
    and c1 = clamp(w - 1, -1, 1). Every unfolded entry that folds back onto an input
    position carries that position's value s, so s factors out of the fold:
    grad_s = conv_transpose(G, c0) + s * conv_transpose(G, c1 - c0). One transposed
    convolution computes both terms with the two weights stacked along input channels.
    """
    clipped_at_zero = weight.clamp(-1.0, 1.0)
    clipped_at_one = (weight - 1.0).clamp(-1.0, 1.0)
    stacked = torch.cat([clipped_at_zero, clipped_at_one - clipped_at_zero], dim=1)
    batch, channels, height, width = spikes.shape
    # torch.nn.grad.conv2d_input passes a stride-0 expanded input to the same operator;
    # on CPU (torch 2.14, channels_last spikes) that took 2.5x as long as a real tensor.
    memory_format = torch.channels_last if is_channels_last(spikes) else torch.contiguous_format
    input_like = torch.empty((batch, 2 * channels, height, width), dtype=spikes.dtype, device=spikes.device,
                             memory_format=memory_format)
    both = torch.ops.aten.convolution_backward(
        grad_out, input_like, stacked, None, _pair(stride), _pair(padding), (1, 1), False, (0, 0), 1,
        (True, False, False))[0]
    base, spike_term = both.split(channels, dim=1)
    return base + spikes * spike_term


def is_channels_last(x: Tensor) -> bool:
    """Return whether a 4-D tensor is stored channels_last and not also plain contiguous."""
    return x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()


class _SpikeAdder2dFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, spikes: Tensor, weight: Tensor, stride: int, padding: int,
                eta: float | None) -> Tensor:
        ctx.save_for_backward(spikes, weight)
        ctx.stride = stride
        ctx.padding = padding
        ctx.eta = eta
        return spike_adder_forward(spikes, weight, stride, padding)

    @staticmethod
    def backward(ctx, grad_out: Tensor):
        spikes, weight = ctx.saved_tensors
        grad_spikes = grad_weight = None
        if ctx.needs_input_grad[0]:
            grad_spikes = spike_adder_input_grad(spikes, weight, grad_out, ctx.stride, ctx.padding)
        if ctx.needs_input_grad[1]:
            # Padded positions are s = 0 in both terms of sum G * (s - W): the convolution
            # weight gradient skips them and W * sum(G) counts every output position.
            grad_weight = adder_weight_grad(spikes, weight, grad_out, ctx.stride, ctx.padding, ctx.eta)
        return grad_spikes, grad_weight, None, None, None


def spike_adder2d(spikes: Tensor, weight: Tensor, stride: int = 1, padding: int = 0,
                  eta: float | None = 0.2) -> Tensor:
    """Apply an adder layer to binary inputs, with AdderNet's backward rules.

    The forward pass equals `altnn.layers.adder.adder2d` on inputs that are all 0 or 1
    (see `spike_adder_forward`). Like `adder2d`, the backward pass is NOT the exact
    gradient of the forward pass; it applies the rules of AdderNet (Chen et al., CVPR
    2020) to the same inputs:

    - grad_W = sum G * (s - W), the full-precision gradient in place of sign(s - W),
      then rescaled to the norm eta * sqrt(W.numel()) unless `eta` is None;
    - grad_s = sum_o G * clamp(W - s, -1, 1), the HardTanh-clipped gradient in place
      of sign(W - s) (see `spike_adder_input_grad`).

    `spikes` is (N, C_in, H, W) and must contain only 0 and 1: other values give a wrong
    result without an error, because checking would cost a pass over the input (and a
    host synchronisation on CUDA). `weight` is (C_out, C_in, k, k).
    """
    if spikes.dim() != 4:
        raise ValueError(f"spike_adder2d expects a 4-D input (N, C, H, W), got shape {tuple(spikes.shape)}")
    if weight.dim() != 4 or weight.shape[2] != weight.shape[3]:
        raise ValueError(
            f"spike_adder2d expects a square 4-D weight (C_out, C_in, k, k), got shape {tuple(weight.shape)}")
    if spikes.shape[1] != weight.shape[1]:
        raise ValueError(f"input has {spikes.shape[1]} channels but the weight expects {weight.shape[1]}")
    return _SpikeAdder2dFunction.apply(spikes, weight, stride, padding, eta)


class SpikeAdder2d(Adder2d):
    """`Adder2d` for binary inputs, computed as a convolution by `spike_adder2d`.

    Parameters, `eta` and the state dict are those of `Adder2d`, so the general layer's
    forward (`Adder2d.forward(layer, x)`) gives the same output on spikes.

    `weights` chooses how the weights start and where they may go. "normal" draws N(0, 1)
    as `Adder2d` does and leaves them free. "unit_interval" draws U(0, 1) and keeps them
    in [0, 1]: the training loop calls `apply_constraint_` after every optimizer step.
    For s in {0, 1} and w outside [0, 1], |s - w| = |s - c| + |w - c| with c the nearest
    end of [0, 1], so such a weight acts as c plus a constant shift of its output channel.
    BatchNorm removes that shift, so the projection loses nothing, while a free weight
    outside [0, 1] changes nothing the next layer sees until it comes back. About 66% of
    N(0, 1) draws fall outside [0, 1].
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1,
                 padding: int = 0, eta: float | None = 0.2, weights: str = "normal") -> None:
        super().__init__(in_channels, out_channels, kernel_size, stride, padding, eta)
        if weights not in ("normal", "unit_interval"):
            raise ValueError(f"unknown spike adder weights {weights!r}: "
                             "expected 'normal' or 'unit_interval'")
        self.weights = weights
        if weights == "unit_interval":
            nn.init.uniform_(self.weight, 0.0, 1.0)

    @torch.no_grad()
    def apply_constraint_(self) -> None:
        """Project the weights back onto [0, 1] when `weights` is "unit_interval"."""
        if self.weights == "unit_interval":
            self.weight.clamp_(0.0, 1.0)

    def forward(self, spikes: Tensor) -> Tensor:
        return spike_adder2d(spikes, self.weight, self.stride, self.padding, self.eta)


# ---------------------------------------------------------------------------
# Leaky neurons over precomputed currents.
# ---------------------------------------------------------------------------


class _LeakyRecurrence(torch.autograd.Function):
    """snnTorch's Leaky update with reset by subtraction, over all steps in one autograd node.

    Forward, from m_{-1} = 0 and s_{-1} = surrogate(-u), with b = clamp(beta, 0, 1) and
    threshold u:
        m_t = b m_{t-1} + I_t - s_{t-1} u,    s_t = surrogate(m_t - u).
    The reset s_{t-1} carries no gradient, as in snnTorch. Backward, with g_s and g_m the
    gradients of the spike and membrane outputs and a_t = g_s,t * surrogate'(m_t - u):
        d_t = a_t + g_m,t + b d_{t+1},   dL/dI_t = d_t,
        dL/du = -sum_t (a_t + s_{t-1} d_t),   dL/db = sum_t d_t m_{t-1}.
    The T surrogate derivatives come from one call of the surrogate's own backward.
    """

    @staticmethod
    def forward(ctx, currents: Tensor, beta: Tensor, threshold: Tensor, graded: Tensor, surrogate,
                steps: int, static: bool) -> tuple[Tensor, Tensor]:
        decay = beta.clamp(0, 1)
        membrane = torch.zeros_like(currents[0] if not static else currents)
        # snnTorch resets at step 0 where the zero initial membrane exceeds the threshold,
        # which can happen only once a learned threshold drops below 0.
        initial_reset = surrogate(torch.zeros_like(threshold) - threshold)
        reset = initial_reset
        spikes: list[Tensor] = []
        membranes: list[Tensor] = []
        for step in range(steps):
            current = currents if static else currents[step]
            # Same operations in the same order as snnTorch's Leaky, so the results are equal.
            membrane = decay * membrane + current - reset * threshold
            reset = surrogate(membrane - threshold)
            spikes.append(reset)
            membranes.append(membrane)
        spike_train, membrane_train = torch.stack(spikes), torch.stack(membranes)
        ctx.save_for_backward(spike_train, membrane_train, initial_reset, beta, threshold, graded)
        # snnTorch scales output spikes by graded_spikes_factor (1 by default) but not
        # the reset. Multiplying here instead of checking the factor's value keeps the
        # forward free of data-dependent branches, which torch.export rejects.
        spike_train = spike_train * graded
        ctx.surrogate = surrogate
        ctx.static = static
        return spike_train, membrane_train

    @staticmethod
    def backward(ctx, grad_spikes: Tensor | None, grad_membranes: Tensor | None):
        spike_train, membrane_train, initial_reset, beta, threshold, graded = ctx.saved_tensors
        decay = beta.clamp(0, 1)

        if grad_spikes is None:
            direct = torch.zeros_like(membrane_train)
        else:
            with torch.enable_grad():
                shifted = (membrane_train - threshold).detach().requires_grad_()
                (direct,) = torch.autograd.grad(ctx.surrogate(shifted), shifted, grad_spikes * graded)
        total = direct if grad_membranes is None else direct + grad_membranes

        grad_membrane_train = torch.empty_like(total)
        grad_membrane_train[-1] = total[-1]
        for step in range(total.shape[0] - 2, -1, -1):
            torch.addcmul(total[step], decay, grad_membrane_train[step + 1], out=grad_membrane_train[step])

        grad_currents = grad_beta = grad_threshold = None
        if ctx.needs_input_grad[0]:
            grad_currents = grad_membrane_train.sum(0) if ctx.static else grad_membrane_train
        if ctx.needs_input_grad[1]:
            grad_decay = (grad_membrane_train[1:] * membrane_train[:-1]).sum(0).sum_to_size(beta.shape)
            in_range = (beta >= 0) & (beta <= 1)
            grad_beta = grad_decay * in_range
        if ctx.needs_input_grad[2]:
            reset_terms = ((spike_train[:-1] * grad_membrane_train[1:]).sum(0)
                           + initial_reset * grad_membrane_train[0])
            grad_threshold = -(direct.sum(0) + reset_terms).sum_to_size(threshold.shape)
        return grad_currents, grad_beta, grad_threshold, None, None, None, None


def supports_fused_leaky(neuron: snn.Leaky) -> bool:
    """Return whether `_LeakyRecurrence` computes exactly what `neuron` computes.

    It covers snnTorch's default Leaky (1.0.0): reset by subtraction, delayed reset, a
    fixed (not learned) spike size, no inhibition and no state quantization.
    """
    return (type(neuron) is snn.Leaky and neuron.reset_mechanism == "subtract" and neuron.reset_delay
            and not neuron.inhibition and not neuron.state_quant and not neuron.init_hidden
            and not neuron.graded_spikes_factor.requires_grad)


def run_leaky(neuron: snn.Leaky, currents: Tensor, steps: int | None = None,
              record_membrane: bool = False) -> tuple[Tensor, Tensor | None]:
    """Run a snnTorch Leaky neuron from a zero membrane over T steps of input current.

    `currents` is (T, B, ...) with one current per step, or, when `steps` is given,
    one (B, ...) current that enters at each of the `steps` steps. No state carries
    over between calls of this function.

    For the neurons that `supports_fused_leaky` accepts, one autograd node computes all
    steps with the neuron's own beta, threshold and surrogate, which saves the
    per-operation autograd overhead of T neuron calls. Other neurons run as T calls
    `spk, mem = neuron(cur, mem)` with the membrane passed in and out. Both give the
    same spikes and membranes as those calls.

    Returns the spikes (T, B, ...) and, if `record_membrane`, the membrane potential
    after each step (T, B, ...), else None. snnTorch's Leaky (1.0.0) applies a reset
    at the step after the spike, so a recorded membrane can exceed the threshold.
    """
    if neuron.init_hidden:
        raise ValueError("run_leaky needs a Leaky neuron built with init_hidden=False")
    static = steps is not None
    if static and steps < 1:
        raise ValueError(f"steps must be at least 1, got {steps}")
    step_count = steps if static else currents.shape[0]

    if supports_fused_leaky(neuron):
        spikes, membranes = _LeakyRecurrence.apply(currents, neuron.beta, neuron.threshold,
                                                   neuron.graded_spikes_factor, neuron.spike_grad,
                                                   step_count, static)
        return spikes, membranes if record_membrane else None

    membrane = torch.zeros_like(currents if static else currents[0])
    spike_list: list[Tensor] = []
    membrane_list: list[Tensor] = []
    for step in range(step_count):
        spike, membrane = neuron(currents if static else currents[step], membrane)
        spike_list.append(spike)
        membrane_list.append(membrane)
    return torch.stack(spike_list), torch.stack(membrane_list) if record_membrane else None


def spike_rate(spikes: Tensor) -> Tensor:
    """Return the detached mean number of spikes per neuron per step."""
    return spikes.detach().float().mean()


__all__ = [
    "SpikeAdder2d",
    "StepBatchNorm2d",
    "run_leaky",
    "spike_adder2d",
    "spike_adder_forward",
    "spike_adder_input_grad",
    "spike_rate",
    "supports_fused_leaky",
]
