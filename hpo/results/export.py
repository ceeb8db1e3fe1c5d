"""Results out of the storage: the best configuration and every trial, as CSV or JSON.

Parameter columns are skorch ``set_params`` keys, fixed ones included, so
``net.set_params(**row)`` rebuilds the configuration from a row of ``best_params.csv`` (after
dropping the ``study``, ``trial`` and ``value`` columns); ``hpo.skorch_params(row)`` turns a
row into plain skorch arguments. The row names the loss (``criterion``) even when the spec
leaves it to the task's default, since plain skorch's classifier defaults to another one.

In CSV (never JSON), a text cell a spreadsheet would take for a formula (``=...``,
``+...``, ``-...``, ``@...``, a leading tab or carriage return) starts with an added ``'``
(``csv_cell``); ``read_best_params`` and ``hpo.skorch_params`` take it off again
(``csv_value``). Numbers are written as numbers.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import optuna
import pandas as pd
from optuna.trial import TrialState

from hpo.errors import StudyError
from hpo.results.paths import study_folder
from hpo.service.study import TASK_ATTR, load_spec_from_storage
from hpo.spec.names import DEFAULT_CRITERIA
from hpo.spec.study_spec import StudySpec

#: Columns of best_params.csv that are not net parameters.
BEST_META_COLUMNS = ("study", "trial", "value")

#: First characters that make a spreadsheet read a cell as a formula (OWASP CSV injection).
FORMULA_PREFIXES = ("=", "+", "-", "@", "\t", "\r")

_PLAIN_NUMBER = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?")


def best_params_frame(study: optuna.Study, spec: StudySpec) -> pd.DataFrame:
    """One row: study, trial number, value, then every fixed and searched parameter.

    Raises:
        StudyError: no trial has completed yet.
    """
    try:
        best = study.best_trial
    except ValueError:
        raise StudyError(
            f"study {study.study_name!r} has no completed trial yet; run a worker "
            f"first: hpo worker --study {study.study_name}"
        ) from None
    configuration = spec.configuration(best.params)
    task = study.user_attrs.get(TASK_ATTR)
    if "criterion" not in configuration and task in DEFAULT_CRITERIA:
        configuration["criterion"] = DEFAULT_CRITERIA[task]
    row = {"study": study.study_name, "trial": best.number, "value": best.value, **configuration}
    return pd.DataFrame([row])


def trials_frame(study: optuna.Study) -> pd.DataFrame:
    """Every trial: number, state, value, fold scores, std, seconds, failure reason, params."""
    rows = []
    for trial in study.get_trials(deepcopy=False):
        duration = trial.duration.total_seconds() if trial.duration else None
        attrs = trial.user_attrs
        rows.append(
            {
                "number": trial.number,
                "state": trial.state.name,
                "value": trial.value if trial.state == TrialState.COMPLETE else None,
                "fold_scores": list(attrs.get("fold_scores", [])),
                "score_std": attrs.get("score_std"),
                "duration_s": duration,
                "device": attrs.get("device"),
                "threads": attrs.get("threads"),
                "fail_reason": attrs.get("fail_reason"),
                **trial.params,
            }
        )
    return pd.DataFrame(rows)


def export_study(
    storage: optuna.storages.BaseStorage,
    name: str,
    out: str | Path | None = None,
    all_trials: bool = False,
) -> Path:
    """Write the best row (or, with ``all_trials``, every trial) to ``out``; by default
    ``results/<name>/best_params.csv`` (where ``hpo run`` writes it) or ``trials.csv``.

    The format follows the suffix: ``.json`` writes records (numbers at full precision, fold
    scores as a list), anything else CSV (fold scores as a JSON list in one cell).

    Returns:
        The path written.
    """
    spec = load_spec_from_storage(storage, name)
    study = optuna.load_study(study_name=name, storage=storage)
    frame = trials_frame(study) if all_trials else best_params_frame(study, spec)
    if out is None:
        out = study_folder("results", name) / ("trials.csv" if all_trials else "best_params.csv")
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    if out.suffix == ".json":
        records = frame.astype(object).where(frame.notna(), None).to_dict(orient="records")
        out.write_text(json.dumps(records, indent=2, default=_plain) + "\n", encoding="utf-8")
    else:
        if "fold_scores" in frame:
            frame = frame.assign(fold_scores=frame["fold_scores"].map(json.dumps))
        safe = neutralised_csv_frame(frame)
        # Python's csv quotes a cell holding a line terminator's character only: with CRLF
        # line ends (RFC 4180) a carriage return inside a cell is quoted too, so the file
        # still reads back as the same rows. Plain "\n" otherwise, as before.
        lineterminator = "\r\n" if _holds_carriage_return(safe) else "\n"
        safe.to_csv(out, index=False, lineterminator=lineterminator)
    return out


def _plain(value: object) -> object:
    """A numpy scalar as the Python number JSON writes in full (``frame.to_json`` rounds to
    10 digits)."""
    item = getattr(value, "item", None)
    if item is None:
        raise TypeError(f"{type(value).__name__} is not JSON serialisable")
    return item()


def read_best_params(path: str | Path) -> dict[str, object]:
    """The net parameters of a ``best_params.csv``, ready for ``net.set_params(**params)``.

    Cells neutralised against formula injection (``csv_cell``) are read back as written.
    """
    row = pd.read_csv(path).iloc[0].to_dict()
    params = {
        csv_value(key): csv_value(value)
        for key, value in row.items()
        if key not in BEST_META_COLUMNS
    }
    return {
        key: (value.item() if hasattr(value, "item") else value)
        for key, value in params.items()
        if not pd.isna(value)
    }


def _is_formula_like(text: str) -> bool:
    """Whether a spreadsheet could take ``text`` for a formula; a plain decimal number
    (``-0.5``, ``+3``, ``-1e-3``) is read as that number, not a formula."""
    if text[:1] == "'":
        return _is_formula_like(text[1:])
    return text[:1] in FORMULA_PREFIXES and not _PLAIN_NUMBER.fullmatch(text)


def csv_cell(value: object) -> object:
    """A CSV cell safe from spreadsheet formula injection (OWASP "CSV injection").

    A string a spreadsheet would take for a formula (one starting with ``= + - @``, a tab or
    a carriage return) gets a leading single quote, which spreadsheets show as text; so does
    one that already starts with quotes before such a character, so that ``csv_value``
    reads every cell back exactly. Anything not a string (numbers, negative ones included)
    is returned as it is.
    """
    if isinstance(value, str) and _is_formula_like(value):
        return "'" + value
    return value


def csv_value(value: object) -> object:
    """The value ``csv_cell`` was given, from the cell it wrote (as pandas reads it)."""
    if isinstance(value, str) and value[:1] == "'" and _is_formula_like(value[1:]):
        return value[1:]
    return value


def _holds_carriage_return(frame: pd.DataFrame) -> bool:
    texts = [*frame.columns, *frame.to_numpy().ravel()]
    return any(isinstance(text, str) and "\r" in text for text in texts)


def neutralised_csv_frame(frame: pd.DataFrame) -> pd.DataFrame:
    """``frame`` with every string cell, and every column name, passed through ``csv_cell``;
    for CSV output only (JSON keeps the values as they are)."""
    safe = frame.rename(columns=lambda column: csv_cell(column))
    for column in safe.columns:
        if not pd.api.types.is_numeric_dtype(safe[column]):
            safe[column] = safe[column].map(csv_cell)
    return safe
