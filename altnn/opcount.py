"""Operation counts and energy estimates per image, measured with forward hooks.

Each weighted layer (convolution, linear, adder) is counted from what it actually
receives in a forward pass:

- a real-valued input costs multiply-accumulates (MACs): output elements x fan-in;
  an adder layer costs 2 additions per weight use instead (subtract, then accumulate
  the absolute value), as in Chen et al., "AdderNet", CVPR 2020;
- a binary (spike) input costs synaptic operations (SOPs): one addition per spike and
  per output it reaches, counted exactly from the spike positions.

Energy uses Horowitz, "Computing's energy problem", ISSCC 2014 (45 nm, 0.9 V): 4.6 pJ
per 32-bit float MAC and 0.9 pJ per 32-bit float addition. These estimates ignore data
movement, which often dominates real hardware, and skip BatchNorm, pooling and neurons.
"""

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

MAC_PJ = 4.6
ADD_PJ = 0.9


@dataclass
class LayerCount:
    """Totals for one layer over the counted images."""

    kind: str  # "conv", "linear" or "adder"
    input: str = "dense"  # "dense" or "spikes"
    macs: float = 0.0
    additions: float = 0.0  # adder-layer additions on dense input
    synaptic_ops: float = 0.0


@dataclass
class OperationCount:
    """Per-image counts and an energy estimate in picojoules."""

    layers: dict[str, LayerCount] = field(default_factory=dict)
    images: int = 0

    def per_image(self, attribute: str) -> float:
        return sum(getattr(layer, attribute) for layer in self.layers.values()) / max(self.images, 1)

    @property
    def energy_pj(self) -> float:
        return (MAC_PJ * self.per_image("macs")
                + ADD_PJ * (self.per_image("additions") + self.per_image("synaptic_ops")))

    def as_dict(self) -> dict:
        return {
            "images_counted": self.images,
            "macs_per_image": self.per_image("macs"),
            "adder_additions_per_image": self.per_image("additions"),
            "synaptic_ops_per_image": self.per_image("synaptic_ops"),
            "energy_pj_per_image": self.energy_pj,
            "layers": {name: {"kind": layer.kind, "input": layer.input,
                              "macs_per_image": layer.macs / max(self.images, 1),
                              "adder_additions_per_image": layer.additions / max(self.images, 1),
                              "synaptic_ops_per_image": layer.synaptic_ops / max(self.images, 1)}
                       for name, layer in self.layers.items()},
            "note": "estimates from 45 nm figures (Horowitz, ISSCC 2014); data movement, "
                    "BatchNorm, pooling and neurons are not counted",
        }


def _layer_kind(module: nn.Module) -> str | None:
    if "adder" in type(module).__name__.lower() and getattr(module, "weight", None) is not None:
        return "adder"
    if isinstance(module, nn.Conv2d):
        return "conv"
    if isinstance(module, nn.Linear):
        return "linear"
    return None


def _is_binary(x: torch.Tensor) -> bool:
    return bool(((x == 0) | (x == 1)).all())


def _spike_reach(module: nn.Module, spikes: torch.Tensor) -> float:
    """Count (spike, output) pairs: the additions an event-driven layer performs."""
    weight = module.weight
    if weight.dim() == 2:  # linear: each spike reaches every output
        return float(spikes.count_nonzero()) * weight.shape[0]
    stride = getattr(module, "stride", 1)
    padding = getattr(module, "padding", 0)
    window = torch.ones(1, weight.shape[1], *weight.shape[2:], device=spikes.device)
    per_output = F.conv2d((spikes != 0).float(), window, stride=stride, padding=padding)
    return float(per_output.sum()) * weight.shape[0]


def _dense_work(module: nn.Module, output: torch.Tensor) -> float:
    """Count weight uses: output elements x fan-in (MACs for conv and linear layers)."""
    fan_in = module.weight[0].numel()
    return float(output.numel()) * fan_in


@torch.no_grad()
def count_operations(model: nn.Module, images: torch.Tensor) -> OperationCount:
    """Run `model` on `images` in eval mode and count each weighted layer's operations."""
    counts = OperationCount(images=len(images))
    handles = []

    def make_hook(name: str, kind: str):
        def hook(module, inputs, output):
            layer = counts.layers.setdefault(name, LayerCount(kind=kind))
            x = inputs[0]
            if may_carry_spikes(name) and _is_binary(x):
                layer.input = "spikes"
                layer.synaptic_ops += _spike_reach(module, x)
            elif kind == "adder":
                layer.additions += 2 * _dense_work(module, output)
            else:
                layer.macs += _dense_work(module, output)
        return hook

    first_layer = next((name for name, module in model.named_modules() if _layer_kind(module)), None)
    # Only spiking models (those with time steps) feed layers with spikes. A non-spiking
    # layer does its dense work even when, say, an untrained ReLU outputs only zeros.
    spiking = getattr(model, "steps", None) is not None

    def may_carry_spikes(name: str) -> bool:
        return spiking and name != first_layer  # the image itself is never spikes

    for name, module in model.named_modules():
        kind = _layer_kind(module)
        if kind is not None:
            handles.append(module.register_forward_hook(make_hook(name, kind)))
    was_training = model.training
    model.eval()
    try:
        model(images)
    finally:
        model.train(was_training)
        for handle in handles:
            handle.remove()
    return counts
