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
from hpo.files import check_output, write_output
from hpo.results.paths import study_folder
from hpo.service.study import TASK_ATTR, load_spec_from_storage, result_trial
from hpo.spec.names import DEFAULT_CRITERIA
from hpo.spec.objectives import broken_constraints, is_feasible
from hpo.spec.study_spec import StudySpec

#: Columns of best_params.csv that are not net parameters.
BEST_META_COLUMNS = ("study", "trial", "value")

#: First characters that make a spreadsheet read a cell as a formula (OWASP CSV injection).
FORMULA_PREFIXES = ("=", "+", "-", "@", "\t", "\r")

_PLAIN_NUMBER = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?")


def best_params_frame(study: optuna.Study, spec: StudySpec) -> pd.DataFrame:
    """One row: study, trial number, value, then every fixed and searched parameter (empty for
    a conditional one the trial does not have), of the study's best trial
    (``hpo.service.study.result_trial``: with several objectives, the pick from its Pareto
    front, ``value`` its first objective; ``pareto_frame`` has them all).

    Raises:
        StudyError: no trial has completed yet (or none meets the constraints).
    """
    best = result_trial(study, spec)
    configuration = spec.configuration(best.params)
    task = study.user_attrs.get(TASK_ATTR)
    if "criterion" not in configuration and task in DEFAULT_CRITERIA:
        configuration["criterion"] = DEFAULT_CRITERIA[task]
    row = {"study": study.study_name, "trial": best.number, "value": best.values[0]}
    # A parameter the trial does not have (its ``when`` did not hold) is a column left empty.
    absent = {key: None for key in spec.space if key not in configuration}
    return pd.DataFrame([{**row, **configuration, **absent}])


def trials_frame(study: optuna.Study) -> pd.DataFrame:
    """Every trial: number, state, value (with several objectives, a column per objective
    after it, named by the metric), whether it met the constraints and which it broke (when
    the study has any), the measures and extra scores the spec names, fold scores, std,
    seconds, failure reason, then the params."""
    rows = []
    constrained = any(t.constraints for t in study.get_trials(deepcopy=False))
    for trial in study.get_trials(deepcopy=False):
        duration = trial.duration.total_seconds() if trial.duration else None
        attrs = trial.user_attrs
        complete = trial.state == TrialState.COMPLETE
        rows.append(
            {
                "number": trial.number,
                "state": trial.state.name,
                "value": trial.values[0] if complete else None,
                **_objective_columns(study, trial),
                **_constraint_columns(trial, constrained),
                **attrs.get("measures", {}),
                **attrs.get("extra_scores", {}),
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


def pareto_frame(study: optuna.Study, spec: StudySpec) -> pd.DataFrame:
    """The Pareto front of a study of several objectives (its feasible trials that no other
    beats on every objective): number, each objective by name, ``picked`` (the trial
    ``hpo refit`` takes, ``hpo.spec.objectives.pick_from_front``), then the params.

    Raises:
        StudyError: the study has one objective, or no trial on the front yet.
    """
    if len(study.directions) == 1:
        raise StudyError(
            f"study {study.study_name!r} has one objective, so no Pareto front; its best "
            f"trial: hpo export {study.study_name}"
        )
    picked = result_trial(study, spec).number
    rows = [
        {
            "number": trial.number,
            **_objective_columns(study, trial),
            "picked": trial.number == picked,
            **trial.params,
        }
        for trial in sorted(study.best_trials, key=lambda t: t.number)
    ]
    return pd.DataFrame(rows)


def _objective_columns(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> dict[str, object]:
    """With several objectives, each one's value by its metric name; nothing with one."""
    if len(study.directions) == 1:
        return {}
    names = study.metric_names or [f"objective_{i}" for i in range(len(study.directions))]
    values = trial.values if trial.state == TrialState.COMPLETE else [None] * len(names)
    return dict(zip(names, values, strict=True))


def _constraint_columns(trial: optuna.trial.FrozenTrial, constrained: bool) -> dict[str, object]:
    """In a study with constraints: whether the trial met them, and those it broke."""
    if not constrained:
        return {}
    if trial.state != TrialState.COMPLETE:
        return {"feasible": None, "broken": None}
    return {"feasible": is_feasible(trial), "broken": "; ".join(broken_constraints(trial))}


def export_study(
    storage: optuna.storages.BaseStorage,
    name: str,
    out: str | Path | None = None,
    all_trials: bool = False,
    pareto: bool = False,
) -> Path:
    """Write the best row (or, with ``all_trials``, every trial; with ``pareto``, the Pareto
    front) to ``out``; by default ``results/<name>/best_params.csv`` (where ``hpo run`` writes
    it), ``trials.csv`` or ``pareto.csv``.

    The format follows the suffix: ``.json`` writes records (numbers at full precision, fold
    scores as a list), anything else CSV (fold scores as a JSON list in one cell).

    Returns:
        The path written.

    Raises:
        OSError: ``out`` cannot be written (``hpo.files.write_output``: a FIFO or a device is
            refused, a full disk leaves the file as it was).
    """
    spec = load_spec_from_storage(storage, name)
    study = optuna.load_study(study_name=name, storage=storage)
    if pareto:
        frame, default = pareto_frame(study, spec), "pareto.csv"
    elif all_trials:
        frame, default = trials_frame(study), "trials.csv"
    else:
        frame, default = best_params_frame(study, spec), "best_params.csv"
    if out is None:
        out = study_folder("results", name) / default
    out = Path(out)
    check_output(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    if out.suffix == ".json":
        records = frame.astype(object).where(frame.notna(), None).to_dict(orient="records")
        write_output(out, json.dumps(records, indent=2, default=_plain) + "\n")
    else:
        if "fold_scores" in frame:
            frame = frame.assign(fold_scores=frame["fold_scores"].map(json.dumps))
        safe = neutralised_csv_frame(frame)
        # Python's csv quotes a cell holding a line terminator's character only: with CRLF
        # line ends (RFC 4180) a carriage return inside a cell is quoted too, so the file
        # still reads back as the same rows. Plain "\n" otherwise, as before.
        lineterminator = "\r\n" if _holds_carriage_return(safe) else "\n"
        write_output(out, safe.to_csv(index=False, lineterminator=lineterminator))
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
        str(csv_value(key)): csv_value(value)
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
