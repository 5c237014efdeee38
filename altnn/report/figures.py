"""Draw the accuracy curves of each run and the train-test gap of all runs as PNG files."""

import logging
from collections.abc import Sequence
from pathlib import Path

import matplotlib

# Select the non-interactive backend before pyplot is imported, so plotting works
# without a display whatever the DISPLAY and MPLBACKEND environment variables contain.
matplotlib.use("Agg")

import matplotlib.pyplot as plt
from matplotlib.ticker import MaxNLocator

from altnn.report.runs import FINISHED, RunRecord
from altnn.study import PUBLISHED_TEST_CURVES

log = logging.getLogger(__name__)

GAP_FIGURE = "gap.png"
VARIANT_COLORS = {"convnet": "tab:blue", "addernet": "tab:orange",
                  "snn": "tab:green", "snn_adder": "tab:red"}
STEP_LINESTYLES = ("--", "-.", ":", (0, (5, 1)), (0, (3, 1, 1, 1, 1, 1)), (0, (1, 3)))
# Matplotlib writes its version and home page URL into PNG metadata by default.
# Dropping it keeps the files byte-identical across matplotlib versions and keeps
# URLs out of the HTML page that embeds them.
PNG_METADATA = {"Software": None}


def _label_epoch_axes(axes: plt.Axes, ylabel: str) -> None:
    axes.set_xlabel("epoch")
    axes.xaxis.set_major_locator(MaxNLocator(integer=True))
    axes.set_ylabel(ylabel)
    axes.grid(alpha=0.3)


def _save_figure(figure: plt.Figure, path: Path) -> None:
    try:
        figure.savefig(path, dpi=100, metadata=PNG_METADATA)
    finally:
        plt.close(figure)


def plot_run_curves(run: RunRecord, path: Path) -> None:
    """Plot a run's train and test accuracy per epoch, with the published test curve if any."""
    history = run.history
    figure, axes = plt.subplots(figsize=(6.4, 4.2))
    axes.plot(history["epoch"], history["train_accuracy"] * 100, marker="o", markersize=3,
              label="train (ours)")
    axes.plot(history["epoch"], history["test_accuracy"] * 100, marker="o", markersize=3,
              label="test (ours)")
    published = PUBLISHED_TEST_CURVES.get((run.variant, run.steps))
    if published is not None:
        axes.plot(range(1, len(published) + 1), published, linestyle="--", color="gray",
                  label="test (published)")

    title = run.name
    if run.status != FINISHED:
        title += f" ({run.status})"
    if run.uses_subset:
        title += f" [{run.subset_text}]"
    axes.set_title(title)
    _label_epoch_axes(axes, "accuracy (%)")
    axes.legend()
    figure.tight_layout()
    _save_figure(figure, path)


def plot_gap(runs: Sequence[RunRecord], path: Path) -> None:
    """Plot train minus test accuracy per epoch for every run with a history.

    Colour shows the variant and line style the number of time steps; non-spiking
    variants are solid.
    """
    plotted = [run for run in runs if run.history is not None and not run.history.empty]
    steps_values = sorted({run.steps for run in plotted if run.steps is not None})
    linestyles = {steps: STEP_LINESTYLES[i % len(STEP_LINESTYLES)]
                  for i, steps in enumerate(steps_values)}

    figure, axes = plt.subplots(figsize=(8, 5))
    for run in plotted:
        gap = (run.history["train_accuracy"] - run.history["test_accuracy"]) * 100
        label = run.name if run.status == FINISHED else f"{run.name} ({run.status})"
        axes.plot(run.history["epoch"], gap, label=label,
                  color=VARIANT_COLORS.get(run.variant),
                  linestyle=linestyles.get(run.steps, "-"))
    if plotted:
        axes.legend(fontsize="small", ncol=2)
    else:
        axes.text(0.5, 0.5, "no training history found", ha="center", va="center",
                  transform=axes.transAxes)
    axes.axhline(0, color="black", linewidth=0.8)
    axes.set_title("Overfitting gap: train minus test accuracy")
    _label_epoch_axes(axes, "gap (percentage points)")
    figure.tight_layout()
    _save_figure(figure, path)


def render_figures(runs: Sequence[RunRecord], folder: Path) -> list[str]:
    """Write the gap figure and one curves figure per run with a history, returning the names."""
    names = [GAP_FIGURE]
    plot_gap(runs, folder / GAP_FIGURE)
    for run in runs:
        if run.history is None or run.history.empty:
            log.info("run %s has no training history; skipping its curves figure", run.name)
            continue
        name = f"curves-{run.name}.png"
        plot_run_curves(run, folder / name)
        names.append(name)
    return names
