"""Build the comparison table and render it as CSV and Markdown."""

import math
from collections.abc import Iterable, Sequence
from typing import Any

import pandas as pd

from altnn.config import VARIANTS
from altnn.report.runs import DIVERGED, FINISHED, INCOMPLETE, NOT_TRAINED, RunRecord
from altnn.study import PUBLISHED_RESULTS, SOURCE, find_published_result

CSV_COLUMNS = (
    "variant", "steps", "seeds", "status",
    "train_pct", "train_pct_std", "test_pct", "test_pct_std",
    "published_train_pct", "published_test_pct", "test_diff_pp",
    "final_gap_pp", "published_gap_pp", "gap_change_pp",
    "best_test_epoch", "best_test_pct",
    "tie_rate_pct", "macs_per_image", "energy_pj_per_image",
    "epochs", "recipe", "readout", "data",
)


def _mean_std(values: Sequence[float]) -> tuple[float | None, float | None]:
    """Return the mean and, for two or more values, the sample standard deviation (n - 1)."""
    if not values:
        return None, None
    series = pd.Series(values, dtype=float)
    std = float(series.std(ddof=1)) if len(series) > 1 else None
    return float(series.mean()), std


def _mean(values: Iterable[float | None]) -> float | None:
    present = [value for value in values if value is not None]
    return sum(present) / len(present) if present else None


def _status_text(runs: Sequence[RunRecord]) -> str:
    """Return one status for a row: a single run status or the count of each."""
    if not runs:
        return NOT_TRAINED
    counts = {status: sum(run.status == status for run in runs)
              for status in (FINISHED, DIVERGED, INCOMPLETE)}
    present = {status: count for status, count in counts.items() if count}
    if len(present) == 1:
        return next(iter(present))
    return "mixed: " + ", ".join(f"{count} {status}" for status, count in present.items())


def _inactive_keys(recipe: dict[str, Any]) -> set[str]:
    """Return the recipe keys that have no effect with the recipe's optimizer and schedule."""
    inactive = set()
    if recipe.get("optimizer") not in (None, "sgd"):
        inactive.add("momentum")  # Adam and AdamW take no momentum setting
    if recipe.get("schedule") == "none":
        inactive.add("warmup_fraction")
    return inactive


def describe_recipe(recipe: dict[str, Any] | None) -> str:
    """Format a recipe as `key=value` pairs in file order, such as `optimizer=adam; lr=0.001`.

    Settings that do nothing with the chosen optimizer or schedule are left out.
    """
    if not recipe:
        return ""
    inactive = _inactive_keys(recipe)
    parts = []
    for key, value in recipe.items():
        if key in inactive:
            continue
        if isinstance(value, (list, tuple)):
            value = ",".join(str(item) for item in value) or "none"
        elif isinstance(value, float):
            value = f"{value:g}"
        parts.append(f"{key}={value}")
    return "; ".join(parts)


def _distinct_text(values: Iterable[str]) -> str:
    """Join the distinct non-empty values in first-seen order, because seeds may differ."""
    distinct = list(dict.fromkeys(value for value in values if value))
    return " | ".join(distinct)


def _epochs_text(run: RunRecord) -> str:
    summary = run.summary or {}
    done = summary.get("epochs_done")
    if done is None and run.history is not None and not run.history.empty:
        done = int(run.history["epoch"].iloc[-1])
    planned = summary.get("epochs")
    if done is None:
        return ""
    return f"{done}/{planned}" if planned is not None else str(done)


def _history_gap_change(run: RunRecord) -> float | None:
    """Return the final-epoch gap minus the first-epoch gap, in percentage points."""
    history = run.history
    if history is None or len(history) < 2:
        return None
    gap = (history["train_accuracy"] - history["test_accuracy"]) * 100
    first, last = gap.iloc[0], gap.iloc[-1]
    if math.isnan(first) or math.isnan(last):
        return None
    return float(last - first)


def _best_test_epoch(runs: Sequence[RunRecord]) -> tuple[int | None, float | None]:
    """Return the epoch with the highest seed-mean test accuracy and that accuracy in %."""
    frames = [run.history for run in runs if run.history is not None and not run.history.empty]
    if not frames:
        return None, None
    mean_test = pd.concat(frames).groupby("epoch")["test_accuracy"].mean().dropna()
    if mean_test.empty:
        return None, None
    return int(mean_test.idxmax()), float(mean_test.max() * 100)


