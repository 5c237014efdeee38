"""The spiking variants: the study's network with snnTorch Leaky neurons, and its AdderNet twin.

Both keep the layer sizes of `altnn.models.common` and put a Leaky neuron after block 1,
after block 2, after linear1 and dropout, after linear2 and after linear3. In a block the
neuron takes the place of the ReLU and comes after max-pooling, as in snnTorch's
convolutional SNN tutorial (`cur1 = F.max_pool2d(self.conv1(x), 2)` feeds `lif1`), so it
integrates the pooled 14x14 and 6x6 maps: a block is conv -> BatchNorm -> max-pool 2 ->
Leaky. Spiking before pooling would give different results, because a Leaky neuron does
not commute with max-pooling as a ReLU does.

Direct encoding: the same normalized image enters block 1 at every one of T steps, and
every membrane starts at zero in each forward pass.

The forward pass runs layer by layer. Block 1 has a static input, so it runs once. Every
later stateless layer takes all T steps as one batch of T*B samples, and only the neurons
loop over T. The network has no recurrence across layers within a step, so this computes
what a per-step loop computes, up to float rounding (`tests/reference_snn.py` contains
that loop, and the tests compare outputs, gradients and BatchNorm running statistics).
Two differences remain. Dropout draws an independent mask for every step, as a per-step
loop does, but from different random numbers. In `SNNAdder` with `eta` set, each adder
layer's weight gradient is rescaled once per forward pass (see `SNNAdder`).
"""

import snntorch as snn
import torch
from snntorch import surrogate
from torch import Tensor, nn

from altnn.config import READOUTS, ModelConfig
from altnn.layers.adder import Adder2d
from altnn.layers.spiking import SpikeAdder2d, StepBatchNorm2d, run_leaky, spike_rate
from altnn.models import common as arch
from altnn.models.common import ModelOutput

SPIKING_LAYERS = ("lif1", "lif2", "lif3", "lif4", "lif5")


def make_leaky(config: ModelConfig) -> snn.Leaky:
    """Build one Leaky neuron layer with the configured decay, threshold and surrogate."""
    return snn.Leaky(
        beta=config.beta,
        learn_beta=config.learn_beta,
        threshold=config.threshold,
        learn_threshold=config.learn_threshold,
        spike_grad=surrogate.fast_sigmoid(slope=config.surrogate_slope),
        init_hidden=False,
    )


class SpikingBlock(nn.Module):
    """Feature layer -> BatchNorm -> max-pool 2: the input current of a Leaky layer."""

    def __init__(self, layer: nn.Module, channels: int) -> None:
        super().__init__()
        self.layer = layer
        self.norm = StepBatchNorm2d(channels)
        self.pool = nn.MaxPool2d(arch.POOL)

    def forward(self, x: Tensor) -> Tensor:
        """Compute one step's current from (B, C, H, W), as a per-step loop does."""
        return self.pool(self.norm(self.layer(x)))

    def forward_repeated(self, x: Tensor, steps: int) -> Tensor:
        """Compute the current of an input that enters at each of `steps` steps."""
        return self.pool(self.norm.forward_repeated(self.layer(x), steps))

    def forward_steps(self, x: Tensor) -> Tensor:
        """Compute the currents of a (T, B, C, H, W) input with one layer call for all steps."""
        steps_and_batch = x.shape[:2]
        # channels_last: measured on CPU (torch 2.14, 2 cores, batch 64), NCHW max-pooling
        # of the 12x12 block-2 map took several times as long as channels_last.
        features = self.layer(x.flatten(0, 1).contiguous(memory_format=torch.channels_last))
        normalized = self.norm.forward_steps(features.unflatten(0, steps_and_batch))
        return self.pool(normalized.flatten(0, 1)).unflatten(0, steps_and_batch)


