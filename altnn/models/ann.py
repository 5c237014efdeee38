"""The non-spiking variants: the study's ConvNet and its AdderNet twin."""

from collections.abc import Callable

import torch
from torch import nn

from altnn.config import ModelConfig
from altnn.layers.adder import Adder2d
from altnn.models import common as arch
from altnn.models.common import Head, ModelOutput

# Builds the feature layer of one block: (in_channels, out_channels, padding) -> module.
LayerFactory = Callable[[int, int, int], nn.Module]


class Block(nn.Module):
    """Feature layer -> BatchNorm -> ReLU -> max-pool 2."""

    def __init__(self, layer: nn.Module, channels: int) -> None:
        super().__init__()
        self.layer = layer
        self.norm = nn.BatchNorm2d(channels)
        self.act = nn.ReLU()
        self.pool = nn.MaxPool2d(arch.POOL)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(self.act(self.norm(self.layer(x))))


class StudyNet(nn.Module):
    """The study's two blocks and head, with a pluggable feature layer."""

    def __init__(self, config: ModelConfig, make_layer: LayerFactory) -> None:
        super().__init__()
        self.block1 = Block(make_layer(arch.IN_CHANNELS, arch.BLOCK1_CHANNELS, arch.BLOCK1_PADDING),
                            arch.BLOCK1_CHANNELS)
        self.block2 = Block(make_layer(arch.BLOCK1_CHANNELS, arch.BLOCK2_CHANNELS, arch.BLOCK2_PADDING),
                            arch.BLOCK2_CHANNELS)
        self.head = Head(config.dropout, config.head_activation)

    def forward(self, images: torch.Tensor) -> ModelOutput:
        x = self.block2(self.block1(images))  # (B, 64, 6, 6)
        return ModelOutput(logits=self.head(x.flatten(1)))  # (B, 2304) -> (B, 10)


class ConvNet(StudyNet):
    """The study's convolutional baseline."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__(config, lambda c_in, c_out, padding: nn.Conv2d(
            c_in, c_out, arch.KERNEL_SIZE, padding=padding))


class AdderNet(StudyNet):
    """The ConvNet with both convolutions replaced by adder layers (no bias).

    BatchNorm after each adder layer is required: adder outputs are never positive, and
    without it training stays at chance.
    """

    def __init__(self, config: ModelConfig) -> None:
        super().__init__(config, lambda c_in, c_out, padding: Adder2d(
            c_in, c_out, arch.KERNEL_SIZE, padding=padding, eta=config.eta))