def _round(value: float | None, digits: int = 2) -> float | None:
    return None if value is None else round(value, digits)


def build_comparison(runs: Sequence[RunRecord]) -> list[dict[str, Any]]:
    """Return one table row per (variant, steps) of the study or of the runs, keyed by CSV_COLUMNS.

    Accuracies are in percent and differences in percentage points. Means cover the
    finished seeds only, and rows without one hold None in every number column.
    """
    keys = {(result.variant, result.steps) for result in PUBLISHED_RESULTS}
    keys |= {(run.variant, run.steps) for run in runs}
    ordered_keys = sorted(keys, key=lambda key: (VARIANTS.index(key[0]), key[1] or 0))
    return [_build_row(variant, steps, [run for run in runs
                                         if (run.variant, run.steps) == (variant, steps)])
            for variant, steps in ordered_keys]


def _build_row(variant: str, steps: int | None, runs: Sequence[RunRecord]) -> dict[str, Any]:
    published = find_published_result(variant, steps)
    finished = [run for run in runs if run.final_accuracies() is not None]
    finals = [run.final_accuracies() for run in finished]
    train_mean, train_std = _mean_std([train * 100 for train, _ in finals])
    test_mean, test_std = _mean_std([test * 100 for _, test in finals])
    final_gap = _mean([(train - test) * 100 for train, test in finals])
    best_epoch, best_test = _best_test_epoch(finished)
    evaluations = [run.evaluation or {} for run in finished]
    tie_rate = _mean(entry.get("test_tie_rate") for entry in evaluations)
    on_subset = any(run.uses_subset for run in finished)

    return {
        "variant": variant,
        "steps": steps,
        "seeds": len(runs),
        "status": _status_text(runs),
        "train_pct": _round(train_mean),
        "train_pct_std": _round(train_std),
        "test_pct": _round(test_mean),
        "test_pct_std": _round(test_std),
        "published_train_pct": published.train_accuracy if published else None,
        "published_test_pct": published.test_accuracy if published else None,
        # A subset run is not comparable with the published full-data run.
        "test_diff_pp": _round(test_mean - published.test_accuracy
                               if published and test_mean is not None and not on_subset
                               else None),
        "final_gap_pp": _round(final_gap),
        "published_gap_pp": _round(published.gap) if published else None,
        "gap_change_pp": _round(_mean(_history_gap_change(run) for run in finished)),
        "best_test_epoch": best_epoch,
        "best_test_pct": _round(best_test),
        "tie_rate_pct": _round(tie_rate * 100 if tie_rate is not None else None),
        "macs_per_image": _mean(entry.get("macs_per_image") for entry in evaluations),
        "energy_pj_per_image": _mean(entry.get("energy_pj_per_image") for entry in evaluations),
        "epochs": _distinct_text(_epochs_text(run) for run in runs),
        "recipe": _distinct_text(describe_recipe((run.summary or {}).get("recipe")) for run in runs),
        "readout": _distinct_text((run.summary or {}).get("readout") or "" for run in runs),
        "data": _distinct_text(run.subset_text for run in runs),
    }


def render_csv(rows: Sequence[dict[str, Any]]) -> str:
    """Render the table as CSV with the columns of CSV_COLUMNS. Empty cells mean no value."""
    frame = pd.DataFrame(list(rows), columns=list(CSV_COLUMNS))
    frame["steps"] = frame["steps"].astype("Int64")
    frame["best_test_epoch"] = frame["best_test_epoch"].astype("Int64")
    return frame.to_csv(index=False, lineterminator="\n")


# Formatting for people: Markdown and HTML share the cells

DISPLAY_COLUMNS = (
    "Variant", "T", "Seeds", "Train %", "Test %", "Published train %", "Published test %",
    "Δ test (pp)", "Final gap (pp)", "Published gap (pp)", "Gap change (pp)",
    "Best test epoch", "Tie rate %", "MACs/image", "Energy/image (estimate)",
    "Epochs", "Recipe", "Readout", "Data", "Status",
)
NO_VALUE = "—"


def _format_number(value: float | None, pattern: str = "{:.2f}") -> str:
    return NO_VALUE if value is None else pattern.format(value)


def _format_accuracy(mean: float | None, std: float | None, status: str) -> str:
    if mean is None:
        return status if status in (NOT_TRAINED, DIVERGED, INCOMPLETE) else NO_VALUE
    return f"{mean:.2f} ± {std:.2f}" if std is not None else f"{mean:.2f}"


