"""Model registry: every variant of the study, built from a `ModelConfig`."""

from collections.abc import Callable

from torch import nn

from altnn.config import ModelConfig
from altnn.models.ann import AdderNet, ConvNet
from altnn.models.common import ModelOutput
from altnn.models.snn import SNN, SNNAdder

ModelBuilder = Callable[[ModelConfig], nn.Module]

_REGISTRY: dict[str, ModelBuilder] = {
    "convnet": ConvNet,
    "addernet": AdderNet,
    "snn": SNN,
    "snn_adder": SNNAdder,
}


def register(variant: str, builder: ModelBuilder) -> None:
    """Add a variant to the registry; names are unique."""
    if variant in _REGISTRY:
        raise ValueError(f"variant {variant!r} is already registered")
    _REGISTRY[variant] = builder


def registered_variants() -> tuple[str, ...]:
    return tuple(_REGISTRY)


def build_model(config: ModelConfig) -> nn.Module:
    """Build the network of `config.variant`."""
    try:
        builder = _REGISTRY[config.variant]
    except KeyError:
        known = ", ".join(_REGISTRY)
        raise ValueError(f"unknown variant {config.variant!r}; registered variants: {known}") from None
    return builder(config)


__all__ = ["ModelOutput", "build_model", "register", "registered_variants"]
