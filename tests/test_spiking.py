"""Tests of the spiking layers and models: the fast path against a per-step snnTorch loop."""

import copy
import math

import pytest
import snntorch as snn
import torch
import torch.nn.functional as F
from snntorch import surrogate

from altnn.config import ModelConfig
from altnn.experiment import LogitsOnly
from altnn.layers.adder import Adder2d, adder2d
from altnn.layers.spiking import (
    SpikeAdder2d,
    StepBatchNorm2d,
    run_leaky,
    spike_adder2d,
    supports_fused_leaky,
)
from altnn.models import build_model
from altnn.models.common import ModelOutput
from altnn.models.snn import SPIKING_LAYERS, SNNAdder, predict_classes
from tests.reference_snn import per_step_forward

VARIANTS = ("snn", "snn_adder")


def make_model(variant: str, steps: int, seed: int = 0, **options) -> torch.nn.Module:
    torch.manual_seed(seed)
    return build_model(ModelConfig(variant=variant, steps=steps, **options))


def make_images(batch: int, seed: int = 1) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(batch, 1, 28, 28, generator=generator)


def assert_close(actual: torch.Tensor, expected: torch.Tensor, what: str, rtol: float = 1e-4) -> None:
    """Compare with a tolerance relative to the largest expected magnitude."""
    scale = expected.abs().max().item() if expected.numel() else 0.0
    torch.testing.assert_close(actual, expected, rtol=rtol, atol=rtol * max(scale, 1e-6),
                               msg=lambda message: f"{what}: {message}")


# ---------------------------------------------------------------------------
# Spike-fed adder against the general adder.
# ---------------------------------------------------------------------------


def reference_adder_forward(x, weight, stride, padding):
    """Compute -sum |X - W| over each window with a plain unfold."""
    batch, _, height, width = x.shape
    out_channels, _, kernel, _ = weight.shape
    out_height = (height + 2 * padding - kernel) // stride + 1
    out_width = (width + 2 * padding - kernel) // stride + 1
    columns = F.unfold(x, kernel, padding=padding, stride=stride)  # (N, K, L)
    distance = (columns[:, None] - weight.reshape(out_channels, -1)[None, :, :, None]).abs().sum(2)
    return -distance.reshape(batch, out_channels, out_height, out_width)


def reference_adder_grads(x, weight, grad_out, stride, padding, eta):
    """Compute AdderNet's input and weight gradients with a plain unfold and fold."""
    out_channels, _, kernel, _ = weight.shape
    columns = F.unfold(x, kernel, padding=padding, stride=stride)  # (N, K, L)
    weight_columns = weight.reshape(out_channels, -1)[None, :, :, None]  # (1, O, K, 1)
    grad_columns = grad_out.reshape(grad_out.shape[0], out_channels, 1, -1)  # (N, O, 1, L)

    grad_weight = (grad_columns * (columns[:, None] - weight_columns)).sum(dim=(0, 3)).reshape(weight.shape)
    if eta is not None:
        grad_weight = grad_weight * (eta * math.sqrt(weight.numel()) / grad_weight.norm())

    clipped = (weight_columns - columns[:, None]).clamp(-1.0, 1.0)
    grad_x_columns = (grad_columns * clipped).sum(1)
    grad_x = F.fold(grad_x_columns, x.shape[2:], kernel, padding=padding, stride=stride)
    return grad_x, grad_weight


ADDER_CASES = [(stride, padding, eta, channels_last)
               for stride in (1, 2) for padding in (0, 1) for eta in (None, 0.2)
               for channels_last in (False, True)]


