"""DirectStep updates parameters and optimizer state bit for bit as ``optimizer.step()`` does.

Each test steps two identical models with identical gradients: one by torch's own
``optimizer.step()``, the other by ``DirectStep``, and compares every parameter and every
state tensor exactly. ``direct_steps`` shows which steps skipped ``optimizer.step()``.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import pytest
import torch
from torch import nn

from hpo.direct_step import DirectStep

STEPS = 12


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 5), nn.Tanh(), nn.Linear(5, 3))


def _set_grads(model: nn.Module, step: int, skip: str | None = None) -> None:
    generator = torch.Generator().manual_seed(step)
    for name, param in model.named_parameters():
        param.grad = None if name == skip else torch.randn(param.shape, generator=generator)


def _assert_same(ours: tuple[nn.Module, torch.optim.Optimizer], torchs: tuple[Any, Any]) -> None:
    (model, optimizer), (reference, reference_optimizer) = ours, torchs
    for (name, param), expected in zip(
        model.named_parameters(), reference.parameters(), strict=True
    ):
        assert torch.equal(param, expected), name
    ours_state = optimizer.state_dict()["state"]
    theirs = reference_optimizer.state_dict()["state"]
    assert ours_state.keys() == theirs.keys()
    for index, state in theirs.items():
        for key, value in state.items():
            got = ours_state[index][key]
            assert (got is None and value is None) or torch.equal(got, value), (index, key)


def _pair(
    make: Callable[[Any], torch.optim.Optimizer],
) -> tuple[tuple[nn.Module, torch.optim.Optimizer], tuple[nn.Module, torch.optim.Optimizer]]:
    model = _model()
    reference = copy.deepcopy(model)
    return (model, make(model.parameters())), (reference, make(reference.parameters()))


def _run(
    make: Callable[[Any], torch.optim.Optimizer],
    between: Callable[[int, Any, Any], None] | None = None,
    skip: dict[int, str] | None = None,
) -> DirectStep:
    ours, torchs = _pair(make)
    fused = DirectStep(ours[1])
    for step in range(STEPS):
        for model, _ in (ours, torchs):
            _set_grads(model, step, (skip or {}).get(step))
        fused.step()
        torchs[1].step()
        _assert_same(ours, torchs)
        if between is not None:
            between(step, ours[1], torchs[1])
    return fused


OPTIMIZERS = {
    "adam": lambda p: torch.optim.Adam(p, lr=0.01, fused=True),
    "adam-weight-decay": lambda p: torch.optim.Adam(p, lr=0.01, weight_decay=0.1, fused=True),
    "adam-amsgrad-maximize": lambda p: torch.optim.Adam(
        p, lr=0.01, amsgrad=True, maximize=True, betas=(0.8, 0.9), fused=True
    ),
    "adamw": lambda p: torch.optim.AdamW(p, lr=0.01, weight_decay=0.05, fused=True),
    "sgd": lambda p: torch.optim.SGD(p, lr=0.1, fused=True),
    "sgd-weight-decay": lambda p: torch.optim.SGD(p, lr=0.1, weight_decay=0.01, fused=True),
    "sgd-nesterov": lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9, nesterov=True, fused=True),
    "sgd-dampening": lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.5, dampening=0.3, fused=True),
    "adamax": lambda p: torch.optim.Adamax(p, lr=0.01, weight_decay=0.01),
    "adamax-maximize": lambda p: torch.optim.Adamax(p, lr=0.01, betas=(0.8, 0.9), maximize=True),
    "rmsprop": lambda p: torch.optim.RMSprop(p, lr=0.01, weight_decay=0.01),
    "rmsprop-centered": lambda p: torch.optim.RMSprop(p, lr=0.01, centered=True),
    "rmsprop-momentum": lambda p: torch.optim.RMSprop(p, lr=0.01, momentum=0.9),
    "rmsprop-centered-momentum": lambda p: torch.optim.RMSprop(
        p, lr=0.01, centered=True, momentum=0.5, alpha=0.9
    ),
}


@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_every_step_is_bit_for_bit_torchs(name: str) -> None:
    fused = _run(OPTIMIZERS[name])
    # Only a first step with state to create (every optimizer's but momentum-free SGD's)
    # needs torch.
    needs_state = not name.startswith("sgd") or name in ("sgd-nesterov", "sgd-dampening")
    assert fused.direct_steps == STEPS - needs_state


def test_a_learning_rate_schedule_is_followed() -> None:
    def decay(step: int, ours: Any, torchs: Any) -> None:
        for optimizer in (ours, torchs):
            for group in optimizer.param_groups:
                group["lr"] *= 0.5

    assert _run(OPTIMIZERS["adam"], between=decay).direct_steps == STEPS - 1


def test_a_parameter_without_a_gradient_is_left_to_torch() -> None:
    # torch skips it (its state does not advance); so the whole step goes through torch.
    fused = _run(OPTIMIZERS["adam"], skip={4: "2.bias", 7: "0.weight"})
    assert fused.direct_steps == STEPS - 3


def test_a_parameter_first_trained_late_gets_its_state_from_torch() -> None:
    fused = _run(OPTIMIZERS["adam-amsgrad-maximize"], skip={0: "0.bias", 1: "0.bias"})
    assert fused.direct_steps == STEPS - 3


def test_loaded_state_and_new_param_groups_are_picked_up() -> None:
    extra = (nn.Parameter(torch.ones(4)), nn.Parameter(torch.ones(4)))

    def reload(step: int, ours: Any, torchs: Any) -> None:
        if step == 3:
            ours.load_state_dict(copy.deepcopy(torchs.state_dict()))
        if step == 6:
            for optimizer, param in zip((ours, torchs), extra, strict=True):
                optimizer.add_param_group({"params": [param], "lr": 0.5})
        if step >= 6:
            for param in extra:
                param.grad = torch.full((4,), float(step))

    _run(OPTIMIZERS["adamw"], between=reload)
    assert torch.equal(extra[0], extra[1])


def test_hooks_a_grad_scaler_and_other_optimizers_go_through_torch() -> None:
    calls: list[int] = []
    ours, torchs = _pair(OPTIMIZERS["adam"])
    ours[1].register_step_pre_hook(lambda optimizer, args, kwargs: calls.append(1))
    fused = DirectStep(ours[1])
    for step in range(3):
        for model, _ in (ours, torchs):
            _set_grads(model, step)
        fused.step()
        torchs[1].step()
    _assert_same(ours, torchs)
    assert calls == [1, 1, 1]
    assert fused.direct_steps == 0

    for make in (
        lambda p: torch.optim.Adam(p, lr=0.01),  # not fused
        lambda p: torch.optim.Adagrad(p, lr=0.01),  # not one DirectStep knows
        lambda p: torch.optim.Adam(p, lr=torch.tensor(0.01), fused=True),  # tensor lr
        lambda p: torch.optim.Adamax(p, lr=torch.tensor(0.01)),
    ):
        assert _run(make).direct_steps == 0

    class Custom(torch.optim.Adam):
        pass

    assert _run(lambda p: Custom(p, lr=0.01, fused=True)).direct_steps == 0
