"""Render the comparison of trained runs against the published study.

Reads the files under a metrics folder, any of which may be missing:

- `history/<variant>/<run>.csv`: one row per finished epoch, with at least `epoch`
  (1-based), `train_accuracy` and `test_accuracy` as fractions in [0, 1].
- `history/<variant>/<run>.json`: the run summary (status, epochs, recipe, readout,
  data subsets).
- `eval/<variant>.json`: final accuracies, tie rate, operation counts and energy
  estimates, keyed by run name.

Writes `comparison.csv`, `comparison.md`, `figures/` and `index.html` to an output
folder. `write_reports` renders everything before it replaces anything. It writes each
file to a temporary file in the same folder and renames it over the old one, so an
interrupted render leaves no half-written file. It rebuilds `figures/` in a temporary
folder and swaps it in, so figures of runs that no longer exist disappear.
"""

import base64
import html
import json
import logging
import math
import os
import re
import shutil
import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import matplotlib

# Select the non-interactive backend before pyplot is imported, so plotting works
# without a display whatever the DISPLAY and MPLBACKEND environment variables contain.
matplotlib.use("Agg")

import matplotlib.pyplot as plt
import pandas as pd
from matplotlib.ticker import MaxNLocator

from altnn.config import SPIKING_VARIANTS, VARIANTS
from altnn.study import (
    PUBLISHED_RESULTS,
    PUBLISHED_TEST_CURVES,
    SOURCE,
    find_published_result,
)

log = logging.getLogger(__name__)

FINISHED = "finished"
DIVERGED = "diverged"
INCOMPLETE = "incomplete"
NOT_TRAINED = "not trained"
RUN_STATUSES = (FINISHED, DIVERGED)

RUN_NAME = re.compile(r"^(?P<variant>[a-z][a-z0-9_]*)(?:-t(?P<steps>[1-9][0-9]*))?-s(?P<seed>[0-9]+)$")
HISTORY_COLUMNS = ("epoch", "train_accuracy", "test_accuracy")
EVAL_METRICS = ("train_accuracy", "test_accuracy")
EVAL_OPTIONAL_NUMBERS = ("gap", "macs_per_image", "energy_pj_per_image", "test_tie_rate")

CSV_COLUMNS = (
    "variant", "steps", "seeds", "status",
    "train_pct", "train_pct_std", "test_pct", "test_pct_std",
    "published_train_pct", "published_test_pct", "test_diff_pp",
    "final_gap_pp", "published_gap_pp", "gap_change_pp",
    "best_test_epoch", "best_test_pct",
    "tie_rate_pct", "macs_per_image", "energy_pj_per_image",
    "epochs", "recipe", "readout", "data",
)

FIGURES_DIR = "figures"
GAP_FIGURE = "gap.png"
VARIANT_COLORS = {"convnet": "tab:blue", "addernet": "tab:orange",
                  "snn": "tab:green", "snn_adder": "tab:red"}
STEP_LINESTYLES = ("--", "-.", ":", (0, (5, 1)), (0, (3, 1, 1, 1, 1, 1)), (0, (1, 3)))
# Matplotlib writes its version and home page URL into PNG metadata by default.
# Dropping it keeps the files byte-identical across matplotlib versions and keeps
# URLs out of the HTML page that embeds them.
PNG_METADATA = {"Software": None}


class ReportInputError(ValueError):
    """A metrics file that cannot be read: the message names the file and the problem."""

    def __init__(self, path: Path, problem: str) -> None:
        super().__init__(f"{path}: {problem}")
        self.path = path
        self.problem = problem


