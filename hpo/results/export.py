"""Results out of the storage: the best configuration and every trial, as CSV or JSON.

Parameter columns are skorch ``set_params`` keys, fixed ones included, so
``net.set_params(**row)`` rebuilds the configuration from a row of ``best_params.csv`` (after
dropping the ``study``, ``trial`` and ``value`` columns); ``hpo.skorch_params(row)`` turns a
row into plain skorch arguments. The row names the loss (``criterion``) even when the spec
leaves it to the task's default, since plain skorch's classifier defaults to another one.
"""

from __future__ import annotations

import json
from pathlib import Path

import optuna
import pandas as pd
from optuna.trial import TrialState

from hpo.errors import StudyError
from hpo.service.study import TASK_ATTR, load_spec_from_storage
from hpo.spec.names import DEFAULT_CRITERIA
from hpo.spec.study_spec import StudySpec

#: Columns of best_params.csv that are not net parameters.
BEST_META_COLUMNS = ("study", "trial", "value")


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
                "fold_scores": json.dumps(attrs.get("fold_scores", [])),
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
    storage: optuna.storages.BaseStorage, name: str, out: str | Path, all_trials: bool = False
) -> Path:
    """Write the best row (or, with ``all_trials``, every trial) to ``out``.

    The format follows the suffix: ``.json`` writes records, anything else CSV.

    Returns:
        The path written.
    """
    spec = load_spec_from_storage(storage, name)
    study = optuna.load_study(study_name=name, storage=storage)
    frame = trials_frame(study) if all_trials else best_params_frame(study, spec)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    if out.suffix == ".json":
        frame.to_json(out, orient="records", indent=2)
    else:
        frame.to_csv(out, index=False)
    return out


def read_best_params(path: str | Path) -> dict[str, object]:
    """The net parameters of a ``best_params.csv``, ready for ``net.set_params(**params)``."""
    row = pd.read_csv(path).iloc[0].to_dict()
    params = {key: value for key, value in row.items() if key not in BEST_META_COLUMNS}
    return {
        key: (value.item() if hasattr(value, "item") else value)
        for key, value in params.items()
        if not pd.isna(value)
    }
