"""Every error hpo raises on purpose, in one place.

The tree::

    HpoError                    anything hpo reports as one clear message, never a traceback
    ├── SpecError               a study file is malformed; lists every problem at once (exit 2)
    ├── StudyError              a study is missing, or registered with a different spec
    ├── StorageError            a storage URL cannot be used
    │   ├── MissingDatabaseError    a SQLite file named for existing studies is not there
    │   └── StorageUnreachableError the database server is down or restarting (may pass)
    ├── DatasetError            a dataset is unknown, missing, or malformed
    ├── CodeImportError         a spec's own module or loss cannot be imported here
    └── DeviceError             the device asked for cannot be used here

    WorkerStopped (a BaseException, not an HpoError): a fit ends because its worker was told
    to stop (SIGTERM); the worker re-queues the trial.

The CLI catches ``HpoError`` and prints its message, and an ``OSError`` about a file (one
that cannot be read or written) as that file and the reason; anything else is a bug and keeps
its traceback.

``closest_name`` (and ``did_you_mean``, which words it) is the one place that suggests a
close name for a misspelt one.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class WorkerStopped(BaseException):
    """Raised inside a fit when the worker was asked to stop (SIGTERM).

    A ``BaseException`` so that nothing between the signal and the worker loop swallows it.
    """


class HpoError(Exception):
    """Base of every error hpo raises for the user to act on."""

    exit_code = 1


class SpecError(HpoError):
    """A study spec is invalid. ``problems`` holds one line per problem."""

    exit_code = 2

    def __init__(self, source: str, problems: list[str]) -> None:
        self.source = source
        self.problems = problems
        lines = "\n".join(f"  - {problem}" for problem in problems)
        noun = "problem" if len(problems) == 1 else "problems"
        super().__init__(f"{source}: {len(problems)} {noun} in the study spec:\n{lines}")


class StudyError(HpoError):
    """A study cannot be found, or conflicts with what the storage already holds."""


class StorageError(HpoError):
    """A storage URL is malformed or names a backend hpo cannot open."""


class MissingDatabaseError(StorageError):
    """A command that reads existing studies names a SQLite file that does not exist (a
    mistyped path is refused, never created empty)."""


class StorageUnreachableError(StorageError):
    """The database server refused or dropped the connection as a server that is down,
    starting or restarting does: worth another try, unlike a wrong password."""


class DatasetError(HpoError):
    """A dataset is unknown, its files are missing, or its contents are malformed."""


class CodeImportError(HpoError):
    """A spec's ``package.module:Name`` cannot be imported on this machine."""


class DeviceError(HpoError):
    """A ``--device`` is not one torch knows, or names a GPU this machine does not have."""


def closest_name(word: object, candidates: Iterable[str]) -> str | None:
    """The candidate most like ``word`` (``difflib``'s ratio of at least 0.6), or None."""
    close = difflib.get_close_matches(str(word), list(candidates), n=1, cutoff=0.6)
    return close[0] if close else None


def did_you_mean(word: object, candidates: Iterable[str]) -> str:
    """``"; did you mean 'x'?"`` for the candidate closest to ``word``, or ``""`` if none is
    close; made to end a message such as ``"unknown key 'samplr'"``."""
    close = closest_name(word, candidates)
    return "" if close is None else f"; did you mean {close!r}?"