@pytest.mark.parametrize(("stride", "padding", "eta", "channels_last"), ADDER_CASES)
def test_spike_adder_matches_general_adder(stride, padding, eta, channels_last):
    generator = torch.Generator().manual_seed(stride * 10 + padding)
    spikes = (torch.rand(3, 4, 9, 9, generator=generator) < 0.4).float()
    # Weights spread over [-2, 3] so that clamp(W - s, -1, 1) takes all its branches.
    weight = torch.rand(5, 4, 3, 3, generator=generator) * 5 - 2
    expected = reference_adder_forward(spikes, weight, stride, padding)
    grad_out = torch.randn(expected.shape, generator=generator)
    expected_grad_x, expected_grad_weight = reference_adder_grads(spikes, weight, grad_out, stride, padding,
                                                                  eta)

    results = {}
    for name, function in (("spike_adder2d", spike_adder2d), ("adder2d", adder2d)):
        x = spikes.clone()
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        x.requires_grad_()
        w = weight.clone().requires_grad_()
        output = function(x, w, stride, padding, eta)
        output.backward(grad_out)
        results[name] = (output.detach(), x.grad, w.grad)

    for name, (output, grad_x, grad_weight) in results.items():
        assert_close(output, expected, f"{name} forward")
        assert_close(grad_x, expected_grad_x, f"{name} input gradient")
        assert_close(grad_weight, expected_grad_weight, f"{name} weight gradient")


def test_spike_adder_input_grad_depends_on_spikes():
    # clamp(W - s, -1, 1) differs between s = 0 and s = 1 for W = 0.5, so a
    # gradient that ignored the spike values would fail this check.
    weight = torch.full((1, 1, 1, 1), 0.5)
    spikes = torch.tensor([[[[0.0, 1.0]]]], requires_grad=True)
    spike_adder2d(spikes, weight, eta=None).sum().backward()
    torch.testing.assert_close(spikes.grad, torch.tensor([[[[0.5, -0.5]]]]))


def test_spike_adder_module_matches_adder2d():
    torch.manual_seed(0)
    general = Adder2d(3, 6, 3, padding=1, eta=0.2)
    torch.manual_seed(0)
    spiking = SpikeAdder2d(3, 6, 3, padding=1, eta=0.2)
    assert torch.equal(spiking.weight, general.weight)
    assert spiking.state_dict().keys() == general.state_dict().keys()

    spikes = (torch.rand(2, 3, 7, 7) < 0.5).float()
    assert_close(spiking(spikes), general(spikes), "SpikeAdder2d forward")


def test_spike_adder_unit_interval_weights():
    layer = SpikeAdder2d(32, 64, 3, weights="unit_interval")
    assert layer.weight.min() >= 0
    assert layer.weight.max() <= 1
    assert layer.weight.std() > 0.2
    with torch.no_grad():
        layer.weight[0, 0] = torch.tensor([[-0.5, 0.3, 1.7]] * 3)
    layer.apply_constraint_()
    assert layer.weight[0, 0, 0].tolist() == pytest.approx([0.0, 0.3, 1.0])


def test_spike_adder_normal_weights_stay_free():
    layer = SpikeAdder2d(32, 64, 3)
    assert layer.weight.min() < -1
    before = layer.weight.clone()
    layer.apply_constraint_()
    assert torch.equal(layer.weight, before)
    with pytest.raises(ValueError, match="unknown spike adder weights 'zeros'"):
        SpikeAdder2d(3, 6, 3, weights="zeros")


def test_spike_adder_outside_weights_only_shift():
    """On spikes, pushing weights beyond [0, 1] leaves the batch-normalized output unchanged."""
    torch.manual_seed(0)
    layer = SpikeAdder2d(4, 5, 3, padding=1, weights="unit_interval")
    moved = SpikeAdder2d(4, 5, 3, padding=1)
    with torch.no_grad():
        moved.weight.copy_(layer.weight)
        moved.weight[:, :2] += 3.0  # weights in [3, 4]
        moved.weight[:, 2:] -= 2.0  # weights in [-2, -1]
        layer.weight[:, :2] = 1.0  # the ends of [0, 1] nearest to them
        layer.weight[:, 2:] = 0.0
    norm = torch.nn.BatchNorm2d(5)
    spikes = (torch.rand(8, 4, 6, 6) < 0.4).float()
    difference = moved(spikes) - layer(spikes)
    assert difference.std(dim=(0, 2, 3)).max() < 1e-4
    assert_close(norm(moved(spikes)), norm(layer(spikes)), "normalized output")


def test_spike_adder_rejects_bad_shapes():
    with pytest.raises(ValueError, match="4-D input"):
        spike_adder2d(torch.zeros(3, 9, 9), torch.zeros(5, 3, 3, 3))
    with pytest.raises(ValueError, match="channels"):
        spike_adder2d(torch.zeros(1, 2, 9, 9), torch.zeros(5, 3, 3, 3))