@dataclass
class RunRecord:
    """Everything the metrics folder stores about one training run."""

    name: str
    variant: str
    steps: int | None
    seed: int
    summary: dict[str, Any] | None = None
    history: pd.DataFrame | None = None
    evaluation: dict[str, Any] | None = None

    @property
    def status(self) -> str:
        """Return the run status: `diverged` if the summary or the evaluation records it,
        else `finished` if one of them records it, else `incomplete`.

        A run with only a history CSV is still training or was interrupted.
        """
        statuses = {source["status"] for source in (self.summary, self.evaluation) if source}
        if DIVERGED in statuses:
            return DIVERGED
        if FINISHED in statuses:
            return FINISHED
        return INCOMPLETE

    @property
    def subset_text(self) -> str:
        """Describe the training and test data the run used: full, a subset or unknown."""
        sources = [source for source in (self.summary, self.evaluation) if source]
        if not any("train_subset" in source or "test_subset" in source for source in sources):
            return "unknown"
        train_subset = next((s["train_subset"] for s in sources
                             if s.get("train_subset") is not None), None)
        test_subset = next((s["test_subset"] for s in sources
                            if s.get("test_subset") is not None), None)
        if train_subset is None and test_subset is None:
            return "full"
        train_part = "full train" if train_subset is None else f"train {train_subset}"
        test_part = "full test" if test_subset is None else f"test {test_subset}"
        return f"subset: {train_part}, {test_part}"

    @property
    def uses_subset(self) -> bool:
        return self.subset_text.startswith("subset")

    def final_accuracies(self) -> tuple[float, float] | None:
        """Return (train, test) accuracy fractions after the last epoch of a finished run.

        The evaluation file is preferred, and the last history row is the fallback.
        Runs that diverged or did not finish return None.
        """
        if self.status != FINISHED:
            return None
        if self.evaluation and self.evaluation.get("status") == FINISHED:
            return self.evaluation["train_accuracy"], self.evaluation["test_accuracy"]
        if self.history is not None and not self.history.empty:
            last = self.history.iloc[-1]
            if not (math.isnan(last["train_accuracy"]) or math.isnan(last["test_accuracy"])):
                return float(last["train_accuracy"]), float(last["test_accuracy"])
        return None


# Reading and validating the metrics folder


def parse_run_name(name: str, path: Path) -> tuple[str, int | None, int]:
    """Split a run name such as `snn_adder-t20-s0` into (variant, steps, seed)."""
    match = RUN_NAME.match(name)
    if match is None:
        raise ReportInputError(path, f"invalid run name {name!r}; expected <variant>-s<seed> "
                               "or <variant>-t<steps>-s<seed>, such as convnet-s0 or snn-t5-s0")
    variant = match["variant"]
    steps = int(match["steps"]) if match["steps"] else None
    if variant not in VARIANTS:
        raise ReportInputError(path, f"run {name!r} has unknown variant {variant!r}; known "
                               f"variants: {', '.join(VARIANTS)}. Delete the file if the "
                               "variant no longer exists")
    if (variant in SPIKING_VARIANTS) != (steps is not None):
        expected = "needs" if variant in SPIKING_VARIANTS else "must not have"
        raise ReportInputError(path, f"run {name!r}: variant {variant!r} {expected} a -t<steps> "
                               "part in its name")
    return variant, steps, int(match["seed"])


def load_runs(metrics_dir: Path | str) -> list[RunRecord]:
    """Read and validate every run under a metrics folder, in table order.

    Raises ReportInputError on the first file that is malformed.
    """
    metrics_dir = Path(metrics_dir)
    runs: dict[str, RunRecord] = {}

    history_dir = metrics_dir / "history"
    variant_dirs = sorted(p for p in history_dir.iterdir() if p.is_dir()) if history_dir.is_dir() else []
    for variant_dir in variant_dirs:
        for path in sorted(variant_dir.glob("*.json")):
            run = _get_run(runs, path.stem, variant_dir.name, path)
            run.summary = _load_summary(path, run)
        for path in sorted(variant_dir.glob("*.csv")):
            run = _get_run(runs, path.stem, variant_dir.name, path)
            run.history = _load_history(path)

    eval_dir = metrics_dir / "eval"
    eval_files = sorted(eval_dir.glob("*.json")) if eval_dir.is_dir() else []
    for path in eval_files:
        for name, entry in _load_evaluation(path).items():
            _get_run(runs, name, path.stem, path).evaluation = entry

    return sorted(runs.values(), key=_run_sort_key)


