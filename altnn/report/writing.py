"""Write the reports to an output folder without leaving half-written files.

Writes `comparison.csv`, `comparison.md`, `figures/` and `index.html` to an output
folder. `write_reports` renders everything before it replaces anything. It writes each
file to a temporary file in the same folder and renames it over the old one, so an
interrupted render leaves no half-written file. It rebuilds `figures/` in a temporary
folder and swaps it in, so figures of runs that no longer exist disappear.
"""

import logging
import os
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path

from altnn.io import write_text
from altnn.report.figures import render_figures
from altnn.report.html import render_html
from altnn.report.runs import RunRecord
from altnn.report.table import build_comparison, render_csv, render_markdown

log = logging.getLogger(__name__)

FIGURES_DIR = "figures"


def _remove_leftovers(out_dir: Path) -> None:
    """Delete temporary files and folders that an interrupted render left behind."""
    for path in out_dir.glob(f".{FIGURES_DIR}-*"):
        shutil.rmtree(path, ignore_errors=True)
    # altnn.io names its temporary files `.<name>.<random>.partial`. Earlier versions of
    # this module used `.tmp`, so those are removed too.
    for pattern in (".*.partial", ".*.tmp"):
        for path in out_dir.glob(pattern):
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
    staging.chmod(0o755)  # mkdtemp creates folders as 0700, which hides the figures from others
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
        write_text(out_dir / name, text)
    log.info("wrote %d table rows and %d figures to %s", len(rows), len(figure_names), out_dir)
    return [out_dir / name for name in outputs] + [out_dir / FIGURES_DIR / name
                                                   for name in figure_names]