# ---------------------------------------------------------------------------
# BatchNorm over time steps.
# ---------------------------------------------------------------------------


def make_norm(momentum: float | None = 0.1) -> StepBatchNorm2d:
    norm = StepBatchNorm2d(3, momentum=momentum)
    with torch.no_grad():
        norm.weight.uniform_(0.5, 1.5)
        norm.bias.uniform_(-0.5, 0.5)
        norm.running_mean.uniform_(-1, 1)
        norm.running_var.uniform_(0.5, 2)
    norm.num_batches_tracked.fill_(2)
    return norm


def assert_same_norm_state(actual: StepBatchNorm2d, expected: StepBatchNorm2d) -> None:
    assert_close(actual.running_mean, expected.running_mean, "running_mean", rtol=1e-5)
    assert_close(actual.running_var, expected.running_var, "running_var", rtol=1e-5)
    assert int(actual.num_batches_tracked) == int(expected.num_batches_tracked)


@pytest.mark.parametrize("momentum", [0.1, None])
def test_step_batch_norm_matches_per_step_calls(momentum):
    torch.manual_seed(0)
    fast = make_norm(momentum)
    loop = copy.deepcopy(fast)
    # Each step gets its own mean and scale, so shared statistics would fail.
    step_index = torch.arange(4.0).view(4, 1, 1, 1, 1)
    inputs = torch.randn(4, 5, 3, 6, 6) * (step_index + 1) + step_index
    grad_out = torch.randn(inputs.shape)

    x_fast = inputs.clone().requires_grad_()
    fast.forward_steps(x_fast).backward(grad_out)
    x_loop = inputs.clone().requires_grad_()
    torch.stack([loop(step) for step in x_loop.unbind(0)]).backward(grad_out)

    assert_close(x_fast.grad, x_loop.grad, "input gradient")
    assert_close(fast.weight.grad, loop.weight.grad, "weight gradient")
    assert_close(fast.bias.grad, loop.bias.grad, "bias gradient")
    assert_same_norm_state(fast, loop)


def test_step_batch_norm_eval_uses_running_stats():
    fast = make_norm().eval()
    inputs = torch.randn(4, 5, 3, 6, 6)
    expected = torch.stack([fast(step) for step in inputs.unbind(0)])
    assert_close(fast.forward_steps(inputs), expected, "eval output")
    assert int(fast.num_batches_tracked) == 2


@pytest.mark.parametrize("momentum", [0.1, None])
@pytest.mark.parametrize("steps", [1, 3, 7])
def test_step_batch_norm_repeated_input(momentum, steps):
    torch.manual_seed(0)
    fast = make_norm(momentum)
    loop = copy.deepcopy(fast)
    inputs = torch.randn(5, 3, 6, 6) * 2 + 1

    output = fast.forward_repeated(inputs, steps)
    expected = [loop(inputs) for _ in range(steps)]

    for step_output in expected:
        assert_close(output, step_output, "output")
    assert_same_norm_state(fast, loop)


def test_step_batch_norm_repeated_input_eval_keeps_stats():
    fast = make_norm().eval()
    before = fast.running_mean.clone()
    inputs = torch.randn(5, 3, 6, 6)
    assert_close(fast.forward_repeated(inputs, 4), fast(inputs), "eval output")
    assert torch.equal(fast.running_mean, before)
    assert int(fast.num_batches_tracked) == 2


# ---------------------------------------------------------------------------
# Leaky neurons over precomputed currents.
# ---------------------------------------------------------------------------


def make_leaky(beta: float = 0.8, threshold: float = 1.0, reset_mechanism: str = "subtract",
               graded: float = 1.0) -> snn.Leaky:
    return snn.Leaky(beta=beta, learn_beta=True, threshold=threshold, learn_threshold=True,
                     spike_grad=surrogate.fast_sigmoid(slope=25), reset_mechanism=reset_mechanism,
                     graded_spikes_factor=graded)