def _run_sort_key(run: RunRecord) -> tuple[int, int, int]:
    return VARIANTS.index(run.variant), run.steps or 0, run.seed


def _get_run(runs: dict[str, RunRecord], name: str, variant: str, path: Path) -> RunRecord:
    """Return the record of run `name`, creating it, after checking it belongs to `variant`."""
    if name in runs:
        return runs[name]
    parsed_variant, steps, seed = parse_run_name(name, path)
    if parsed_variant != variant:
        raise ReportInputError(path, f"run {name!r} belongs to variant {parsed_variant!r} but is "
                               f"stored under variant {variant!r}; move or delete the file")
    runs[name] = RunRecord(name=name, variant=variant, steps=steps, seed=seed)
    return runs[name]


def _read_json(path: Path) -> Any:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise ReportInputError(path, f"cannot read the file: {error}") from error
    try:
        return json.loads(text)
    except json.JSONDecodeError as error:
        raise ReportInputError(path, f"invalid JSON at line {error.lineno} column {error.colno} "
                               f"({error.msg}); the file is probably truncated") from error


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _is_count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _check_status(path: Path, where: str, record: Any) -> None:
    if not isinstance(record, dict):
        raise ReportInputError(path, f"{where}: expected a JSON object, got {type(record).__name__}")
    status = record.get("status")
    if status not in RUN_STATUSES:
        raise ReportInputError(path, f"{where}: invalid status {status!r}; expected "
                               f"{' or '.join(repr(s) for s in RUN_STATUSES)}")


def _load_summary(path: Path, run: RunRecord) -> dict[str, Any]:
    """Read a run summary and check the fields the report uses."""
    summary = _read_json(path)
    _check_status(path, "run summary", summary)

    expected = {"run": run.name, "variant": run.variant, "steps": run.steps, "seed": run.seed}
    for key, value in expected.items():
        if key in summary and summary[key] != value:
            raise ReportInputError(path, f"{key} is {summary[key]!r} but the file name gives "
                                   f"{value!r}; rename or regenerate the file")

    for key in ("epochs", "epochs_done", "train_subset", "test_subset"):
        value = summary.get(key)
        if value is not None and not _is_count(value):
            raise ReportInputError(path, f"{key}: invalid value {value!r}; expected a "
                                   "non-negative integer or null")
    if summary.get("recipe") is not None and not isinstance(summary["recipe"], dict):
        raise ReportInputError(path, f"recipe: invalid value {summary['recipe']!r}; expected "
                               "an object of training settings or null")
    if summary.get("readout") is not None and not isinstance(summary["readout"], str):
        raise ReportInputError(path, f"readout: invalid value {summary['readout']!r}; expected "
                               "a string or null")
    return summary


def _load_history(path: Path) -> pd.DataFrame:
    """Read a per-epoch history CSV and return its epoch and accuracy columns."""
    try:
        frame = pd.read_csv(path)
    except (OSError, UnicodeDecodeError, pd.errors.ParserError, pd.errors.EmptyDataError) as error:
        raise ReportInputError(path, f"invalid CSV: {error}") from error

    missing = [column for column in HISTORY_COLUMNS if column not in frame.columns]
    if missing:
        raise ReportInputError(path, f"missing column(s) {', '.join(missing)}; the header must "
                               f"contain {', '.join(HISTORY_COLUMNS)}")
    for column in HISTORY_COLUMNS:
        if not pd.api.types.is_numeric_dtype(frame[column]):
            bad = frame[column][pd.to_numeric(frame[column], errors="coerce").isna()].iloc[0]
            raise ReportInputError(path, f"column {column} contains the non-numeric value {bad!r}")

    epochs = frame["epoch"]
    if epochs.isna().any() or (epochs % 1 != 0).any() or (epochs < 1).any():
        raise ReportInputError(path, "column epoch must contain whole numbers >= 1 in every row")
    if not epochs.is_monotonic_increasing or epochs.duplicated().any():
        raise ReportInputError(path, "column epoch must increase strictly from row to row; "
                               "the file may hold rows of two runs")
    for column in ("train_accuracy", "test_accuracy"):
        outside = frame[column][(frame[column] < 0) | (frame[column] > 1)]
        if not outside.empty:
            raise ReportInputError(path, f"column {column} has the value {outside.iloc[0]:g}, "
                                   "outside [0, 1]; accuracies must be fractions, not percent")

    history = frame[list(HISTORY_COLUMNS)].astype(float)
    history["epoch"] = history["epoch"].astype(int)
    return history


