"""What the stacked-fold tests share: fit a trial's folds stacked and hold each fold against
its own skorch fit."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch
from conftest import tiny_spec
from sklearn.base import clone
from sklearn.metrics import get_scorer

from hpo.engine.augment import augmented_rows
from hpo.engine.data import DataSplits, load_dataset
from hpo.engine.folds.fold import resident_training_data
from hpo.engine.folds.plan import stackable
from hpo.engine.folds.stacked_fit import StackedFit, fit_stacked
from hpo.engine.objective import make_folds
from hpo.spec.study_spec import StudySpec, parse_spec

#: The weight decay every stacking case searches (one choice), so optimizer arguments reach
#: the stacked optimizer.
WEIGHT_DECAY = 1e-4


def stacking_case(
    cases: dict[str, tuple[dict[str, Any], str]], case: str, **changes: Any
) -> tuple[StudySpec, DataSplits]:
    """The spec and data of one stacking case: ``cases[case]`` is (spec overrides, dataset),
    on 3 folds with a searched weight decay."""
    overrides, dataset = cases[case]
    spec = parse_spec(
        tiny_spec(
            dataset={"name": dataset},
            cv={"folds": 3, "seed": 1},
            space={"optimizer__weight_decay": {"type": "categorical", "choices": [WEIGHT_DECAY]}},
            **{**overrides, **changes},
        )
    )
    return spec, load_dataset(dataset)


def assert_folds_end_as_their_own_fits(
    net: Any, spec: Any, data: Any, *, rtol: float, atol: float
) -> StackedFit:
    """Fit ``net``'s folds stacked (early stopping on the data's fixed validation split when
    the net has it); each fold's epochs, weights (within ``rtol``/``atol``; with early
    stopping, its best epoch's), training losses and score (within a relative 1e-5) equal
    those of the fold's own fit."""
    splits = list(make_folds(spec).split(data.X_train, data.y_train))
    X, y = resident_training_data(data, "cpu")
    rows = [torch.as_tensor(train) for train, _ in splits]
    early_stopping = net.early_stopping_patience is not None
    sizes = [augmented_rows(net.augment, len(r)) for r in rows]
    assert stackable(net, sizes, "cpu", validation=early_stopping)
    validation = None
    if early_stopping:
        validation = (torch.as_tensor(data.X_valid), torch.as_tensor(data.y_valid))

    fit = fit_stacked(net, [X[r] for r in rows], [y[r] for r in rows], validation=validation)

    scorer = get_scorer(spec.scoring)
    for fold, (_, test) in enumerate(splits):
        own = clone(net).fit(X[rows[fold]], y[rows[fold]])
        expected = own.module_.state_dict()  # with early stopping, its best epoch's
        got = fit.fold_net(fold).module_.state_dict()
        assert got.keys() == expected.keys()
        for name, value in expected.items():
            torch.testing.assert_close(got[name], value, rtol=rtol, atol=atol, msg=name)
        np.testing.assert_allclose(fit.losses(fold), own.history[:, "train_loss"], rtol=1e-5)
        assert scorer(fit.fold_net(fold), X[test], data.y_train[test]) == pytest.approx(
            scorer(own, X[test], data.y_train[test]), rel=1e-5
        )
        assert fit.epochs(fold) == len(own.history)
    return fit
