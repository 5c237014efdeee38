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


class _UniqueKeyLoader(yaml.SafeLoader):
    """A safe YAML loader that rejects a key written twice in one mapping.

    PyYAML silently keeps the last value of a repeated key, so a second `lr:` in a
    section would override the first.
    """

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        seen: dict = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    "while reading a mapping", node.start_mark,
                    f"the key {key!r} appears twice (lines {seen[key] + 1} and "
                    f"{key_node.start_mark.line + 1}); keep one", key_node.start_mark)
            seen[key] = key_node.start_mark.line
        return super().construct_mapping(node, deep=deep)


def load_params(path: Path = PARAMS_FILE) -> StudyConfig:
    """Read and validate params.yaml once; raise ConfigError naming what is wrong."""
    try:
        raw = yaml.load(path.read_text(encoding="utf-8"), Loader=_UniqueKeyLoader)
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