def neuron_call_loop(neuron, currents):
    """Run `neuron` step by step as snnTorch's tutorials do; return spikes and membranes."""
    membrane = torch.zeros_like(currents[0])
    spikes, membranes = [], []
    for current in currents.unbind(0):
        spike, membrane = neuron(current, membrane)
        spikes.append(spike)
        membranes.append(membrane)
    return torch.stack(spikes), torch.stack(membranes)


LEAKY_CASES = [
    # (beta, threshold, reset_mechanism, graded spike size, static)
    (0.8, 1.0, "subtract", 1.0, False),
    (0.8, 1.0, "subtract", 1.0, True),
    (1.2, 0.7, "subtract", 1.0, False),  # beta above 1 is clamped and gets no gradient
    (0.8, -0.3, "subtract", 1.0, False),  # a negative threshold resets at step 0
    (0.8, 1.0, "subtract", 2.5, False),  # spikes scaled, the reset not
    (0.8, 1.0, "zero", 1.0, False),  # not fused: runs the neuron calls
]


@pytest.mark.parametrize(("beta", "threshold", "reset_mechanism", "graded", "static"), LEAKY_CASES)
def test_run_leaky_matches_neuron_calls(beta, threshold, reset_mechanism, graded, static):
    torch.manual_seed(0)
    steps = 6
    fused_neuron = make_leaky(beta, threshold, reset_mechanism, graded)
    loop_neuron = copy.deepcopy(fused_neuron)
    # Currents in [-1, 1.5] let some neurons spike and keep others silent at both thresholds.
    base = (torch.rand(4, 7) if static else torch.rand(steps, 4, 7)) * 2.5 - 1
    grad_spikes = torch.randn(steps, 4, 7)
    grad_membranes = torch.randn(steps, 4, 7)

    fused_currents = base.clone().requires_grad_()
    spikes, membranes = run_leaky(fused_neuron, fused_currents, steps=steps if static else None,
                                  record_membrane=True)
    torch.autograd.backward([spikes, membranes], [grad_spikes, grad_membranes])

    loop_currents = base.clone().requires_grad_()
    expanded = loop_currents.expand(steps, 4, 7) if static else loop_currents
    expected_spikes, expected_membranes = neuron_call_loop(loop_neuron, expanded)
    torch.autograd.backward([expected_spikes, expected_membranes], [grad_spikes, grad_membranes])

    assert torch.equal(spikes, expected_spikes)
    assert torch.equal(membranes, expected_membranes)
    assert_close(fused_currents.grad, loop_currents.grad, "current gradient")
    assert_close(fused_neuron.beta.grad, loop_neuron.beta.grad, "beta gradient")
    assert_close(fused_neuron.threshold.grad, loop_neuron.threshold.grad, "threshold gradient")
    spiked = spikes != 0
    assert spiked.any(), "the test currents should make some neurons spike"
    assert not spiked.all(), "the test currents should leave some neurons silent"


def test_run_leaky_uses_fused_recurrence_for_study_neurons():
    assert supports_fused_leaky(make_leaky())
    assert not supports_fused_leaky(make_leaky(reset_mechanism="zero"))


def test_run_leaky_spike_gradient_only():
    # The model's hidden layers use only the spikes, so the membrane output gets no gradient.
    torch.manual_seed(0)
    fused_neuron = make_leaky()
    loop_neuron = copy.deepcopy(fused_neuron)
    base = torch.rand(5, 3, 4) * 1.5
    fused_currents = base.clone().requires_grad_()
    loop_currents = base.clone().requires_grad_()

    run_leaky(fused_neuron, fused_currents)[0].sum().backward()
    neuron_call_loop(loop_neuron, loop_currents)[0].sum().backward()

    assert_close(fused_currents.grad, loop_currents.grad, "current gradient")
    assert_close(fused_neuron.threshold.grad, loop_neuron.threshold.grad, "threshold gradient")


def test_run_leaky_static_current_equals_repeated():
    neuron = make_leaky()
    current = torch.rand(4, 7) * 1.5
    static_spikes, _ = run_leaky(neuron, current, steps=5)
    repeated_spikes, _ = run_leaky(neuron, current.expand(5, 4, 7))
    assert torch.equal(static_spikes, repeated_spikes)