class SpikingNet(nn.Module):
    """The study's spiking network: two blocks and the head, with five Leaky layers.

    `forward(images)` returns a `ModelOutput` computed over `steps` time steps:

    - readout "spike_count" (the study's): `logits` are the output layer's spike counts
      over the T steps, and `tie_scores` its membrane potential summed over the steps.
      The prediction is the class with the most spikes. Among classes tied at the top
      count, the one with the largest summed membrane wins (`predict_classes`). Counts
      are integers from 0 to T, so ties are frequent at small T.
    - readout "membrane": `logits` are the output layer's membrane potential averaged
      over the T steps, a common readout in the SNN literature. The output layer still
      spikes and resets (by subtraction) as in the "spike_count" readout. `tie_scores`
      is None.

    `spike_rates` contains the detached mean firing rate of "lif1".."lif5".
    """

    def __init__(self, config: ModelConfig, block1_layer: nn.Module, block2_layer: nn.Module) -> None:
        super().__init__()
        if config.steps is None or config.steps < 1:
            raise ValueError(f"spiking variant {config.variant!r} needs steps >= 1, got {config.steps!r}")
        if config.readout not in READOUTS:
            raise ValueError(f"unknown readout {config.readout!r}: expected one of {', '.join(READOUTS)}")
        if config.head_activation != "none":
            raise ValueError(f"spiking variant {config.variant!r} does not support head_activation "
                             f"{config.head_activation!r}: its Leaky neurons are the activations "
                             "between head layers; set head_activation to 'none'")
        self.steps = config.steps
        self.readout = config.readout

        self.block1 = SpikingBlock(block1_layer, arch.BLOCK1_CHANNELS)
        self.lif1 = make_leaky(config)
        self.block2 = SpikingBlock(block2_layer, arch.BLOCK2_CHANNELS)
        self.lif2 = make_leaky(config)
        self.linear1 = nn.Linear(arch.FEATURES, arch.HIDDEN1)
        self.dropout = nn.Dropout(config.dropout)
        self.lif3 = make_leaky(config)
        self.linear2 = nn.Linear(arch.HIDDEN1, arch.HIDDEN2)
        self.lif4 = make_leaky(config)
        self.linear3 = nn.Linear(arch.HIDDEN2, arch.NUM_CLASSES)
        self.lif5 = make_leaky(config)

    def forward(self, images: Tensor) -> ModelOutput:
        steps = self.steps
        images = images.contiguous(memory_format=torch.channels_last)

        current1 = self.block1.forward_repeated(images, steps)  # (B, 32, 14, 14), every step
        spikes1, _ = run_leaky(self.lif1, current1, steps=steps)  # (T, B, 32, 14, 14)
        current2 = self.block2.forward_steps(spikes1)  # (T, B, 64, 6, 6)
        spikes2, _ = run_leaky(self.lif2, current2.flatten(2))  # (T, B, 2304)
        spikes3, _ = run_leaky(self.lif3, self.dropout(self.linear1(spikes2)))  # (T, B, 600)
        spikes4, _ = run_leaky(self.lif4, self.linear2(spikes3))  # (T, B, 120)
        spikes5, membrane5 = run_leaky(self.lif5, self.linear3(spikes4), record_membrane=True)

        all_spikes = (spikes1, spikes2, spikes3, spikes4, spikes5)
        spike_rates = {name: spike_rate(spikes)
                       for name, spikes in zip(SPIKING_LAYERS, all_spikes, strict=True)}
        assert membrane5 is not None
        return read_out(self.readout, spikes5, membrane5, spike_rates)


def read_out(readout: str, spikes: Tensor, membrane: Tensor, spike_rates: dict[str, Tensor]) -> ModelOutput:
    """Build the model output from the output layer's spikes and membrane, both (T, B, 10)."""
    if readout == "spike_count":
        return ModelOutput(logits=spikes.sum(0), tie_scores=membrane.sum(0).detach(), spike_rates=spike_rates)
    if readout == "membrane":
        return ModelOutput(logits=membrane.mean(0), tie_scores=None, spike_rates=spike_rates)
    raise ValueError(f"unknown readout {readout!r}: expected one of {', '.join(READOUTS)}")


def predict_classes(output: ModelOutput) -> Tensor:
    """Return the predicted class of each sample, (B,), breaking ties with `tie_scores`.

    The prediction is the argmax of `logits`. Where several classes share the top logit,
    the one with the largest tie score among them wins, and an exact tie in both goes
    to the lowest class index.
    """
    if output.tie_scores is None:
        return output.logits.argmax(1)
    top = output.logits.max(1, keepdim=True).values
    tied = output.logits == top
    candidate_scores = output.tie_scores.masked_fill(~tied, float("-inf"))
    return candidate_scores.argmax(1)


class SNN(SpikingNet):
    """The study's spiking network with convolutions."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__(
            config,
            nn.Conv2d(arch.IN_CHANNELS, arch.BLOCK1_CHANNELS, arch.KERNEL_SIZE,
                      padding=arch.BLOCK1_PADDING),
            nn.Conv2d(arch.BLOCK1_CHANNELS, arch.BLOCK2_CHANNELS, arch.KERNEL_SIZE,
                      padding=arch.BLOCK2_PADDING),
        )


class SNNAdder(SpikingNet):
    """The spiking network with both convolutions replaced by adder layers (no bias).

    Block 1 is an `Adder2d` on the real-valued image. Block 2's input is the spike train
    of lif1, so it is binary, and block 2 is a `SpikeAdder2d`: the same layer computed as
    a convolution, with its own (64, 32, 3, 3) weight, rescaled (`eta`) as `Adder2d` and
    initialised and bounded by `spike_adder_weights`.

    AdderNet's adaptive scaling (`eta`) sets the norm of a layer's weight gradient per
    training step. Each adder layer here runs once per forward pass over all T steps, so
    its gradient is rescaled once. A per-step loop calls each adder T times and sums T
    separately rescaled gradients, which differs in norm and direction. With
    `eta=None` both give the same gradient.
    """

    def __init__(self, config: ModelConfig) -> None:
        super().__init__(
            config,
            Adder2d(arch.IN_CHANNELS, arch.BLOCK1_CHANNELS, arch.KERNEL_SIZE,
                    padding=arch.BLOCK1_PADDING, eta=config.eta),
            SpikeAdder2d(arch.BLOCK1_CHANNELS, arch.BLOCK2_CHANNELS, arch.KERNEL_SIZE,
                         padding=arch.BLOCK2_PADDING, eta=config.eta,
                         weights=config.spike_adder_weights),
        )
