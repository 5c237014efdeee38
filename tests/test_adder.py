"""Tests for the adder layer against the plain reference in reference_adder.py."""

import logging
import math

import pytest
import reference_adder
import torch
from torch import nn

import altnn.layers.adder as adder
from altnn.layers.adder import Adder2d, adder2d

# (batch, in_channels, height, width, out_channels, kernel_size, stride, padding)
SHAPES = [
    pytest.param((2, 1, 8, 8, 4, 3, 1, 1), id="study-like"),
    pytest.param((1, 3, 7, 9, 5, 3, 1, 1), id="batch1-nonsquare"),
    pytest.param((2, 3, 9, 6, 4, 5, 2, 2), id="kernel5-stride2"),
    pytest.param((3, 3, 6, 7, 6, 1, 1, 0), id="kernel1"),
    pytest.param((2, 4, 11, 10, 3, 3, 3, 0), id="stride3-nopad"),
    pytest.param((2, 2, 5, 5, 4, 3, 2, 1), id="stride2-pad1"),
]

BACKENDS = ["eager", "compiled"]


@pytest.fixture(params=BACKENDS)
def backend(request, monkeypatch):
    """Select a backend through ALTNN_ADDER_BACKEND, as a user would."""
    monkeypatch.setenv(adder.BACKEND_ENV_VAR, request.param)
    monkeypatch.setattr(adder, "_backend_by_device", {})
    selected = adder.select_backend(torch.device("cpu"))
    assert selected == request.param
    return request.param


def make_inputs(shape, seed=0):
    batch, in_channels, height, width, out_channels, kernel_size, stride, padding = shape
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, in_channels, height, width, generator=generator)
    weight = torch.randn(out_channels, in_channels, kernel_size, kernel_size, generator=generator)
    return x, weight, stride, padding


def run_backward(x, weight, stride, padding, eta, grad_out=None):
    """Run adder2d forward and backward and return (output, grad_x, grad_weight)."""
    x = x.clone().requires_grad_(True)
    weight = weight.clone().requires_grad_(True)
    out = adder2d(x, weight, stride, padding, eta)
    if grad_out is None:
        grad_out = torch.randn(out.shape, generator=torch.Generator().manual_seed(1))
    out.backward(grad_out)
    return out.detach(), x.grad, weight.grad, grad_out


@pytest.mark.parametrize("chunk_elements", [adder._CHUNK_ELEMENTS, 40], ids=["one-chunk", "many-chunks"])
@pytest.mark.parametrize("shape", SHAPES)
def test_forward_matches_reference(backend, shape, chunk_elements, monkeypatch):
    monkeypatch.setattr(adder, "_CHUNK_ELEMENTS", chunk_elements)
    x, weight, stride, padding = make_inputs(shape)

    out = adder2d(x, weight, stride, padding)
    expected = reference_adder.forward(x, weight, stride, padding)
    conv_shape = torch.nn.functional.conv2d(x, weight, stride=stride, padding=padding).shape

    assert out.shape == conv_shape
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-4)


def test_forward_formula_by_hand(backend):
    # One channel, 1x1 kernel: Y[n, o, y, x] = -|X[n, 0, y, x] - W[o]|.
    x = torch.tensor([[[[0.5, -2.0], [3.0, 0.0]]]])
    weight = torch.tensor([1.0, -1.0]).reshape(2, 1, 1, 1)

    out = adder2d(x, weight)

    expected = -(x - weight.reshape(1, 2, 1, 1)).abs()
    torch.testing.assert_close(out, expected)


def test_forward_padding_counts_zeros(backend):
    # A 3x3 window centred on a 1x1 image covers the pixel and eight padded zeros.
    x = torch.tensor([[[[2.0]]]])
    weight = torch.full((1, 1, 3, 3), 0.5)

    out = adder2d(x, weight, padding=1)

    expected = -(abs(2.0 - 0.5) + 8 * abs(0.0 - 0.5))
    assert out.shape == (1, 1, 1, 1)
    assert out.item() == pytest.approx(expected)


