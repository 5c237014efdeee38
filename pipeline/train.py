"""DVC stage: train every run of one variant (each seed, and each step count if it spikes).

Writes models/<variant>/<run>.pt, metrics/history/<variant>/<run>.csv and
metrics/runs/<variant>/<run>.json, and logs
one MLflow run per run. Interrupted runs resume from their last finished epoch.
"""

import argparse
import logging
import shutil
from pathlib import Path

from altnn.config import VARIANTS
from altnn.data import DataError, load_prepared
from altnn.experiment import RunPaths, train_run
from altnn.tracking import Tracker
from altnn.training import resolve_device
from pipeline.common import load_params, run_stage

log = logging.getLogger(__name__)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m pipeline.train", description=__doc__,
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("variant", choices=VARIANTS, help="which network to train")
    parser.add_argument("--data", type=Path, default=Path("data/prepared"), help="prepared tensors")
    parser.add_argument("--models", type=Path, default=Path("models"), help="checkpoint folder")
    parser.add_argument("--metrics", type=Path, default=Path("metrics"), help="metrics folder")
    return parser.parse_args()


def reset_folder(path: Path) -> None:
    """Empty a stage output folder, so it holds only the runs of this invocation."""
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True)


def main() -> None:
    args = parse_args()
    config = load_params()
    runs = config.runs(args.variant)
    device = resolve_device(config.train.device)
    data = load_prepared(args.data)

    models_dir = args.models / args.variant
    history_dir = args.metrics / "history" / args.variant
    summary_dir = args.metrics / "runs" / args.variant
    for folder in (models_dir, history_dir, summary_dir):
        reset_folder(folder)
    log.info("training %d run(s) of %s on %s: %s", len(runs), args.variant, device,
             ", ".join(run.name for run in runs))
    for run in runs:
        paths = RunPaths.for_run(run, models_dir, history_dir, summary_dir,
                                 args.models / ".resume" / args.variant)
        tracker = Tracker(config.tracking.experiment)
        status = train_run(run, data, paths, tracker, device)
        log.info("%s: %s", run.name, status)


if __name__ == "__main__":
    run_stage(main, (DataError,))
