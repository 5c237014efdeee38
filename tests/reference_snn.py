"""The study's spiking network as a plain per-step snnTorch loop, for tests and benchmarks.

`per_step_forward` runs a `SpikingNet`'s own modules one time step at a time, the way
snnTorch's tutorials write a spiking network. Every step feeds the image through block 1,
the neuron, block 2 and so on. BatchNorm gets plain (B, C, H, W) calls, and adder blocks
use the general `adder2d`. It shares the fast model's parameters, so both paths can
be compared output for output and gradient for gradient.
"""

import torch
from torch import Tensor

from altnn.layers.adder import adder2d
from altnn.layers.spiking import SpikeAdder2d, spike_rate
from altnn.models.common import ModelOutput
from altnn.models.snn import SPIKING_LAYERS, SpikingBlock, SpikingNet, read_out


def block_step(block: SpikingBlock, x: Tensor) -> Tensor:
    """Compute one step's current of a block, using the general adder for adder layers."""
    layer = block.layer
    if isinstance(layer, SpikeAdder2d):
        features = adder2d(x, layer.weight, layer.stride, layer.padding, layer.eta)
    else:
        features = layer(x)
    return block.pool(block.norm(features))


def per_step_forward(model: SpikingNet, images: Tensor) -> ModelOutput:
    """Run `model` step by step over `model.steps` steps and return its output."""
    neurons = [getattr(model, name) for name in SPIKING_LAYERS]
    membranes = [neuron.reset_mem() for neuron in neurons]
    spike_trains: list[list[Tensor]] = [[] for _ in neurons]
    output_membranes = []

    for _ in range(model.steps):
        current = block_step(model.block1, images)
        spikes, membranes[0] = model.lif1(current, membranes[0])
        spike_trains[0].append(spikes)

        current = block_step(model.block2, spikes).flatten(1)
        spikes, membranes[1] = model.lif2(current, membranes[1])
        spike_trains[1].append(spikes)

        current = model.dropout(model.linear1(spikes))
        spikes, membranes[2] = model.lif3(current, membranes[2])
        spike_trains[2].append(spikes)

        current = model.linear2(spikes)
        spikes, membranes[3] = model.lif4(current, membranes[3])
        spike_trains[3].append(spikes)

        current = model.linear3(spikes)
        spikes, membranes[4] = model.lif5(current, membranes[4])
        spike_trains[4].append(spikes)
        output_membranes.append(membranes[4])

    stacked = [torch.stack(train) for train in spike_trains]
    spike_rates = {name: spike_rate(spikes) for name, spikes in zip(SPIKING_LAYERS, stacked, strict=True)}
    return read_out(model.readout, stacked[4], torch.stack(output_membranes), spike_rates)
