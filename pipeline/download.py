"""DVC stage: put the four verified Fashion-MNIST IDX files in data/raw/."""

import argparse
import logging
from pathlib import Path

from altnn.data import MIRRORS, SYSTEM_DIRS, DataError, acquire_raw_files
from pipeline.common import run_stage

log = logging.getLogger(__name__)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m pipeline.download", description=__doc__,
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("data/raw"), help="folder for the IDX files")
    parser.add_argument("--no-download", action="store_true",
                        help="use only present files and system copies, never the mirrors")
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    mirrors = () if args.no_download else MIRRORS
    sources = acquire_raw_files(args.out, SYSTEM_DIRS, mirrors)
    for name, source in sources.items():
        log.info("%s: %s", name, source)


if __name__ == "__main__":
    run_stage(main, (DataError,))
