"""DVC stage: validate params.yaml before any other stage runs.

DVC deletes a stage's outputs just before it runs the stage, so a stage that finds a bad
parameter itself has already lost its earlier results. Every stage that reads
parameters depends on this one, which fails first and leaves them untouched. Its output
never changes, so passing validation alone retrains nothing.
"""

import argparse
import logging
from pathlib import Path

from altnn.io import write_text
from pipeline.common import load_params, run_stage

log = logging.getLogger(__name__)

MARKER_TEXT = "params.yaml is valid\n"


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m pipeline.validate", description=__doc__,
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("data/params-valid.txt"),
                        help="marker file written when every parameter is valid")
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    config = load_params()
    write_text(args.out, MARKER_TEXT)
    log.info("params.yaml is valid: steps %s, seeds %s, %d epochs",
             list(config.steps), list(config.seeds), config.train.epochs)


if __name__ == "__main__":
    run_stage(main)
