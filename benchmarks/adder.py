"""Adder layer forward+backward time and peak memory against nn.Conv2d and the plain reference.

Run from the repository root:

    python -m benchmarks.adder [--reps 15] [--cpu-time]

For the study's two layers (1->32, 3x3, padding 1 on 28x28 images, whose input needs
no gradient, and 32->64, 3x3, no padding on 14x14 feature maps) at batch 64 and 256,
it times one forward and backward pass of nn.Conv2d, of altnn's Adder2d and of the
unfold-and-broadcast reference in tests/reference_adder.py. Conv2d and Adder2d
alternate rep by rep, so load from other processes slows both alike. Each figure is
the median over the reps after two warm-up passes. Targets: Adder2d at most 3x
the time of Conv2d and at least 20x faster than the reference.

Wall-clock times on a machine shared with other processes swing by 10x or more.
``--cpu-time`` runs on one thread and measures that thread's CPU time, which
other processes disturb much less, for a steadier comparison of the work done.
"""

import argparse
import ctypes
import ctypes.util
import os
import statistics
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

import altnn.layers.adder as adder
from altnn.layers.adder import Adder2d
from tests import reference_adder

MAX_CONV_RATIO = 3.0
MIN_REFERENCE_SPEEDUP = 20.0
# The reference builds several (C_out, C_in*k*k, N*L) float32 tensors at once, so it
# is skipped when one such tensor would exceed this size.
REFERENCE_MAX_BYTES = 1 << 30
REFERENCE_REPS = 3
WARMUP_PASSES = 2


@dataclass(frozen=True)
class LayerShape:
    name: str
    in_channels: int
    out_channels: int
    size: int
    padding: int
    input_grad: bool


STUDY_LAYERS = [
    LayerShape("1->32 28x28 pad1", 1, 32, 28, 1, input_grad=False),
    LayerShape("32->64 14x14", 32, 64, 14, 0, input_grad=True),
]
BATCH_SIZES = [64, 256]
KERNEL_SIZE = 3


# mallopt parameter number of M_MMAP_THRESHOLD in glibc's malloc.h.
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD_BYTES = 64 * 1024


def load_libc() -> ctypes.CDLL | None:
    """Return glibc with ``mallopt`` and ``malloc_trim``, or None on other C libraries."""
    libc_name = ctypes.util.find_library("c")
    if libc_name is None:
        return None
    libc = ctypes.CDLL(libc_name)
    if not (hasattr(libc, "mallopt") and hasattr(libc, "malloc_trim")):
        return None
    return libc


def map_large_allocations(libc: ctypes.CDLL) -> bool:
    """Make glibc serve every new allocation of 64 KiB or more with its own mmap.

    By default glibc raises its mmap threshold after large blocks are freed and then
    keeps later large blocks in the heap, where freed memory stays resident. A fixed
    threshold returns every freed tensor to the OS, so RSS follows the live tensors.
    """
    return bool(libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES))


class PeakRssSampler:
    """Sample this process's resident set size every 0.5 ms and keep the maximum.

    With ``map_large_allocations`` in effect, a freed tensor leaves RSS, and a new one
    counts towards RSS once its pages are written, so the peak RSS above the level
    before a pass is the memory that the pass touched. Allocations that live for less
    than one sampling interval can be missed.
    """

    def __init__(self) -> None:
        self._page_size = os.sysconf("SC_PAGE_SIZE")
        self._stop = threading.Event()
        self.peak = 0
        self._thread = threading.Thread(target=self._run, daemon=True)

    def current_rss(self) -> int:
        with open("/proc/self/statm") as statm:
            return int(statm.read().split()[1]) * self._page_size

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self.current_rss())
            time.sleep(0.0005)

    def __enter__(self) -> "PeakRssSampler":
        self.peak = self.current_rss()
        self._thread.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self.current_rss())


def make_pass(forward: Callable, x: torch.Tensor, parameter: torch.Tensor) -> Callable[[], None]:
    """Return a function that runs one forward and backward pass and clears the gradients."""

    def run() -> None:
        out = forward(x)
        out.backward(torch.ones_like(out))
        parameter.grad = None
        x.grad = None

    return run


def measure_peak_extra_bytes(run: Callable[[], None], libc: ctypes.CDLL | None) -> int:
    if libc is not None:
        # Free heap pages left by earlier passes would be reused without raising RSS.
        libc.malloc_trim(0)
    sampler = PeakRssSampler()
    baseline = sampler.current_rss()
    with sampler:
        run()
    return sampler.peak - baseline


# time.perf_counter for wall-clock time, or time.thread_time with --cpu-time.
clock = time.perf_counter


def time_once(run: Callable[[], None]) -> float:
    start = clock()
    run()
    return clock() - start


def reference_skip_reason(layer: LayerShape, batch: int) -> str | None:
    """Return why the reference is skipped for this case, or None when it runs."""
    out_size = layer.size + 2 * layer.padding - KERNEL_SIZE + 1
    k = layer.in_channels * KERNEL_SIZE * KERNEL_SIZE
    tensor_bytes = layer.out_channels * k * batch * out_size * out_size * 4
    if tensor_bytes <= REFERENCE_MAX_BYTES:
        return None
    return f"skipped: one (C_out, K, N*L) tensor is {tensor_bytes / 2**30:.1f} GiB"


@dataclass
class CasePasses:
    conv: Callable[[], None]
    ours: Callable[[], None]
    reference: Callable[[], None] | None


