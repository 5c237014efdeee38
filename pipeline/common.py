"""Helpers every stage shares: reading params.yaml, logging, and turning errors into exits.

This module is not a stage; stages import it, never each other.
"""

import logging
import signal
import sys
from collections.abc import Callable
from pathlib import Path

import yaml

from altnn.config import ConfigError, StudyConfig, parse_study_config

PARAMS_FILE = Path("params.yaml")
EXIT_USAGE = 2

log = logging.getLogger("pipeline")


def setup_logging() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        datefmt="%H:%M:%S")


def load_params(path: Path = PARAMS_FILE) -> StudyConfig:
    """Read and validate params.yaml once; raise ConfigError naming what is wrong."""
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{path}: not found; run the stage from the repository root") from None
    except yaml.YAMLError as error:
        raise ConfigError(f"{path}: not valid YAML ({error}); fix the syntax and run again") from None
    return parse_study_config(raw)


def _raise_interrupt(signum: int, frame) -> None:
    raise KeyboardInterrupt(f"signal {signal.Signals(signum).name}")


def run_stage(main: Callable[[], None], expected_errors: tuple[type[BaseException], ...] = ()) -> None:
    """Run a stage's main(): user errors print one message and exit 2, SIGTERM acts as Ctrl-C."""
    setup_logging()
    signal.signal(signal.SIGTERM, _raise_interrupt)
    try:
        main()
    except (ConfigError, *expected_errors) as error:
        log.error("%s", error)
        sys.exit(EXIT_USAGE)
    except KeyboardInterrupt:
        log.error("interrupted; run `dvc repro` (or this stage again) to resume from the last finished epoch")
        sys.exit(130)
