"""Time training steps of the spiking models against the ConvNet and the per-step loop.

Run from the repository root:

    .venv/bin/python -m benchmarks.spiking

For each T it times, in one process and interleaved round by round, one training step
(forward, cross-entropy backward, Adam step) on a random batch of:

- the ConvNet, run T times (a ConvNet step processes each image once, an SNN step T times);
- the fast SNN and SNN+AdderNet (`altnn.models.snn`);
- the same two models run by the plain per-step snnTorch loop (`tests/reference_snn.py`).

It prints the minimum time of each step over the rounds, the usual statistic for timing
on a machine whose other load only ever adds time, and these ratios with their targets:

- (a) fast SNN step / T ConvNet steps, target at most 1.0;
- (b) fast SNN+AdderNet step / fast SNN step, target at most 1.3;
- (c) per-step loop step / fast step for each model, the gain of the fast path.

Timings depend on the machine and on other work sharing its cores.
"""

import argparse
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F

from altnn.config import ModelConfig
from altnn.models import build_model
from altnn.models.common import ModelOutput
from tests.reference_snn import per_step_forward

FAST_SNN_TARGET = 1.0
ADDER_TARGET = 1.3


Forward = Callable[[torch.nn.Module, torch.Tensor], ModelOutput]


def make_training_step(model: torch.nn.Module, forward: Forward, images: torch.Tensor, labels: torch.Tensor,
                       repeats: int = 1) -> Callable[[], None]:
    """Return a function that runs `repeats` Adam training steps of `model` on one batch."""
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    model.train()

    def run() -> None:
        for _ in range(repeats):
            optimizer.zero_grad(set_to_none=True)
            loss = F.cross_entropy(forward(model, images).logits, labels)
            loss.backward()
            optimizer.step()

    return run


def call_model(model: torch.nn.Module, images: torch.Tensor) -> ModelOutput:
    return model(images)


def time_interleaved(steps: dict[str, Callable[[], None]], rounds: int,
                     device: torch.device) -> dict[str, float]:
    """Return the minimum seconds of each step over `rounds` rounds, after one warm-up call each."""
    def synchronize() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    for step in steps.values():
        step()
    synchronize()
    samples: dict[str, list[float]] = {name: [] for name in steps}
    for _ in range(rounds):
        for name, step in steps.items():
            start = time.perf_counter()
            step()
            synchronize()
            samples[name].append(time.perf_counter() - start)
    return {name: min(values) for name, values in samples.items()}


def benchmark_steps(steps: int, batch: int, rounds: int, device: torch.device) -> dict[str, float]:
    """Time the five training steps at `steps` time steps."""
    generator = torch.Generator().manual_seed(0)
    images = torch.randn(batch, 1, 28, 28, generator=generator).to(device)
    labels = torch.randint(0, 10, (batch,), generator=generator).to(device)

    def build(variant: str) -> torch.nn.Module:
        torch.manual_seed(0)
        spiking_steps = steps if variant.startswith("snn") else None
        return build_model(ModelConfig(variant=variant, steps=spiking_steps)).to(device)

    training_steps = {
        "convnet x T": make_training_step(build("convnet"), call_model, images, labels, repeats=steps),
        "snn fast": make_training_step(build("snn"), call_model, images, labels),
        "snn_adder fast": make_training_step(build("snn_adder"), call_model, images, labels),
        "snn per-step": make_training_step(build("snn"), per_step_forward, images, labels),
        "snn_adder per-step": make_training_step(build("snn_adder"), per_step_forward, images, labels),
    }
    return time_interleaved(training_steps, rounds, device)


def format_ratio(name: str, value: float, target: float | None) -> str:
    if target is None:
        verdict = "(no target)"
    else:
        verdict = f"target <= {target:.1f}: {'met' if value <= target else 'NOT met'}"
    return f"  {name:<44} {value:6.2f}x  {verdict}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, nargs="+", default=[5, 10],
                        help="time steps T to time (default: 5 10)")
    parser.add_argument("--batch", type=int, default=64, help="batch size (default: 64)")
    parser.add_argument("--rounds", type=int, default=5,
                        help="timed rounds per step; the minimum is reported (default: 5)")
    parser.add_argument("--device", default="cpu", help="torch device (default: cpu)")
    parser.add_argument("--threads", type=int, default=None,
                        help="CPU threads for torch (default: torch's own choice)")
    args = parser.parse_args()
    device = torch.device(args.device)
    if args.threads is not None:
        torch.set_num_threads(args.threads)

    print(f"torch {torch.__version__}, device {device}, {torch.get_num_threads()} threads, "
          f"batch {args.batch}, minimum of {args.rounds} rounds")
    for steps in args.steps:
        seconds = benchmark_steps(steps, args.batch, args.rounds, device)
        print(f"\nT = {steps}: minimum time per training step")
        for name, value in seconds.items():
            print(f"  {name:<20} {value * 1e3:9.1f} ms")
        print("ratios:")
        print(format_ratio("(a) snn fast / convnet x T", seconds["snn fast"] / seconds["convnet x T"],
                           FAST_SNN_TARGET))
        print(format_ratio("(b) snn_adder fast / snn fast", seconds["snn_adder fast"] / seconds["snn fast"],
                           ADDER_TARGET))
        print(format_ratio("(c) snn per-step / snn fast", seconds["snn per-step"] / seconds["snn fast"],
                           None))
        print(format_ratio("(c) snn_adder per-step / snn_adder fast",
                           seconds["snn_adder per-step"] / seconds["snn_adder fast"], None))
        print(format_ratio("    snn per-step / convnet x T", seconds["snn per-step"] / seconds["convnet x T"],
                           None))


if __name__ == "__main__":
    main()
