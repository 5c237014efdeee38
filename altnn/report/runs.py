"""Read and validate the metrics folder of the trained runs.

Reads the files under a metrics folder, any of which may be missing:

- `history/<variant>/<run>.csv`: one row per finished epoch, with at least `epoch`
  (1-based), `train_accuracy` and `test_accuracy` as fractions in [0, 1].
- `runs/<variant>/<run>.json`: the run summary (status, epochs, recipe, readout,
  data subsets).
- `eval/<variant>.json`: final accuracies, tie rate, operation counts and energy
  estimates, keyed by run name.
"""

import json
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from altnn.config import SPIKING_VARIANTS, VARIANTS

FINISHED = "finished"
DIVERGED = "diverged"
INCOMPLETE = "incomplete"
NOT_TRAINED = "not trained"
RUN_STATUSES = (FINISHED, DIVERGED)

RUN_NAME = re.compile(r"^(?P<variant>[a-z][a-z0-9_]*)(?:-t(?P<steps>[1-9][0-9]*))?-s(?P<seed>[0-9]+)$")
HISTORY_COLUMNS = ("epoch", "train_accuracy", "test_accuracy")
EVAL_METRICS = ("train_accuracy", "test_accuracy")
EVAL_OPTIONAL_NUMBERS = ("gap", "macs_per_image", "energy_pj_per_image", "test_tie_rate")


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


def _variant_dirs(folder: Path) -> list[Path]:
    return sorted(path for path in folder.iterdir() if path.is_dir()) if folder.is_dir() else []


def load_runs(metrics_dir: Path | str) -> list[RunRecord]:
    """Read and validate every run under a metrics folder, in table order.

    Raises ReportInputError on the first file that is malformed.
    """
    metrics_dir = Path(metrics_dir)
    runs: dict[str, RunRecord] = {}

    for variant_dir in _variant_dirs(metrics_dir / "runs"):
        for path in sorted(variant_dir.glob("*.json")):
            run = _get_run(runs, path.stem, variant_dir.name, path)
            run.summary = _load_summary(path, run)
    for variant_dir in _variant_dirs(metrics_dir / "history"):
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