@pytest.mark.parametrize("reset_mechanism", ["subtract", "zero"])
def test_run_leaky_starts_from_zero_membrane(reset_mechanism):
    neuron = make_leaky(reset_mechanism=reset_mechanism)
    run_leaky(neuron, torch.full((3, 2, 5), 5.0))
    # The call above leaves a charged membrane inside the snnTorch module; it must
    # not leak into the next call.
    spikes, membranes = run_leaky(neuron, torch.zeros(3, 2, 5), record_membrane=True)
    assert spikes.sum() == 0
    assert torch.equal(membranes, torch.zeros(3, 2, 5))


# ---------------------------------------------------------------------------
# Models: shapes, gradients, configuration.
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("steps", [1, 2, 5])
def test_model_shapes_and_gradients(variant, steps):
    model = make_model(variant, steps)
    assert model.steps == steps
    output = model(make_images(3))

    assert isinstance(output, ModelOutput)
    assert output.logits.shape == (3, 10)
    assert output.tie_scores is not None and output.tie_scores.shape == (3, 10)
    assert torch.isfinite(output.logits).all()
    assert torch.isfinite(output.tie_scores).all()
    assert set(output.spike_rates) == set(SPIKING_LAYERS)
    for name, rate in output.spike_rates.items():
        assert rate.dim() == 0, name
        assert not rate.requires_grad, name
        assert 0.0 <= rate.item() <= 1.0, name
    assert output.logits.min() >= 0, "spike counts are at least 0"
    assert output.logits.max() <= steps, "spike counts are at most T"

    F.cross_entropy(output.logits, torch.tensor([0, 1, 2])).backward()
    for name, parameter in model.named_parameters():
        assert parameter.grad is not None, f"{name} got no gradient"
        assert torch.isfinite(parameter.grad).all(), f"{name} has a non-finite gradient"
    nonzero = [name for name, parameter in model.named_parameters() if parameter.grad.abs().sum() > 0]
    assert "block1.layer.weight" in nonzero
    assert "block2.layer.weight" in nonzero


@pytest.mark.parametrize("variant", VARIANTS)
def test_model_membrane_readout(variant):
    model = make_model(variant, 3, readout="membrane")
    output = model(make_images(2))
    assert output.logits.shape == (2, 10)
    assert output.tie_scores is None
    F.cross_entropy(output.logits, torch.tensor([3, 4])).backward()
    assert model.linear1.weight.grad is not None


@pytest.mark.parametrize("variant", VARIANTS)
def test_model_exports(variant):
    # The pipeline logs every model with MLflow, which runs torch.export in eval mode.
    model = make_model(variant, 2).eval()
    images = make_images(1)
    exported = torch.export.export(LogitsOnly(model), (images,))
    with torch.no_grad():
        assert_close(exported.module()(images), model(images).logits, "exported logits")


def test_model_rejects_bad_config():
    with pytest.raises(ValueError, match="steps"):
        build_model(ModelConfig(variant="snn"))
    with pytest.raises(ValueError, match="head_activation"):
        build_model(ModelConfig(variant="snn", steps=2, head_activation="relu"))
    with pytest.raises(ValueError, match="readout"):
        build_model(ModelConfig(variant="snn_adder", steps=2, readout="voltage"))


def test_snn_adder_layers():
    model = make_model("snn_adder", 2, eta=0.5, spike_adder_weights="unit_interval")
    assert isinstance(model, SNNAdder)
    assert type(model.block1.layer) is Adder2d
    assert isinstance(model.block2.layer, SpikeAdder2d)
    assert model.block2.layer.weight.shape == (64, 32, 3, 3)
    assert model.block1.layer.eta == 0.5
    assert model.block2.layer.eta == 0.5
    assert model.block2.layer.weight.min() >= 0
    assert model.block1.layer.weight.min() < 0  # the image adder keeps N(0, 1)


# ---------------------------------------------------------------------------
# Fast path against the per-step snnTorch loop.
# ---------------------------------------------------------------------------


def run_and_backward(forward, model, images, labels):
    model.zero_grad(set_to_none=True)
    output = forward(model, images)
    F.cross_entropy(output.logits, labels).backward()
    grads = {name: parameter.grad.clone() for name, parameter in model.named_parameters()}
    return output, grads


