"""Parts shared by every variant: the study's layer sizes, the model output and the head.

All four variants share one architecture (a two-block network from the pytorch-ignite
Fashion-MNIST example):

- block 1: 1 -> 32 channels, 3x3, padding 1, BatchNorm, activation, max-pool 2 (32x14x14)
- block 2: 32 -> 64 channels, 3x3, no padding, BatchNorm, activation, max-pool 2 (64x6x6)
- head: Linear 2304 -> 600, dropout, Linear 600 -> 120, Linear 120 -> 10
"""

from dataclasses import dataclass, field

import torch
from torch import nn

IMAGE_SIZE = 28
IN_CHANNELS = 1
NUM_CLASSES = 10
KERNEL_SIZE = 3
POOL = 2
BLOCK1_CHANNELS = 32
BLOCK2_CHANNELS = 64
BLOCK1_PADDING = 1
BLOCK2_PADDING = 0
HIDDEN1 = 600
HIDDEN2 = 120

BLOCK1_SIZE = (IMAGE_SIZE + 2 * BLOCK1_PADDING - KERNEL_SIZE + 1) // POOL  # 14
BLOCK2_SIZE = (BLOCK1_SIZE + 2 * BLOCK2_PADDING - KERNEL_SIZE + 1) // POOL  # 6
FEATURES = BLOCK2_CHANNELS * BLOCK2_SIZE * BLOCK2_SIZE  # 2304


@dataclass
class ModelOutput:
    """What every model returns for a batch of B images.

    Attributes:
        logits: (B, 10) scores; training minimises cross entropy on them and the
            prediction is their argmax.
        tie_scores: (B, 10) secondary scores that break ties among classes sharing the
            top logit (spiking readouts tie often), or None where ties cannot happen.
        spike_rates: mean firing rate per spiking layer, as detached scalar tensors
            (spikes per neuron per time step), empty for non-spiking models.
    """

    logits: torch.Tensor
    tie_scores: torch.Tensor | None = None
    spike_rates: dict[str, torch.Tensor] = field(default_factory=dict)


def make_activation(name: str) -> nn.Module:
    """Return the activation between head layers: the study has none."""
    if name == "none":
        return nn.Identity()
    if name == "relu":
        return nn.ReLU()
    raise ValueError(f"unknown head activation {name!r}: expected 'none' or 'relu'")


class Head(nn.Module):
    """The study's classifier: 2304 -> 600 -> dropout -> 120 -> 10.

    The study puts no activation between the linear layers, so the three collapse into
    one affine map at inference. `activation="relu"` adds one after each hidden layer.
    """

    def __init__(self, dropout: float, activation: str = "none") -> None:
        super().__init__()
        self.linear1 = nn.Linear(FEATURES, HIDDEN1)
        self.dropout = nn.Dropout(dropout)
        self.act1 = make_activation(activation)
        self.linear2 = nn.Linear(HIDDEN1, HIDDEN2)
        self.act2 = make_activation(activation)
        self.linear3 = nn.Linear(HIDDEN2, NUM_CLASSES)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        x = self.act1(self.dropout(self.linear1(features)))
        x = self.act2(self.linear2(x))
        return self.linear3(x)