def _load_evaluation(path: Path) -> dict[str, dict[str, Any]]:
    """Read one variant's evaluation file and check every run entry in it."""
    evaluation = _read_json(path)
    if not isinstance(evaluation, dict):
        raise ReportInputError(path, "expected a JSON object keyed by run name, got "
                               f"{type(evaluation).__name__}")
    for name, entry in evaluation.items():
        where = f"run {name!r}"
        _check_status(path, where, entry)
        if entry["status"] != FINISHED:
            continue
        for key in EVAL_METRICS:
            value = entry.get(key)
            if not _is_number(value) or not 0 <= value <= 1:
                raise ReportInputError(path, f"{where}: {key} is {value!r}; a finished run needs "
                                       "a fraction in [0, 1]")
        for key in EVAL_OPTIONAL_NUMBERS:
            value = entry.get(key)
            if value is not None and not _is_number(value):
                raise ReportInputError(path, f"{where}: {key} is {value!r}; expected a number "
                                       "or null")
        for key in ("train_subset", "test_subset"):
            value = entry.get(key)
            if value is not None and not _is_count(value):
                raise ReportInputError(path, f"{where}: {key} is {value!r}; expected a "
                                       "non-negative integer or null")
    return evaluation


# The comparison table


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


def describe_recipe(recipe: dict[str, Any] | None) -> str:
    """Format a recipe as `key=value` pairs in file order, such as `optimizer=adam; lr=0.001`."""
    if not recipe:
        return ""
    parts = []
    for key, value in recipe.items():
        if isinstance(value, (list, tuple)):
            value = ",".join(str(item) for item in value)
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
        "test_diff_pp": _round(test_mean - published.test_accuracy
                               if published and test_mean is not None else None),
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


def _display_cells(row: dict[str, Any]) -> list[str]:
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
    ("Δ test: our test accuracy minus the published one. Final gap: train minus test "
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


def _any_subset(rows: Sequence[dict[str, Any]]) -> bool:
    return any("subset:" in row["data"] for row in rows)


def _escape_markdown_cell(text: str) -> str:
    return text.replace("|", "\\|")


def render_markdown(rows: Sequence[dict[str, Any]]) -> str:
    """Render the table as Markdown with a header line above and notes below."""
    lines = [f"# {TITLE}", "", HEADER_LINE, ""]
    if _any_subset(rows):
        lines += [f"**Warning: {SUBSET_WARNING}**", ""]
    lines.append("| " + " | ".join(DISPLAY_COLUMNS) + " |")
    lines.append("|" + "---|" * len(DISPLAY_COLUMNS))
    for row in rows:
        cells = [_escape_markdown_cell(cell) for cell in _display_cells(row)]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "Notes:", ""]
    lines += [f"- {note}" for note in NOTES]
    return "\n".join(lines) + "\n"


HTML_STYLE = """
body { font-family: sans-serif; margin: 2em; color: #222; }
table { border-collapse: collapse; font-size: 0.85em; }
th, td { border: 1px solid #bbb; padding: 0.25em 0.5em; text-align: left; vertical-align: top; }
th { background: #eee; }
.warning { background: #fff3cd; border: 1px solid #e0c36c; padding: 0.5em; }
figure { display: inline-block; margin: 0.5em; }
img { max-width: 100%; }
"""