def fast_forward(model, images):
    return model(images)


def assert_same_outputs(fast: ModelOutput, loop: ModelOutput) -> None:
    assert_close(fast.logits, loop.logits, "logits")
    if loop.tie_scores is None:
        assert fast.tie_scores is None
    else:
        assert_close(fast.tie_scores, loop.tie_scores, "tie_scores")
    assert fast.spike_rates.keys() == loop.spike_rates.keys()
    for name in loop.spike_rates:
        assert_close(fast.spike_rates[name], loop.spike_rates[name], f"spike rate of {name}")


# At the default threshold 1.0 the untrained output layer stays silent, which would make
# the spike counts zero in both paths. Threshold 0.5 makes every layer spike.
SPIKING_OPTIONS = {"dropout": 0.0, "threshold": 0.5}

EQUALITY_CASES = [(variant, steps, readout, mode)
                  for variant in VARIANTS for steps in (1, 4) for readout in ("spike_count", "membrane")
                  for mode in ("train", "eval")]


@pytest.mark.parametrize(("variant", "steps", "readout", "mode"), EQUALITY_CASES)
def test_fast_path_matches_per_step_loop(variant, steps, readout, mode):
    # eta=None: the adaptive rescaling of adder gradients applies once per call, so a
    # loop that calls the adder T times rescales differently (see the next test).
    fast = make_model(variant, steps, eta=None, readout=readout, **SPIKING_OPTIONS)
    fast.train(mode == "train")
    loop = copy.deepcopy(fast)
    images = make_images(6)
    labels = torch.tensor([0, 1, 2, 3, 4, 5])

    fast_output, fast_grads = run_and_backward(fast_forward, fast, images, labels)
    loop_output, loop_grads = run_and_backward(per_step_forward, loop, images, labels)

    assert_same_outputs(fast_output, loop_output)
    for name, expected in loop_grads.items():
        assert_close(fast_grads[name], expected, f"gradient of {name}", rtol=1e-3)
    for name, expected in loop.state_dict().items():
        if "running" in name or "num_batches_tracked" in name:
            assert_close(fast.state_dict()[name].float(), expected.float(), name, rtol=1e-5)


@pytest.mark.parametrize("variant", VARIANTS)
def test_fast_path_spikes_in_every_layer(variant):
    # The equality test above only means something if every layer spikes for its inputs.
    model = make_model(variant, 4, eta=None, **SPIKING_OPTIONS)
    output = model(make_images(6))
    for name in SPIKING_LAYERS:
        assert output.spike_rates[name] > 0, f"{name} is silent"
        assert output.spike_rates[name] < 1, f"{name} spikes everywhere"


@pytest.mark.parametrize("variant", VARIANTS)
def test_fast_path_running_stats_change(variant):
    model = make_model(variant, 3, dropout=0.0)
    before = {name: value.clone() for name, value in model.state_dict().items() if "running" in name}
    model(make_images(4))
    for name, value in before.items():
        assert not torch.equal(model.state_dict()[name], value), f"{name} was not updated"
    assert int(model.block1.norm.num_batches_tracked) == 3
    assert int(model.block2.norm.num_batches_tracked) == 3


def test_adder_gradients_rescaled_once_per_pass():
    # With eta set, the fast path rescales each adder layer's weight gradient once over
    # all steps: it equals the rescaled sum of the loop's unscaled per-step gradients.
    eta = 0.2
    fast = make_model("snn_adder", 3, eta=eta, **SPIKING_OPTIONS)
    loop = copy.deepcopy(fast)
    for layer in (loop.block1.layer, loop.block2.layer):
        layer.eta = None
    images = make_images(4)
    labels = torch.tensor([0, 1, 2, 3])

    _, fast_grads = run_and_backward(fast_forward, fast, images, labels)
    _, loop_grads = run_and_backward(per_step_forward, loop, images, labels)

    for name in ("block1.layer.weight", "block2.layer.weight"):
        unscaled = loop_grads[name]
        expected = unscaled * (eta * math.sqrt(unscaled.numel()) / unscaled.norm())
        assert_close(fast_grads[name], expected, f"gradient of {name}", rtol=1e-3)