def _format_energy(picojoules: float | None) -> str:
    if picojoules is None:
        return NO_VALUE
    for scale, unit in ((1e6, "µJ"), (1e3, "nJ")):
        if picojoules >= scale:
            return f"{picojoules / scale:.2f} {unit}"
    return f"{picojoules:.2f} pJ"


def display_cells(row: dict[str, Any]) -> list[str]:
    """Format one table row for the Markdown and HTML tables, in DISPLAY_COLUMNS order."""
    best_epoch = row["best_test_epoch"]
    macs = row["macs_per_image"]
    return [
        row["variant"],
        str(row["steps"]) if row["steps"] is not None else NO_VALUE,
        str(row["seeds"]),
        _format_accuracy(row["train_pct"], row["train_pct_std"], row["status"]),
        _format_accuracy(row["test_pct"], row["test_pct_std"], row["status"]),
        _format_number(row["published_train_pct"]),
        _format_number(row["published_test_pct"]),
        _format_number(row["test_diff_pp"], "{:+.2f}"),
        _format_number(row["final_gap_pp"]),
        _format_number(row["published_gap_pp"]),
        _format_number(row["gap_change_pp"], "{:+.2f}"),
        NO_VALUE if best_epoch is None else f"{best_epoch} ({row['best_test_pct']:.2f})",
        _format_number(row["tie_rate_pct"]),
        NO_VALUE if macs is None else f"{macs / 1e6:.2f} M",
        _format_energy(row["energy_pj_per_image"]),
        row["epochs"] or NO_VALUE,
        row["recipe"] or NO_VALUE,
        row["readout"] or NO_VALUE,
        row["data"] or NO_VALUE,
        row["status"],
    ]


TITLE = "altnn: Fashion-MNIST results against the published study"
HEADER_LINE = ("One row per variant and number of time steps T. Accuracies are in %, "
               "differences and gaps in percentage points (pp).")
SUBSET_WARNING = ("Some rows used a data subset (see the Data column). They are quick runs "
                  "and cannot be compared with the published full-data results.")
NOTES = (
    ("Final epoch: the model after its last completed training epoch, with no best-epoch "
     "selection. Its accuracies come from the evaluation file (eval/<variant>.json) when "
     "present, otherwise from the last row of the training history. The published values "
     "are final-epoch values after 12 epochs."),
    ("Train % and Test %: mean over the finished seeds, ± the sample standard deviation "
     "when more than one seed finished. Diverged and incomplete seeds are left out of "
     "every number and counted in Status."),
    ("Δ test: our test accuracy minus the published one, left empty for rows trained or "
     "tested on a subset. Final gap: train minus test "
     "accuracy at the final epoch. Gap change: the final-epoch gap minus the first-epoch "
     "gap in the training history, so a positive value means the gap grew."),
    ("Best test epoch: the epoch with the highest seed-mean test accuracy in the training "
     "history, with that accuracy in brackets."),
    ("Tie rate: the share of test images whose top output score is tied between classes, "
     "as stored in the evaluation file."),
    ("Energy per image is an estimate from operation counts: it ignores data movement "
     "(memory reads and writes), so use it to compare variants, not as a hardware "
     "measurement."),
    ("Claim under test: spiking networks keep a narrow train-test gap while the ConvNet "
     "and the AdderNet overfit with a gap that grows over the epochs. Compare the gap "
     "columns and the gap figure."),
    f"Published numbers: {SOURCE}.",
)


def any_subset(rows: Sequence[dict[str, Any]]) -> bool:
    return any("subset:" in row["data"] for row in rows)


def _escape_markdown_cell(text: str) -> str:
    return text.replace("|", "\\|")


def render_markdown(rows: Sequence[dict[str, Any]]) -> str:
    """Render the table as Markdown with a header line above and notes below."""
    lines = [f"# {TITLE}", "", HEADER_LINE, ""]
    if any_subset(rows):
        lines += [f"**Warning: {SUBSET_WARNING}**", ""]
    lines.append("| " + " | ".join(DISPLAY_COLUMNS) + " |")
    lines.append("|" + "---|" * len(DISPLAY_COLUMNS))
    for row in rows:
        cells = [_escape_markdown_cell(cell) for cell in display_cells(row)]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "Notes:", ""]
    lines += [f"- {note}" for note in NOTES]
    return "\n".join(lines) + "\n"
