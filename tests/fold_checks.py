"""What the stacked-fold tests share: fit a trial's folds stacked and hold each fold against
its own skorch fit."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch
from sklearn.base import clone
from sklearn.metrics import get_scorer

from hpo.engine.folds.fold import resident_training_data
from hpo.engine.folds.stacked import StackedFit, fit_stacked, stackable
from hpo.engine.objective import make_folds


def assert_folds_end_as_their_own_fits(
    net: Any, spec: Any, data: Any, *, rtol: float, atol: float
) -> StackedFit:
    """Fit ``net``'s folds stacked; each fold's weights (within ``rtol``/``atol``), training
    losses and score (within a relative 1e-5) equal those of the fold's own fit."""
    splits = list(make_folds(spec).split(data.X_train, data.y_train))
    X, y = resident_training_data(data, "cpu")
    rows = [torch.as_tensor(train) for train, _ in splits]
    assert stackable(net, [len(r) for r in rows], "cpu")

    fit = fit_stacked(net, [X[r] for r in rows], [y[r] for r in rows])

    scorer = get_scorer(spec.scoring)
    for fold, (_, test) in enumerate(splits):
        own = clone(net).fit(X[rows[fold]], y[rows[fold]])
        expected = own.module_.state_dict()
        got = fit.module.fold_state_dict(fold)
        assert got.keys() == expected.keys()
        for name, value in expected.items():
            torch.testing.assert_close(got[name], value, rtol=rtol, atol=atol, msg=name)
        np.testing.assert_allclose(fit.losses(fold), own.history[:, "train_loss"], rtol=1e-5)
        assert scorer(fit.fold_net(fold), X[test], data.y_train[test]) == pytest.approx(
            scorer(own, X[test], data.y_train[test]), rel=1e-5
        )
        assert fit.epochs(fold) == len(own.history)
    return fit
