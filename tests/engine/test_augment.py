"""augment: copies of a fit's own training rows, never of its validation or held-out rows."""

from __future__ import annotations

import json
import typing

import numpy as np
import pytest
import torch
from conftest import tiny_spec

from hpo.engine.augment import augment, augmented_rows, check_augmentation, shifted
from hpo.engine.build import build_net, check_compatible
from hpo.engine.data import load_dataset
from hpo.errors import HpoError, SpecError
from hpo.spec.names import AUGMENTATIONS
from hpo.spec.study_spec import StudySpec, parse_spec, spec_json_equal


def test_shifts_adds_each_image_moved_one_pixel_four_ways() -> None:
    image = np.zeros((1, 1, 3, 3), dtype=np.float32)
    image[0, 0, 1, 1] = 1.0  # one lit pixel in the middle
    labels = np.array([7])

    X, y = augment("shifts", image, labels)

    assert X.shape == (5, 1, 3, 3) and y.tolist() == [7] * 5
    lit = [tuple(int(i) for i in torch.nonzero(copy[0])[0]) for copy in X]
    assert lit == [(1, 1), (2, 1), (0, 1), (1, 2), (1, 0)]  # as is, down, up, right, left
    assert X.sum(dim=(1, 2, 3)).tolist() == [1.0] * 5


def test_a_shift_fills_the_vacated_edge_with_zeros() -> None:
    X = torch.arange(1, 10, dtype=torch.float32).reshape(1, 1, 3, 3)
    down = shifted(X, 1, 0)[0, 0]
    left = shifted(X, 0, -1)[0, 0]
    assert down.tolist() == [[0, 0, 0], [1, 2, 3], [4, 5, 6]]
    assert left.tolist() == [[2, 3, 0], [5, 6, 0], [8, 9, 0]]


def test_none_gives_the_rows_back_unchanged() -> None:
    X, y = np.ones((4, 3), dtype=np.float32), np.arange(4)
    assert augment("none", X, y) == (X, y)
    assert augmented_rows("none", 4) == 4 and augmented_rows("shifts", 4) == 20


def test_shifts_refuses_rows_that_are_not_images() -> None:
    with pytest.raises(ValueError, match=r"rows have shape \(10,\); remove augment"):
        check_augmentation("shifts", (10,))
    with pytest.raises(ValueError, match="augment must be one of none, shifts"):
        check_augmentation("flips", (1, 8, 8))


def test_a_spec_that_shifts_a_table_is_refused_before_any_trial() -> None:
    spec = parse_spec(
        tiny_spec(
            model="regressor",
            dataset={"name": "diabetes"},
            scoring="neg_mean_squared_error",
            augment="shifts",
        )
    )
    with pytest.raises(HpoError, match=r"augment: shifts moves images.*dataset 'diabetes'"):
        check_compatible(spec, load_dataset("diabetes"))


def test_an_unknown_augmentation_in_a_spec_names_the_key() -> None:
    with pytest.raises(SpecError, match="augment"):
        parse_spec(tiny_spec(augment="flips"))


def test_the_spec_passes_augment_to_the_net() -> None:
    spec = parse_spec(tiny_spec(augment="shifts"))
    assert spec.configuration({})["augment"] == "shifts"
    assert "augment" not in parse_spec(tiny_spec()).configuration({})


@pytest.mark.slow
@pytest.mark.parametrize("fixed_validation", [True, False])
def test_a_net_trains_on_the_copies_and_validates_on_the_rows_as_they_are(
    fixed_validation: bool,
) -> None:
    data = load_dataset("digits")
    spec = parse_spec(tiny_spec(augment="shifts"))
    params = {**spec.configuration({}), "early_stopping_patience": 2, "max_epochs": 2}
    net = build_net(spec, data, params, "cpu")
    if not fixed_validation:
        net.set_params(train_split=None)  # skorch's ValidSplit of validation_fraction
    X, y = data.X_train[:200], data.y_train[:200]

    train, valid = net.get_split_datasets(X, y)

    n_valid = 350 if fixed_validation else 40
    assert len(valid) == n_valid and len(train) == 5 * (200 - (0 if fixed_validation else 40))
    valid_X = np.asarray(valid.dataset.X if hasattr(valid, "dataset") else valid.X)
    if fixed_validation:
        np.testing.assert_array_equal(valid_X, data.X_valid)  # not shifted, not copied
    else:
        held_out = {row.tobytes() for row in np.asarray(X)[valid.indices]}
        trained = {row.tobytes() for row in np.asarray(train.X)}
        assert not held_out & trained  # no held-out row, nor a copy of one, is trained on
    net.fit(X, y)
    batches = net.history[-1, "train_batch_count"]
    assert batches == -(-len(train) // 128)  # the epoch ran over the copies too


def test_a_spec_stored_before_augment_and_include_validation_is_the_same_spec() -> None:
    spec = parse_spec(tiny_spec())
    stored = json.loads(spec.to_json())
    del stored["augment"], stored["refit"]["include_validation"]  # what an older hpo stored
    assert spec_json_equal(json.dumps(stored), spec.to_json())
    assert not spec_json_equal(spec.to_json(), parse_spec(tiny_spec(augment="shifts")).to_json())


def test_a_refit_key_that_does_not_exist_is_named() -> None:
    with pytest.raises(SpecError, match="refit.include_valid"):
        parse_spec(tiny_spec(refit={"include_valid": True}))
    assert parse_spec(tiny_spec(refit={"include_validation": True})).refit.include_validation


def test_the_spec_accepts_exactly_the_engines_augmentations() -> None:
    accepted = typing.get_args(StudySpec.model_fields["augment"].annotation)
    assert accepted == AUGMENTATIONS
