"""Render the comparison of trained runs against the published study.

- `runs`: read and validate the metrics folder.
- `table`: build the comparison table and render it as CSV and Markdown.
- `figures`: draw the PNG figures.
- `html`: render the offline HTML page.
- `writing`: write all outputs to the report folder atomically.

Importing this package selects matplotlib's non-interactive Agg backend.
"""

from altnn.report.figures import plot_gap, plot_run_curves, render_figures
from altnn.report.html import render_html
from altnn.report.runs import (
    DIVERGED,
    FINISHED,
    INCOMPLETE,
    NOT_TRAINED,
    ReportInputError,
    RunRecord,
    load_runs,
    parse_run_name,
)
from altnn.report.table import CSV_COLUMNS, build_comparison, describe_recipe, render_csv, render_markdown
from altnn.report.writing import write_reports

__all__ = [
    "CSV_COLUMNS",
    "DIVERGED",
    "FINISHED",
    "INCOMPLETE",
    "NOT_TRAINED",
    "ReportInputError",
    "RunRecord",
    "build_comparison",
    "describe_recipe",
    "load_runs",
    "parse_run_name",
    "plot_gap",
    "plot_run_curves",
    "render_csv",
    "render_figures",
    "render_html",
    "render_markdown",
    "write_reports",
]