@pytest.mark.parametrize("shape", SHAPES)
def test_backward_matches_reference(backend, shape, monkeypatch):
    monkeypatch.setattr(adder, "_CHUNK_ELEMENTS", 40)
    x, weight, stride, padding = make_inputs(shape)

    _, grad_x, grad_weight, grad_out = run_backward(x, weight, stride, padding, eta=None)

    expected_grad_x = reference_adder.input_grad(x, weight, grad_out, stride, padding)
    expected_grad_weight = reference_adder.weight_grad(x, weight, grad_out, stride, padding, eta=None)
    torch.testing.assert_close(grad_x, expected_grad_x, rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(grad_weight, expected_grad_weight, rtol=1e-4, atol=1e-3)


def test_input_grad_is_clipped_difference(backend):
    # 1x1 kernel on one channel: grad_X[n, 0, y, x] = sum_o G[n, o, y, x] * clamp(W[o] - X, -1, 1).
    # The inputs put W - X both inside and outside [-1, 1], so the clamp matters.
    x = torch.tensor([[[[0.25, -3.0], [4.0, 1.0]]]])
    weight = torch.tensor([0.5, -1.0, 2.0]).reshape(3, 1, 1, 1)
    grad_out = torch.tensor([1.0, 2.0, -1.0]).reshape(1, 3, 1, 1).expand(1, 3, 2, 2).contiguous()

    _, grad_x, _, _ = run_backward(x, weight, 1, 0, eta=None, grad_out=grad_out)

    clipped = (weight.reshape(1, 3, 1, 1) - x).clamp(-1, 1)
    expected = (grad_out * clipped).sum(1, keepdim=True)
    exact = (grad_out * torch.sign(weight.reshape(1, 3, 1, 1) - x)).sum(1, keepdim=True)
    torch.testing.assert_close(grad_x, expected)
    assert not torch.allclose(grad_x, exact)


def test_weight_grad_is_full_precision_difference(backend):
    # grad_W[o] = sum_{y, x} G[0, o, y, x] * (X - W[o]), not the exact sign(X - W[o]).
    x = torch.tensor([[[[0.25, -3.0], [4.0, 1.0]]]])
    weight = torch.tensor([0.5, -1.0, 2.0]).reshape(3, 1, 1, 1)
    grad_out = torch.tensor([1.0, 2.0, -1.0]).reshape(1, 3, 1, 1).expand(1, 3, 2, 2).contiguous()

    _, _, grad_weight, _ = run_backward(x, weight, 1, 0, eta=None, grad_out=grad_out)

    difference = x - weight.reshape(1, 3, 1, 1)
    expected = (grad_out * difference).sum(dim=(0, 2, 3)).reshape(3, 1, 1, 1)
    exact = (grad_out * torch.sign(difference)).sum(dim=(0, 2, 3)).reshape(3, 1, 1, 1)
    torch.testing.assert_close(grad_weight, expected)
    assert not torch.allclose(grad_weight, exact)


@pytest.mark.parametrize("eta", [0.2, 1.5])
def test_weight_grad_scaled_to_eta_norm(backend, eta):
    x, weight, stride, padding = make_inputs((2, 3, 7, 6, 5, 3, 1, 1))

    _, _, grad_weight, grad_out = run_backward(x, weight, stride, padding, eta=eta)
    _, _, unscaled, _ = run_backward(x, weight, stride, padding, eta=None, grad_out=grad_out)

    expected_norm = eta * math.sqrt(weight.numel())
    assert grad_weight.norm().item() == pytest.approx(expected_norm, rel=1e-5)
    direction = unscaled / unscaled.norm()
    torch.testing.assert_close(grad_weight / grad_weight.norm(), direction, rtol=1e-4, atol=1e-5)
    expected = reference_adder.weight_grad(x, weight, grad_out, stride, padding, eta=eta)
    torch.testing.assert_close(grad_weight, expected, rtol=1e-4, atol=1e-4)


def test_zero_grad_stays_finite(backend):
    # The study's 32->64 layer: eta * sqrt(numel) is about 27, large enough to
    # overflow when divided by a norm floor near the smallest float32.
    x, weight, stride, padding = make_inputs((2, 32, 6, 6, 64, 3, 1, 1))
    grad_out = torch.zeros(2, 64, 6, 6)

    _, grad_x, grad_weight, _ = run_backward(x, weight, stride, padding, eta=0.2, grad_out=grad_out)

    assert torch.equal(grad_weight, torch.zeros_like(grad_weight))
    assert torch.equal(grad_x, torch.zeros_like(grad_x))


def test_no_input_grad_without_requires_grad(backend, monkeypatch):
    calls = []
    original = adder.adder_input_grad

    def counting_input_grad(*args, **kwargs):
        calls.append(args)
        return original(*args, **kwargs)

    monkeypatch.setattr(adder, "adder_input_grad", counting_input_grad)
    layer = Adder2d(2, 3, 3, padding=1)
    image = torch.randn(2, 2, 6, 6)

    layer(image).sum().backward()

    assert calls == []
    assert image.grad is None
    assert layer.weight.grad is not None

    features = torch.randn(2, 2, 6, 6, requires_grad=True)
    layer(features).sum().backward()
    assert len(calls) == 1
    assert features.grad is not None


def test_tiny_net_trains_without_nan(backend):
    torch.manual_seed(0)
    model = nn.Sequential(
        Adder2d(1, 4, 3, padding=1),
        nn.BatchNorm2d(4),
        nn.ReLU(),
        nn.MaxPool2d(2),
        Adder2d(4, 6, 3),
        nn.BatchNorm2d(6),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(6 * 2 * 2, 3),
    )
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    images = torch.randn(8, 1, 8, 8)
    labels = torch.randint(0, 3, (8,))

    losses = []
    for _ in range(5):
        optimizer.zero_grad()
        loss = nn.functional.cross_entropy(model(images), labels)
        loss.backward()
        for name, parameter in model.named_parameters():
            assert parameter.grad is not None, f"no gradient reached {name}"
            assert torch.isfinite(parameter.grad).all(), f"non-finite gradient in {name}"
            assert parameter.grad.abs().sum() > 0, f"zero gradient in {name}"
        optimizer.step()
        losses.append(loss.item())

    assert all(math.isfinite(value) for value in losses)
    for name, parameter in model.named_parameters():
        assert torch.isfinite(parameter).all(), f"non-finite values in {name}"


def test_module_shape_and_repr():
    layer = Adder2d(3, 8, 5, stride=2, padding=1, eta=None)

    assert isinstance(layer.weight, nn.Parameter)
    assert layer.weight.shape == (8, 3, 5, 5)
    assert layer.extra_repr() == "3, 8, kernel_size=5, stride=2, padding=1, eta=None"
    assert 0.8 < layer.weight.std().item() < 1.2


def test_invalid_inputs_raise():
    weight = torch.randn(4, 3, 3, 3)

    with pytest.raises(ValueError, match="4-D input"):
        adder2d(torch.randn(3, 5, 5), weight)
    with pytest.raises(ValueError, match="square 4-D weight"):
        adder2d(torch.randn(1, 3, 5, 5), torch.randn(4, 3, 3, 2))
    with pytest.raises(ValueError, match="2 channels"):
        adder2d(torch.randn(1, 2, 5, 5), weight)


def test_batch_chunks_respect_budget(monkeypatch):
    monkeypatch.setattr(adder, "_CHUNK_ELEMENTS", 1000)
    x = torch.empty(10, 2, 6, 6)
    per_sample = 2 * 3 * 3 * 16  # 288 unfolded values per sample for 3x3 kernels over 4x4 outputs

    chunks = adder._batch_chunks(x, kernel_size=3, length=16)

    assert chunks[0][0] == 0
    assert chunks[-1][1] == 10
    assert all(stop == start for (_, stop), (start, _) in zip(chunks[:-1], chunks[1:], strict=True))
    assert all((stop - start) * per_sample <= 1000 for start, stop in chunks)


def test_compile_failure_selects_eager(monkeypatch, caplog):
    def failing_check(device):
        raise RuntimeError("no C++ compiler found")

    monkeypatch.delenv(adder.BACKEND_ENV_VAR, raising=False)
    monkeypatch.setattr(adder, "_backend_by_device", {})
    monkeypatch.setattr(adder, "_run_compile_check", failing_check)

    with caplog.at_level(logging.WARNING, logger=adder.__name__):
        first = adder.select_backend(torch.device("cpu"))
        second = adder.select_backend(torch.device("cpu"))

    warnings = [record for record in caplog.records if record.levelno == logging.WARNING]
    assert first == "eager"
    assert second == "eager"
    assert len(warnings) == 1
    assert "no C++ compiler found" in warnings[0].getMessage()


def test_forced_compiled_raises_on_failure(monkeypatch):
    def failing_check(device):
        raise RuntimeError("no C++ compiler found")

    monkeypatch.setenv(adder.BACKEND_ENV_VAR, "compiled")
    monkeypatch.setattr(adder, "_backend_by_device", {})
    monkeypatch.setattr(adder, "_run_compile_check", failing_check)

    with pytest.raises(RuntimeError, match="no C\\+\\+ compiler"):
        adder.select_backend(torch.device("cpu"))


def test_invalid_backend_env_raises(monkeypatch):
    monkeypatch.setenv(adder.BACKEND_ENV_VAR, "triton")
    monkeypatch.setattr(adder, "_backend_by_device", {})

    with pytest.raises(ValueError, match="ALTNN_ADDER_BACKEND"):
        adder.select_backend(torch.device("cpu"))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_matches_cpu_reference():
    x, weight, stride, padding = make_inputs((2, 3, 9, 8, 5, 3, 1, 1))
    grad_out = torch.randn(2, 5, 9, 8)

    out, grad_x, grad_weight, _ = run_backward(
        x.cuda(), weight.cuda(), stride, padding, eta=None, grad_out=grad_out.cuda()
    )

    expected_out = reference_adder.forward(x, weight, stride, padding)
    torch.testing.assert_close(out.cpu(), expected_out, rtol=1e-5, atol=1e-4)
    expected_grad_x = reference_adder.input_grad(x, weight, grad_out, stride, padding)
    torch.testing.assert_close(grad_x.cpu(), expected_grad_x, rtol=1e-5, atol=1e-4)
    expected_grad_weight = reference_adder.weight_grad(x, weight, grad_out, stride, padding, eta=None)
    torch.testing.assert_close(grad_weight.cpu(), expected_grad_weight, rtol=1e-4, atol=1e-3)
