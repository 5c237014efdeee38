"""DVC stage: decode the IDX files into tensors under data/prepared/, with optional subsets."""

import argparse
import logging
from pathlib import Path

from altnn.data import DataError, prepare
from pipeline.common import load_params, run_stage

log = logging.getLogger(__name__)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m pipeline.preprocess", description=__doc__,
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--raw", type=Path, default=Path("data/raw"), help="folder of the IDX files")
    parser.add_argument("--out", type=Path, default=Path("data/prepared"), help="folder for the tensors")
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    config = load_params()
    summary = prepare(args.raw, args.out, config.data)
    log.info("prepared %d train and %d test images (normalization mean %g, std %g)",
             summary["train_size"], summary["test_size"], summary["mean"], summary["std"])


if __name__ == "__main__":
    run_stage(main, (DataError,))
