"""preprocess: each fold is scaled by its own training rows, whichever way its folds run, so a
trial scores what ``cross_val_score`` scores with the scaler inside a scikit-learn Pipeline."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import optuna
import pytest
import torch
from conftest import tiny_spec
from sklearn.base import clone
from sklearn.metrics import get_scorer
from sklearn.model_selection import cross_val_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import FunctionTransformer, MinMaxScaler, StandardScaler

from hpo.engine.build import build_net
from hpo.engine.data import DataSplits, load_dataset
from hpo.engine.folds import stacked_fit
from hpo.engine.folds.fold import resident_training_data
from hpo.engine.folds.plan import FoldOptions, stackable
from hpo.engine.folds.processes import FoldPool
from hpo.engine.models import MLP
from hpo.engine.nets import TunedClassifier, TunedRegressor
from hpo.engine.objective import evaluate, make_folds
from hpo.engine.preprocess import Scaling, fit_scaling
from hpo.errors import SpecError
from hpo.spec.names import DATASETS
from hpo.spec.study_spec import StudySpec, parse_spec

#: hpo scales in float32 by statistics rounded to float32; a scikit-learn scaler computes in
#: float64 and rounds the result. Fold scores were seen up to 2.3e-7 apart.
ROUNDING = 1e-5

SCALERS = {"standard": StandardScaler, "minmax": MinMaxScaler}

DIABETES = {
    "model": "regressor",
    "dataset": {"name": "diabetes"},
    "scoring": "neg_mean_squared_error",
    "cv": {"folds": 3, "shuffle": True, "seed": 0},
    "fixed": {"max_epochs": 8, "batch_size": 32},
}
PARAMS = {"module__hidden1": 16, "lr": 0.02}
PARAMS_LR = {"type": "categorical", "choices": [PARAMS["lr"]]}

#: How a trial's folds run in this process, and the plan it then records.
STRATEGIES = {
    "stacked": (FoldOptions(), "folds stacked, 1 thread"),
    "one by one": (FoldOptions(stack_folds=False), "folds one by one, 1 thread"),
}


def diabetes_spec(preprocess: str | None) -> StudySpec:
    extra = {} if preprocess is None else {"preprocess": preprocess}
    return parse_spec(tiny_spec(**DIABETES, **extra))


def scored_trial(
    spec: StudySpec,
    data: DataSplits,
    options: FoldOptions,
    pool: FoldPool | None = None,
) -> optuna.trial.FrozenTrial:
    study = optuna.create_study(direction="maximize")
    study.enqueue_trial(PARAMS)
    trial = study.ask()
    study.tell(trial, evaluate(trial, spec, data, "cpu", pool=pool, options=options))
    return study.trials[0]


def textbook_scores(spec: StudySpec, data: DataSplits, kind: str) -> np.ndarray:
    """``cross_val_score`` of the trial's net without ``preprocess``, behind scikit-learn's
    scaler in a Pipeline (images flattened for the scaler and back): the leak-free result."""
    net = build_net(spec, data, {**spec.configuration(PARAMS), "preprocess": "none"}, "cpu")
    shape = data.X_train.shape[1:]
    pipeline = make_pipeline(
        FunctionTransformer(lambda X: X.reshape(len(X), -1)),
        SCALERS[kind](),
        FunctionTransformer(lambda X: X.reshape(len(X), *shape)),
        net,
    )
    return cross_val_score(
        pipeline, data.X_train, data.y_train, cv=make_folds(spec), scoring=spec.scoring
    )


def statistics(kind: str, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """What ``kind`` centres and divides by, from numpy, per value position of ``rows``."""
    rows = rows.astype(np.float64)
    if kind == "standard":
        center, spread = rows.mean(axis=0), rows.std(axis=0)
    else:
        center, spread = rows.min(axis=0), rows.max(axis=0) - rows.min(axis=0)
    return center, np.where(spread == 0, 1.0, spread)


def assert_fitted_on(scaling: Scaling | None, kind: str, rows: np.ndarray) -> None:
    assert scaling is not None and scaling.kind == kind
    center, spread = statistics(kind, rows)
    np.testing.assert_allclose(scaling.center, center, rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(scaling.spread, spread, rtol=1e-6)


@pytest.fixture
def fold_scalings(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[Scaling | None]]:
    """The scaling of every fold fitted in this process, in the order they are fitted: each
    net's own ``fit`` (one by one), or each of a stacked fit's fold nets."""
    scalings: list[Scaling | None] = []
    for net_class in (TunedClassifier, TunedRegressor):
        own_fit = net_class.fit

        def recording_fit(self: Any, X: Any, y: Any = None, _fit: Any = own_fit, **kw: Any) -> Any:
            fitted = _fit(self, X, y, **kw)
            scalings.append(self.scaling_)
            return fitted

        monkeypatch.setattr(net_class, "fit", recording_fit)
    fit_stacked = stacked_fit.fit_stacked

    def recording_fit_stacked(net: Any, X: list[torch.Tensor], *args: Any, **kw: Any) -> Any:
        fit = fit_stacked(net, X, *args, **kw)
        scalings.extend(fit.fold_net(fold).scaling_ for fold in range(len(X)))
        return fit

    monkeypatch.setattr(stacked_fit, "fit_stacked", recording_fit_stacked)
    yield scalings


# --- (a), (b): a fold's scaling is fitted on exactly its training rows ---------------------


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["standard", "minmax"])
@pytest.mark.parametrize("strategy", list(STRATEGIES))
def test_each_fold_is_scaled_by_its_own_training_rows_only(
    strategy: str, kind: str, fold_scalings: list[Scaling | None]
) -> None:
    spec, data = diabetes_spec(kind), load_dataset("diabetes")
    options, plan = STRATEGIES[strategy]
    trial = scored_trial(spec, data, options)
    assert trial.user_attrs["folds_plan"] == plan

    splits = list(make_folds(spec).split(data.X_train, data.y_train))
    assert len(fold_scalings) == len(splits)
    everything = statistics(kind, data.X_train)
    for scaling, (train, _) in zip(fold_scalings, splits, strict=True):
        assert_fitted_on(scaling, kind, data.X_train[train])
        # the test can fail: a scaler fitted on every row (the held-out ones too) differs
        assert scaling is not None
        assert not np.allclose(scaling.center, everything[0], rtol=1e-4)


@pytest.mark.slow
def test_stacked_fold_nets_keep_their_folds_scaling_and_early_stop_as_their_own_fits() -> None:
    # digits has a fixed validation split: each stacked fold must see it scaled by its own
    # training rows, as its own fit's infer scales it, or it stops at another epoch.
    spec = parse_spec(tiny_spec(preprocess="standard", cv={"folds": 3, "seed": 1}))
    data = load_dataset("digits")
    configuration = spec.configuration(
        {"module__hidden1": 32, "lr": 0.2, "max_epochs": 40, "early_stopping_patience": 2}
    )
    net = build_net(spec, data, {**configuration, "batch_size": 64}, "cpu")
    splits = list(make_folds(spec).split(data.X_train, data.y_train))
    X, y = resident_training_data(data, "cpu")
    rows = [torch.as_tensor(train) for train, _ in splits]
    assert stackable_with_validation(net, rows)
    validation = (torch.as_tensor(data.X_valid), torch.as_tensor(data.y_valid))

    fit = stacked_fit.fit_stacked(
        net, [X[r] for r in rows], [y[r] for r in rows], None, validation
    )

    scorer = get_scorer(spec.scoring)
    for fold, (train, test) in enumerate(splits):
        fold_net = fit.fold_net(fold)
        assert_fitted_on(fold_net.scaling_, "standard", data.X_train[train])
        own = clone(net).fit(X[rows[fold]], y[rows[fold]])
        np.testing.assert_array_equal(fold_net.scaling_.center, own.scaling_.center)
        np.testing.assert_array_equal(fold_net.scaling_.spread, own.scaling_.spread)
        assert fit.epochs(fold) == len(own.history) < 40
        assert scorer(fold_net, data.X_train[test], data.y_train[test]) == pytest.approx(
            scorer(own, data.X_train[test], data.y_train[test]), rel=ROUNDING
        )


def stackable_with_validation(net: Any, rows: list[torch.Tensor]) -> bool:
    return stackable(net, [len(r) for r in rows], "cpu", validation=True)


# --- (c): fold scores equal cross_val_score with the scaler in a Pipeline ------------------


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["standard", "minmax"])
@pytest.mark.parametrize("strategy", list(STRATEGIES))
def test_fold_scores_equal_cross_val_score_with_the_scaler_in_a_pipeline(
    strategy: str, kind: str
) -> None:
    spec, data = diabetes_spec(kind), load_dataset("diabetes")
    options, plan = STRATEGIES[strategy]
    trial = scored_trial(spec, data, options)
    assert trial.user_attrs["folds_plan"] == plan
    expected = textbook_scores(spec, data, kind)
    np.testing.assert_allclose(trial.user_attrs["fold_scores"], expected, rtol=ROUNDING)


@pytest.mark.slow
@pytest.mark.parametrize("strategy", list(STRATEGIES))
def test_images_are_scaled_per_pixel_as_a_pipeline_scales_them(strategy: str) -> None:
    # digits' corner pixels are 0 in every image: constant features, divided by 1, not 0.
    spec = parse_spec(tiny_spec(preprocess="standard", cv={"folds": 3}))
    data = load_dataset("digits")
    options, plan = STRATEGIES[strategy]
    trial = scored_trial(spec, data, options)
    assert trial.user_attrs["folds_plan"] == plan
    expected = textbook_scores(spec, data, "standard")
    np.testing.assert_allclose(trial.user_attrs["fold_scores"], expected, rtol=ROUNDING)


@pytest.mark.slow  # starts fold processes, each importing torch
def test_fold_processes_score_as_cross_val_score_with_the_scaler_in_a_pipeline() -> None:
    spec, data = diabetes_spec(None), load_dataset("diabetes")
    assert spec.preprocessing == "standard"
    before = torch.get_num_threads()
    torch.set_num_threads(1)  # the thread count of each fold process
    try:
        with FoldPool(data, processes=2, threads=1) as pool:
            trial = scored_trial(spec, data, FoldOptions(folds_at_once=3), pool=pool)
    finally:
        torch.set_num_threads(before)
    assert trial.user_attrs["folds_plan"] == "3 folds at once (2 fold processes), 1 thread each"
    expected = textbook_scores(spec, data, "standard")
    np.testing.assert_allclose(trial.user_attrs["fold_scores"], expected, rtol=ROUNDING)


# --- (d): the spec --------------------------------------------------------------------------

REQUIRED_OPTIONS = {"npz": {"path": "data.npz"}, "csv": {"path": "data.csv", "target": "y"}}


#: Tables come in any units; images are already in [0, 1], and so is the 1-D synthetic data.
DEFAULTS = {
    "digits": "none",
    "mnist": "none",
    "fashion_mnist": "none",
    "svhn": "none",
    "mnist_5k": "none",
    "synthetic_regression": "none",
    "diabetes": "standard",
    "npz": "standard",
    "csv": "standard",
}


@pytest.mark.parametrize(("dataset", "default"), list(DEFAULTS.items()))
def test_tables_are_standardized_by_default_and_images_are_not(dataset: str, default: str) -> None:
    spec = parse_spec(tiny_spec(dataset={"name": dataset, **REQUIRED_OPTIONS.get(dataset, {})}))
    assert spec.preprocess is None
    assert spec.preprocessing == default
    assert spec.configuration({"lr": 0.1})["preprocess"] == default


def test_every_dataset_has_its_default_decided_above() -> None:
    assert set(DATASETS) == set(DEFAULTS)


@pytest.mark.parametrize(
    ("dataset", "preprocess"),
    [("diabetes", "minmax"), ("diabetes", "none"), ("digits", "standard")],
)
def test_an_explicit_preprocess_wins_and_reaches_every_trial(
    dataset: str, preprocess: str
) -> None:
    spec = parse_spec(tiny_spec(dataset={"name": dataset}, preprocess=preprocess))
    assert spec.preprocessing == preprocess
    configuration = spec.configuration({"lr": 0.1, "module__hidden1": 8})
    assert configuration == {
        **spec.fixed,
        "lr": 0.1,
        "module__hidden1": 8,
        "preprocess": preprocess,
    }
    # a worker reads the spec back from the storage's JSON
    assert StudySpec.from_json(spec.to_json()).configuration({})["preprocess"] == preprocess
    net = build_net(spec, load_dataset(dataset), configuration, "cpu")
    assert net.preprocess == preprocess


def test_an_unknown_preprocess_is_refused_with_the_choices() -> None:
    with pytest.raises(SpecError) as error:
        parse_spec(tiny_spec(preprocess="zscore"))
    assert "preprocess: input should be 'standard', 'minmax' or 'none', got 'zscore'" in str(
        error.value
    )


def test_fit_scaling_refuses_an_unknown_kind_and_rows_it_cannot_scale() -> None:
    with pytest.raises(ValueError, match="preprocess must be one of standard, minmax, none"):
        fit_scaling("zscore", np.zeros((4, 2), dtype=np.float32))
    with pytest.raises(ValueError, match="set preprocess: none"):
        fit_scaling("standard", [[1.0, 2.0], [3.0, 4.0]])
    assert fit_scaling("none", [[1.0, 2.0]]) is None


# --- (e): images unchanged by default; constant features -----------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("strategy", list(STRATEGIES))
def test_digits_by_default_train_on_the_pixels_as_before(
    strategy: str, fold_scalings: list[Scaling | None]
) -> None:
    spec, data = parse_spec(tiny_spec(cv={"folds": 3})), load_dataset("digits")
    options, plan = STRATEGIES[strategy]
    trial = scored_trial(spec, data, options)
    assert trial.user_attrs["folds_plan"] == plan
    assert fold_scalings == [None, None, None]
    # the net as it was before preprocess existed: no such parameter given
    before = dict(spec.configuration(PARAMS))
    before.pop("preprocess", None)
    expected = cross_val_score(
        build_net(spec, data, before, "cpu"),
        data.X_train,
        data.y_train,
        cv=make_folds(spec),
        scoring=spec.scoring,
    )
    np.testing.assert_array_equal(trial.user_attrs["fold_scores"], expected)


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["standard", "minmax"])
def test_a_constant_feature_is_divided_by_one_not_zero(kind: str) -> None:
    rng = np.random.default_rng(0)
    X = rng.normal(3.0, 2.0, size=(50, 3)).astype(np.float32)
    X[:, 1] = 7.0
    scaling = fit_scaling(kind, X)
    assert scaling is not None and scaling.spread[1] == 1.0
    held_out = rng.normal(3.0, 2.0, size=(20, 3)).astype(np.float32)
    scaled = scaling(torch.as_tensor(held_out)).numpy()
    assert np.isfinite(scaled).all()
    expected = SCALERS[kind]().fit(X).transform(held_out)
    np.testing.assert_allclose(scaled, expected, rtol=1e-5, atol=1e-6)
    # and a net trains on it: finite losses and predictions
    net = TunedRegressor(
        MLP,
        module__input_shape=(3,),
        module__n_outputs=1,
        module__hidden1=8,
        max_epochs=3,
        batch_size=16,
        preprocess=kind,
    )
    net.fit(X, X[:, :1] * 2.0)
    assert np.isfinite(net.history[:, "train_loss"]).all()
    assert np.isfinite(net.predict(held_out)).all()


def test_scaling_survives_its_json_state() -> None:
    X = np.random.default_rng(1).uniform(0, 5, size=(30, 1, 2, 2)).astype(np.float32)
    scaling = fit_scaling("minmax", X)
    assert scaling is not None
    again = Scaling.from_state(scaling.state())
    assert again.kind == scaling.kind
    np.testing.assert_array_equal(again.center, scaling.center)
    np.testing.assert_array_equal(again.spread, scaling.spread)
    torch.testing.assert_close(again(torch.as_tensor(X)), scaling(torch.as_tensor(X)))


@pytest.mark.slow
def test_a_users_module_stacked_through_vmap_is_scaled_by_each_folds_rows_too() -> None:
    """tests/user_nets.py's UserMLP stacks through torch.func (VmappedFolds); its folds are
    scaled as a Pipeline scales them."""
    space = {"module__hidden": {"type": "categorical", "choices": [16]}, "lr": PARAMS_LR}
    spec = parse_spec(
        tiny_spec(**{**DIABETES, "model": "tests.user_nets:UserMLP", "space": space})
    )
    data = load_dataset("diabetes")
    study = optuna.create_study(direction="maximize")
    trial = study.ask()
    study.tell(trial, evaluate(trial, spec, data, "cpu", options=FoldOptions()))
    frozen = study.trials[0]
    assert frozen.user_attrs["folds_plan"] == "folds stacked, 1 thread"

    net = build_net(spec, data, {**spec.configuration(frozen.params), "preprocess": "none"}, "cpu")
    expected = cross_val_score(
        make_pipeline(StandardScaler(), net),
        data.X_train,
        data.y_train,
        cv=make_folds(spec),
        scoring=spec.scoring,
    )
    np.testing.assert_allclose(frozen.user_attrs["fold_scores"], expected, rtol=ROUNDING)


class _Recording(MLP):
    """An MLP that keeps every batch its forward pass is given."""

    seen: list[torch.Tensor] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _Recording.seen.append(x.detach().clone())
        return super().forward(x)


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["standard", "minmax"])
def test_the_module_sees_every_batch_scaled_exactly_once(
    kind: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A fit scales its training rows once, not every epoch (``TensorBatches``' transform), and
    # predict scales per batch: either way the module's input is scaling(raw rows), never the
    # raw rows and never scaled twice, in every epoch.
    rng = np.random.default_rng(0)
    X = (rng.standard_normal((40, 5)) * 7 + 3).astype(np.float32)
    y = rng.integers(0, 2, 40)
    net = TunedClassifier(
        _Recording,
        module__input_shape=(5,),
        module__n_outputs=2,
        module__hidden1=4,
        preprocess=kind,
        batch_size=16,
        max_epochs=3,
        iterator_train__shuffle=False,
    )
    calls: list[int] = []
    own_call = Scaling.__call__

    def counted(self: Scaling, x: torch.Tensor) -> torch.Tensor:
        calls.append(len(x))
        return own_call(self, x)

    monkeypatch.setattr(Scaling, "__call__", counted)
    _Recording.seen.clear()
    net.fit(X, y)
    assert calls == [40], "the training rows are scaled once per fit, not per batch or epoch"
    scaled = net.scaling_(torch.as_tensor(X))
    expected = [scaled[i : i + 16] for i in range(0, 40, 16)] * 3
    assert len(_Recording.seen) == len(expected)
    for batch, rows in zip(_Recording.seen, expected, strict=True):
        assert torch.equal(batch, rows)

    _Recording.seen.clear()
    net.predict(X)
    assert torch.equal(torch.cat(_Recording.seen), scaled)