def test_dropout_draws_a_mask_per_step():
    steps, batch = 4, 3
    model = make_model("snn", steps, dropout=0.5).train()
    captured = {}
    model.dropout.register_forward_hook(lambda module, inputs, output: captured.update(output=output))
    model(make_images(batch))

    kept = (captured["output"] != 0).reshape(steps, batch, -1)
    for step in range(1, steps):
        assert not torch.equal(kept[step], kept[0]), f"step {step} reused the mask of step 0"
    assert 0.4 < kept.float().mean().item() < 0.6


# ---------------------------------------------------------------------------
# State isolation.
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("variant", VARIANTS)
def test_same_batch_twice_gives_same_output(variant):
    model = make_model(variant, 3, dropout=0.0)
    images = make_images(4)
    first = model(images)
    second = model(images)
    assert torch.equal(first.logits, second.logits)
    assert torch.equal(first.tie_scores, second.tie_scores)


@pytest.mark.parametrize("variant", VARIANTS)
def test_interleaved_networks_are_independent(variant):
    first_model = make_model(variant, 3, seed=0).eval()
    second_model = make_model(variant, 3, seed=1).eval()
    first_images = make_images(4, seed=2)
    second_images = make_images(3, seed=3)

    with torch.no_grad():
        first_alone = first_model(first_images)
        second_alone = second_model(second_images)
        outputs = [first_model(first_images), second_model(second_images),
                   first_model(first_images), second_model(second_images)]

    assert not torch.equal(first_alone.tie_scores[:3], second_alone.tie_scores)
    for index, output in enumerate(outputs):
        expected = first_alone if index % 2 == 0 else second_alone
        assert torch.equal(output.logits, expected.logits), f"call {index} logits"
        assert torch.equal(output.tie_scores, expected.tie_scores), f"call {index} tie_scores"


# ---------------------------------------------------------------------------
# Tie breaking.
# ---------------------------------------------------------------------------


def test_predict_classes_breaks_ties_with_tie_scores():
    logits = torch.tensor([[3.0, 3.0, 1.0], [0.0, 2.0, 2.0], [1.0, 0.0, 0.0], [2.0, 2.0, 0.0]])
    tie_scores = torch.tensor([[0.1, 0.5, 9.0], [7.0, -1.0, -2.0], [-5.0, 4.0, 4.0], [1.0, 1.0, 0.0]])
    predicted = predict_classes(ModelOutput(logits=logits, tie_scores=tie_scores))
    # Row 0: class 2 has the largest tie score but not the top count, so class 1 wins.
    # Row 1: among the tied classes 1 and 2, class 1 has the larger score.
    # Row 2: no tie, the count decides. Row 3: a tie in both goes to the lower index.
    assert predicted.tolist() == [1, 1, 0, 0]


def test_predict_classes_without_tie_scores_uses_argmax():
    logits = torch.tensor([[0.2, 0.9, 0.1]])
    assert predict_classes(ModelOutput(logits=logits)).tolist() == [1]


def output_membranes(model, images) -> tuple[ModelOutput, torch.Tensor]:
    """Run `model` and recompute lif5's membranes (T, B, 10) from its input currents."""
    captured = {}
    model.linear3.register_forward_hook(lambda module, inputs, output: captured.update(currents=output))
    output = model(images)
    currents = captured["currents"].detach().reshape(model.steps, images.shape[0], -1)
    _, membranes = neuron_call_loop(copy.deepcopy(model.lif5), currents)
    return output, membranes.detach()


def test_tie_scores_are_summed_output_membrane():
    model = make_model("snn", 4, dropout=0.0, threshold=0.5)
    output, membranes = output_membranes(model, make_images(3))
    assert_close(output.tie_scores, membranes.sum(0), "tie_scores")


def test_membrane_readout_is_mean_output_membrane():
    model = make_model("snn", 4, dropout=0.0, threshold=0.5, readout="membrane")
    output, membranes = output_membranes(model, make_images(3))
    assert_close(output.logits.detach(), membranes.mean(0), "logits")
