"""One log format for everything an hpo process logs: hpo's own lines and Optuna's.

``configure_logging`` puts one handler on the root logger and turns Optuna's own handler
(``[I 2026-12-02 06:51:46,834] ...``) off, so Optuna's records come through the same format
(``optuna.logging.disable_default_handler`` / ``enable_propagation``, its public API)::

    2026-12-02 06:51:53 INFO worker 0: trial 3 COMPLETE in 0.4 s: 0.9612; best 0.9711 (trial 1)
    2026-12-02 06:51:53 WARNING worker 0 (optuna): ...

The origin (``worker 0``, ``refit``) says which process wrote the line: ``hpo run`` prints its
workers' lines above its progress bar, and several workers write to one terminal or one
``docker compose logs``. A record of another library names it in brackets.

Verbosity, the ``-q`` / ``-v`` of the commands that run trials:

- ``-1`` (quiet): warnings and errors only; no line per trial;
- ``0`` (default): hpo's lines (each finished trial, the worker's plan), Optuna's warnings;
- ``1`` (verbose): hpo's debug lines and Optuna's info lines too.
"""

from __future__ import annotations

import logging
import sys
from typing import TextIO

import optuna

#: The one format; ``origin`` is set by ``_Origin``.
LOG_FORMAT = "%(asctime)s %(levelname)s %(origin)s: %(message)s"
DATE_FORMAT = "%Y-%m-%d %H:%M:%S"
QUIET, NORMAL, VERBOSE = -1, 0, 1


def configure_logging(origin: str, verbosity: int = NORMAL, stream: TextIO | None = None) -> None:
    """Log hpo's and Optuna's records as one format to ``stream`` (default stderr).

    Args:
        origin: Who is logging, at the start of every line (``worker 0``).
        verbosity: ``QUIET`` (-1), ``NORMAL`` (0) or ``VERBOSE`` (1); see the module's doc.
        stream: Where the lines go. Default: stderr.
    """
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(logging.Formatter(LOG_FORMAT, DATE_FORMAT))
    handler.addFilter(_Origin(origin))
    root = logging.getLogger()
    for previous in list(root.handlers):
        root.removeHandler(previous)
    root.addHandler(handler)
    root.setLevel(logging.WARNING)
    hpo_level, optuna_level = log_levels(verbosity)
    logging.getLogger("hpo").setLevel(hpo_level)
    optuna.logging.disable_default_handler()
    optuna.logging.enable_propagation()
    optuna.logging.set_verbosity(optuna_level)


def log_levels(verbosity: int) -> tuple[int, int]:
    """The levels of hpo's loggers and of Optuna's at ``verbosity``."""
    if verbosity <= QUIET:
        return logging.WARNING, logging.WARNING
    if verbosity >= VERBOSE:
        return logging.DEBUG, logging.INFO
    return logging.INFO, logging.WARNING


def verbosity_of(quiet: bool, verbose: bool) -> int:
    """The verbosity a command's ``-q`` / ``-v`` flags ask for (``-q`` wins over ``-v``)."""
    return QUIET if quiet else VERBOSE if verbose else NORMAL


def verbosity_flags(verbosity: int) -> list[str]:
    """The command-line flags that ask an ``hpo`` subcommand for ``verbosity``."""
    return ["--quiet"] if verbosity <= QUIET else ["--verbose"] if verbosity >= VERBOSE else []


class _Origin(logging.Filter):
    """Sets ``record.origin``: the process's own name, and another library's name beside it."""

    def __init__(self, origin: str) -> None:
        super().__init__()
        self.origin = origin

    def filter(self, record: logging.LogRecord) -> bool:
        library = record.name.partition(".")[0]
        record.origin = self.origin if library == "hpo" else f"{self.origin} ({library})"
        return True