def render_html(rows: Sequence[dict[str, Any]], figures: Sequence[tuple[str, bytes]]) -> str:
    """Render one offline HTML page: the table, the notes and every figure as base64 PNG.

    `figures` pairs each file name with its PNG bytes. The page links to nothing, so it
    reads the same without a network.
    """
    parts = ["<!DOCTYPE html>", '<html lang="en">', "<head>", '<meta charset="utf-8">',
             f"<title>{html.escape(TITLE)}</title>", f"<style>{HTML_STYLE}</style>", "</head>",
             "<body>", f"<h1>{html.escape(TITLE)}</h1>", f"<p>{html.escape(HEADER_LINE)}</p>"]
    if _any_subset(rows):
        parts.append(f'<p class="warning">{html.escape(SUBSET_WARNING)}</p>')

    parts.append("<table>")
    parts.append("<tr>" + "".join(f"<th>{html.escape(name)}</th>" for name in DISPLAY_COLUMNS) + "</tr>")
    for row in rows:
        cells = "".join(f"<td>{html.escape(cell)}</td>" for cell in _display_cells(row))
        parts.append(f"<tr>{cells}</tr>")
    parts.append("</table>")
    parts.append("<ul>" + "".join(f"<li>{html.escape(note)}</li>" for note in NOTES) + "</ul>")

    parts.append("<h2>Figures</h2>")
    for name, png in figures:
        encoded = base64.b64encode(png).decode("ascii")
        caption = html.escape(name)
        parts.append(f'<figure><img alt="{caption}" src="data:image/png;base64,{encoded}">'
                     f"<figcaption>{caption}</figcaption></figure>")
    parts += ["</body>", "</html>"]
    return "\n".join(parts) + "\n"


# Figures


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


# Writing the output folder


def write_atomic(path: Path, data: str | bytes) -> None:
    """Write data to a temporary file next to `path`, then rename it over `path`."""
    payload = data.encode("utf-8") if isinstance(data, str) else data
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(handle, "wb") as file:
            file.write(payload)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def _remove_leftovers(out_dir: Path) -> None:
    """Delete temporary files and folders that an interrupted render left behind."""
    for path in out_dir.glob(f".{FIGURES_DIR}-*"):
        shutil.rmtree(path, ignore_errors=True)
    for path in out_dir.glob(".*.tmp"):
        path.unlink(missing_ok=True)


def _swap_folder(new_folder: Path, target: Path) -> None:
    """Replace `target` with `new_folder` by two renames, then delete the old folder.

    Between the renames `target` does not exist for a moment. NOTE: a crash there leaves
    the old figures in a `.figures-old-*` folder and no `figures/` until the next render.
    """
    old_folder = None
    if target.exists():
        old_folder = target.with_name(f".{target.name}-old-{os.getpid()}")
        shutil.rmtree(old_folder, ignore_errors=True)
        os.replace(target, old_folder)
    os.replace(new_folder, target)
    if old_folder is not None:
        shutil.rmtree(old_folder)


def write_reports(runs: Sequence[RunRecord], out_dir: Path | str) -> list[Path]:
    """Render the table, figures and HTML page into `out_dir` and return the written paths.

    Everything is rendered before any existing file is replaced.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    _remove_leftovers(out_dir)

    rows = build_comparison(runs)
    staging = Path(tempfile.mkdtemp(prefix=f".{FIGURES_DIR}-new-", dir=out_dir))
    try:
        figure_names = render_figures(runs, staging)
        figures = [(name, (staging / name).read_bytes()) for name in figure_names]
        outputs = {
            "comparison.csv": render_csv(rows),
            "comparison.md": render_markdown(rows),
            "index.html": render_html(rows, figures),
        }
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise

    _swap_folder(staging, out_dir / FIGURES_DIR)
    for name, text in outputs.items():
        write_atomic(out_dir / name, text)
    log.info("wrote %d table rows and %d figures to %s", len(rows), len(figure_names), out_dir)
    return [out_dir / name for name in outputs] + [out_dir / FIGURES_DIR / name
                                                   for name in figure_names]

