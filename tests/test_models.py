"""Every registered variant: output shape, finite values, a gradient on every parameter."""

import pytest
import torch
import torch.nn.functional as F

from altnn.config import SPIKING_VARIANTS, ModelConfig
from altnn.models import build_model, registered_variants
from altnn.models.common import NUM_CLASSES
from altnn.opcount import count_operations

STUDY_MACS = 4_335_600  # conv1 225,792 + conv2 2,654,208 + linear layers 1,455,600


def make_config(variant: str, **options) -> ModelConfig:
    steps = 3 if variant in SPIKING_VARIANTS else None
    return ModelConfig(variant=variant, steps=steps, threshold=0.5 if steps else 1.0, **options)


def test_registry_has_every_variant():
    assert set(registered_variants()) == {"convnet", "addernet", "snn", "snn_adder"}


@pytest.mark.parametrize("variant", registered_variants())
def test_output_shape_and_finite(variant):
    torch.manual_seed(0)
    model = build_model(make_config(variant))
    output = model(torch.randn(4, 1, 28, 28))
    assert output.logits.shape == (4, NUM_CLASSES)
    assert torch.isfinite(output.logits).all()


@pytest.mark.parametrize("variant", registered_variants())
def test_gradient_reaches_every_parameter(variant):
    torch.manual_seed(0)
    model = build_model(make_config(variant, dropout=0.0))
    images, labels = torch.randn(8, 1, 28, 28), torch.arange(8) % NUM_CLASSES
    F.cross_entropy(model(images).logits, labels).backward()
    for name, parameter in model.named_parameters():
        assert parameter.grad is not None, name
        assert torch.isfinite(parameter.grad).all(), name


def test_unknown_variant_rejected():
    with pytest.raises(ValueError, match="unknown variant 'resnet'"):
        build_model(ModelConfig(variant="resnet"))


def test_convnet_macs_match_study():
    model = build_model(make_config("convnet"))
    counts = count_operations(model, torch.randn(2, 1, 28, 28))
    assert counts.per_image("macs") == STUDY_MACS
    assert counts.per_image("synaptic_ops") == 0


def test_addernet_counts_additions_not_macs():
    model = build_model(make_config("addernet"))
    counts = count_operations(model, torch.randn(2, 1, 28, 28))
    assert counts.per_image("additions") == 2 * (225_792 + 2_654_208)
    assert counts.per_image("macs") == 1_455_600
