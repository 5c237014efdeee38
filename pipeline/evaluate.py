"""DVC stage: final metrics of every run of one variant, from its checkpoints.

Writes metrics/eval/<variant>.json (DVC metrics: one entry per run) and
metrics/details/<variant>/<run>.json (per-class accuracy, confusion matrix, operation
counts and spike rates).
"""

import argparse
import logging
import shutil
from pathlib import Path

from altnn.config import VARIANTS
from altnn.data import DataError, load_prepared
from altnn.evaluation import CheckpointError, evaluate_checkpoint, load_checkpoint
from altnn.io import write_json
from altnn.training import resolve_device
from pipeline.common import load_params, run_stage

log = logging.getLogger(__name__)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m pipeline.evaluate", description=__doc__,
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("variant", choices=VARIANTS, help="which network to evaluate")
    parser.add_argument("--data", type=Path, default=Path("data/prepared"), help="prepared tensors")
    parser.add_argument("--models", type=Path, default=Path("models"), help="checkpoint folder")
    parser.add_argument("--metrics", type=Path, default=Path("metrics"), help="metrics folder")
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    config = load_params()
    device = resolve_device(config.train.device)
    checkpoints = sorted((args.models / args.variant).glob("*.pt"))
    if not checkpoints:
        raise CheckpointError(f"{args.models / args.variant}: no checkpoints; run "
                              f"`dvc repro` to train {args.variant} first")
    loaded = [load_checkpoint(path, args.variant) for path in checkpoints]  # fail before changing anything
    data = load_prepared(args.data)

    results = {}
    for checkpoint in loaded:
        results[checkpoint["run"]] = evaluate_checkpoint(checkpoint, data, device,
                                                         config.train.eval_batch_size)
        summary = results[checkpoint["run"]][0]
        log.info("%s: %s", checkpoint["run"], ", ".join(
            f"{key} {value:.4g}" if isinstance(value, float) else f"{key} {value}"
            for key, value in summary.items()))

    details_dir = args.metrics / "details" / args.variant
    shutil.rmtree(details_dir, ignore_errors=True)
    for run_name, (_, details) in results.items():
        write_json(details_dir / f"{run_name}.json", details)
    write_json(args.metrics / "eval" / f"{args.variant}.json",
               {run_name: summary for run_name, (summary, _) in results.items()})


if __name__ == "__main__":
    run_stage(main, (DataError, CheckpointError))