def build_passes(layer: LayerShape, batch: int) -> CasePasses:
    """Build one forward+backward pass each of Conv2d, Adder2d and the reference on one input."""
    torch.manual_seed(0)
    x = torch.randn(batch, layer.in_channels, layer.size, layer.size, requires_grad=layer.input_grad)
    conv = nn.Conv2d(layer.in_channels, layer.out_channels, KERNEL_SIZE, padding=layer.padding, bias=False)
    ours = Adder2d(layer.in_channels, layer.out_channels, KERNEL_SIZE, padding=layer.padding)

    def reference_forward(inputs: torch.Tensor) -> torch.Tensor:
        return reference_adder.adder2d(inputs, ours.weight, 1, layer.padding, ours.eta)

    reference_pass = None
    if reference_skip_reason(layer, batch) is None:
        reference_pass = make_pass(reference_forward, x, ours.weight)
    return CasePasses(
        conv=make_pass(conv, x, conv.weight),
        ours=make_pass(ours, x, ours.weight),
        reference=reference_pass,
    )


def time_case(passes: CasePasses, reps: int) -> dict:
    """Return the median seconds per pass, keyed "conv", "ours" and "reference" (None if skipped)."""
    for _ in range(WARMUP_PASSES):
        passes.conv()
        passes.ours()
    conv_times, ours_times = [], []
    for _ in range(reps):
        conv_times.append(time_once(passes.conv))
        ours_times.append(time_once(passes.ours))

    reference_time = None
    if passes.reference is not None:
        reference_time = statistics.median(time_once(passes.reference) for _ in range(REFERENCE_REPS))
    return {
        "conv": statistics.median(conv_times),
        "ours": statistics.median(ours_times),
        "reference": reference_time,
    }


def measure_case_memory(passes: CasePasses, libc: ctypes.CDLL | None) -> dict:
    """Return the peak extra bytes of one pass, keyed like ``time_case``."""
    reference_peak = None
    if passes.reference is not None:
        reference_peak = measure_peak_extra_bytes(passes.reference, libc)
    return {
        "conv": measure_peak_extra_bytes(passes.conv, libc),
        "ours": measure_peak_extra_bytes(passes.ours, libc),
        "reference": reference_peak,
    }


def format_ms(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds * 1e3:.1f}"


def format_mib(size: int | None) -> str:
    return "-" if size is None else f"{size / 2**20:.0f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--reps", type=int, default=15, help="timed passes per layer and batch size (default: 15)"
    )
    parser.add_argument(
        "--cpu-time",
        action="store_true",
        help="run on one thread and measure its CPU time instead of wall-clock time",
    )
    args = parser.parse_args()

    global clock
    if args.cpu_time:
        torch.set_num_threads(1)
        clock = time.thread_time

    backend = adder.select_backend(torch.device("cpu"))
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} CPUs")
    print(f"adder backend: {backend} (set {adder.BACKEND_ENV_VAR}=eager|compiled to force one)")
    clock_name = "CPU time of the one thread" if args.cpu_time else "wall-clock time"
    print(
        f"time: {clock_name}, median of {args.reps} forward+backward passes, "
        f"reference: median of {REFERENCE_REPS}"
    )
    print("peak: maximum resident memory above the level before one pass, sampled every 0.5 ms")
    print()

    header = (
        f"{'layer':<18} {'batch':>5} {'conv ms':>8} {'adder ms':>9} {'ref ms':>8} "
        f"{'adder/conv':>10} {'ref/adder':>9} {'conv MiB':>8} {'adder MiB':>9} {'ref MiB':>8}"
    )
    print(header)
    print("-" * len(header))

    cases = [(layer, batch) for layer in STUDY_LAYERS for batch in BATCH_SIZES]
    # Timing runs first, with glibc's default malloc, which keeps freed blocks for
    # reuse. The memory measurement then needs map_large_allocations, whose mmap
    # and munmap calls on every large tensor would slow the timed passes.
    times = [time_case(build_passes(layer, batch), args.reps) for layer, batch in cases]
    libc = load_libc()
    mapped = libc is not None and map_large_allocations(libc)
    peaks = [measure_case_memory(build_passes(layer, batch), libc) for layer, batch in cases]

    all_met = True
    notes = []
    for (layer, batch), time_s, peak in zip(cases, times, peaks, strict=True):
        conv_ratio = time_s["ours"] / time_s["conv"]
        all_met &= conv_ratio <= MAX_CONV_RATIO
        speedup_text = "-"
        if time_s["reference"] is not None:
            speedup = time_s["reference"] / time_s["ours"]
            all_met &= speedup >= MIN_REFERENCE_SPEEDUP
            speedup_text = f"{speedup:.1f}"
        else:
            notes.append(f"{layer.name}, batch {batch}: reference {reference_skip_reason(layer, batch)}")
        print(
            f"{layer.name:<18} {batch:>5} {format_ms(time_s['conv']):>8} "
            f"{format_ms(time_s['ours']):>9} {format_ms(time_s['reference']):>8} "
            f"{conv_ratio:>10.2f} {speedup_text:>9} {format_mib(peak['conv']):>8} "
            f"{format_mib(peak['ours']):>9} {format_mib(peak['reference']):>8}"
        )

    if not mapped:
        notes.append(
            "glibc's mallopt failed or is unavailable, so freed memory may stay resident and peaks read low"
        )
    print()
    for note in notes:
        print(note)
    print(
        f"targets (adder/conv <= {MAX_CONV_RATIO:g}, ref/adder >= {MIN_REFERENCE_SPEEDUP:g}): "
        f"{'met' if all_met else 'NOT met'}"
    )


if __name__ == "__main__":
    main()
