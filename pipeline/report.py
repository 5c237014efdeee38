"""DVC stage: compare the trained runs with the published study.

Reads the history, summary and evaluation files under the metrics folder and writes
comparison.csv, comparison.md, figures/ and index.html to the output folder. It takes
no parameters from params.yaml.
"""

import argparse
import logging
from collections.abc import Sequence
from pathlib import Path

from altnn.report import ReportInputError, RunRecord, load_runs, write_reports
from pipeline.common import run_stage

log = logging.getLogger(__name__)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m pipeline.report", description=__doc__,
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--metrics", type=Path, default=Path("metrics"),
                        help="folder the train and evaluate stages write to")
    parser.add_argument("--out", type=Path, default=Path("reports"),
                        help="folder for the table, figures and HTML page")
    return parser.parse_args(argv)


def read_runs(metrics_dir: Path, out_dir: Path) -> list[RunRecord]:
    """Load every run, adding to a malformed-file error what the user should do."""
    if not metrics_dir.is_dir():
        log.warning("metrics folder %s not found; every row will read 'not trained'", metrics_dir)
    try:
        return load_runs(metrics_dir)
    except ReportInputError as error:
        raise ReportInputError(
            error.path,
            f"{error.problem}. Re-run `dvc repro` to regenerate the file, or delete it if its "
            f"run no longer exists. The reports in {out_dir} were left unchanged.") from error


def log_run_counts(runs: Sequence[RunRecord]) -> None:
    counts: dict[str, int] = {}
    for run in runs:
        counts[run.status] = counts.get(run.status, 0) + 1
    listing = ", ".join(f"{count} {status}" for status, count in counts.items()) or "none"
    log.info("found %d runs: %s", len(runs), listing)


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    runs = read_runs(args.metrics, args.out)
    log_run_counts(runs)
    write_reports(runs, args.out)


if __name__ == "__main__":
    run_stage(main, (ReportInputError,))
