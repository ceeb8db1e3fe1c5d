"""An optimizer step without ``torch.optim``'s per-step Python.

``optimizer.step()`` wraps the update in Python that runs again on every step: a profiler
record, the step hooks, ``_init_group`` walking each parameter and its state, the grouping of
tensors by device and dtype, the checks for a grad scaler. On the small nets of a search that
wrapper costs more than the update itself: ``DirectStep`` takes 60 to 80 us off a 450 to
500 us digits MLP training step with Adam on our 2-core machines (docs/benchmarks.md).

``DirectStep`` gathers each group's state tensors once and calls what ``optimizer.step()``
calls, with the same arguments, read from the param groups at every step (so a learning-rate
scheduler works as usual): torch's fused kernels for a fused Adam, AdamW or SGD
(``torch._fused_adam_``, ``torch._fused_adamw_``, ``torch._fused_sgd_``), torch's functional
update for Adamax and RMSprop (``torch.optim.adamax.adamax``, ``torch.optim.rmsprop.rmsprop``).
The update is bit for bit the same (``tests/test_direct_step.py``). Whatever it does not cover
goes through ``optimizer.step()``: the first step of a parameter (which creates its state), a
parameter without a gradient or with a sparse one, complex parameters, step hooks, a grad
scaler, a tensor learning rate, ``differentiable=True``, an Adam, AdamW or SGD built without
``fused=True``, any other optimizer, and subclasses of these.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch.optim import SGD, Adam, Adamax, AdamW, Optimizer, RMSprop
from torch.optim import optimizer as optimizer_module
from torch.optim.adamax import adamax
from torch.optim.rmsprop import rmsprop

Group = dict[str, Any]
Tensors = list[torch.Tensor]


@dataclass(frozen=True)
class _Update:
    """How one optimizer class updates a group: the state it reads (by name, in the order
    ``apply`` takes them) and the call that updates parameters and state in place."""

    state_names: Callable[[Group], list[str]]
    apply: Callable[[Group, Tensors, list[Tensors]], None]
    #: Whether it needs the group built with ``fused=True`` (the kernels do).
    fused: bool


#: Per group: the parameters and, for each of the update's state names, their state tensors.
_GroupState = tuple[Tensors, list[Tensors]]


class DirectStep:
    """Steps an optimizer as ``optimizer.step()`` would, without its per-step Python.

    Args:
        optimizer: the optimizer to step; one it does not cover is stepped by its own ``step``.
    """

    def __init__(self, optimizer: Optimizer) -> None:
        self.optimizer = optimizer
        self._update = _UPDATES.get(type(optimizer))
        self._state: Any = None
        self._key: tuple[Any, ...] | None = None
        self._groups: list[_GroupState] = []
        #: Steps taken directly, without ``optimizer.step()``.
        self.direct_steps = 0

    def step(self) -> None:
        """One optimization step (the gradients are already computed)."""
        groups = self._ready_groups()
        if groups is None:
            self.optimizer.step()
            return
        with torch.no_grad():
            for group, (params, tensors) in zip(self.optimizer.param_groups, groups, strict=True):
                self._update.apply(group, params, tensors)  # type: ignore[union-attr]
        self.direct_steps += 1

    def _ready_groups(self) -> list[_GroupState] | None:
        # None whenever optimizer.step() must run: what it would do differently (hooks, a
        # grad scaler, an option the calls below do not pass, a parameter without a gradient,
        # which torch skips) or what only it creates (the state of a first step).
        optimizer, update = self.optimizer, self._update
        if update is None or _has_hooks(optimizer):
            return None
        if getattr(optimizer, "grad_scale", None) is not None:
            return None
        if getattr(optimizer, "found_inf", None) is not None:
            return None
        for group in optimizer.param_groups:
            if update.fused and not group.get("fused"):
                return None
            if group.get("differentiable") or isinstance(group["lr"], torch.Tensor):
                return None
        # The gathered state holds while the optimizer keeps its state object (a new one
        # comes with load_state_dict), its groups and their parameters and options.
        key = (
            len(optimizer.state),
            tuple(
                (id(group["params"]), len(group["params"]), tuple(update.state_names(group)))
                for group in optimizer.param_groups
            ),
        )
        if optimizer.state is not self._state or key != self._key:
            groups = [_group_state(optimizer, update, group) for group in optimizer.param_groups]
            if any(state is None for state in groups):
                return None
            self._state, self._key, self._groups = optimizer.state, key, groups  # type: ignore[assignment]
        for params, _ in self._groups:
            for param in params:
                if param.grad is None or param.grad.is_sparse:
                    return None
        return self._groups


def _has_hooks(optimizer: Optimizer) -> bool:
    return bool(
        getattr(optimizer, "_optimizer_step_pre_hooks", None)
        or getattr(optimizer, "_optimizer_step_post_hooks", None)
        or getattr(optimizer_module, "_global_optimizer_pre_hooks", None)
        or getattr(optimizer_module, "_global_optimizer_post_hooks", None)
    )


def _group_state(optimizer: Optimizer, update: _Update, group: Group) -> _GroupState | None:
    params = list(group["params"])
    if any(torch.is_complex(param) for param in params):
        return None
    names = update.state_names(group)
    states = [optimizer.state.get(param) for param in params]
    if names and any(not state or any(state.get(n) is None for n in names) for state in states):
        return None
    return params, [[state[name] for state in states] for name in names]  # type: ignore[index]


def _grads(params: Tensors) -> Tensors:
    return [param.grad for param in params]  # type: ignore[misc]


def _adam_state(group: Group) -> list[str]:
    return ["exp_avg", "exp_avg_sq", *(["max_exp_avg_sq"] if group["amsgrad"] else []), "step"]


def _adam(decoupled: bool) -> Callable[[Group, Tensors, list[Tensors]], None]:
    def apply(group: Group, params: Tensors, tensors: list[Tensors]) -> None:
        exp_avgs, exp_avg_sqs, *max_exp_avg_sqs, steps = tensors
        beta1, beta2 = group["betas"]
        kernel = (
            torch._fused_adamw_
            if decoupled or group.get("decoupled_weight_decay")
            else torch._fused_adam_
        )
        torch._foreach_add_(steps, 1)
        kernel(
            params,
            _grads(params),
            exp_avgs,
            exp_avg_sqs,
            max_exp_avg_sqs[0] if max_exp_avg_sqs else [],
            steps,
            amsgrad=group["amsgrad"],
            lr=group["lr"],
            beta1=float(beta1),
            beta2=float(beta2),
            weight_decay=group["weight_decay"],
            eps=group["eps"],
            maximize=group["maximize"],
            grad_scale=None,
            found_inf=None,
        )

    return apply


def _sgd(group: Group, params: Tensors, tensors: list[Tensors]) -> None:
    torch._fused_sgd_(
        params,
        _grads(params),
        tensors[0] if tensors else [],
        weight_decay=group["weight_decay"],
        momentum=group["momentum"],
        lr=group["lr"],
        dampening=group["dampening"],
        nesterov=group["nesterov"],
        maximize=group["maximize"],
        is_first_step=False,
        grad_scale=None,
        found_inf=None,
    )


def _functional_options(group: Group) -> dict[str, Any]:
    # The options torch's functional updates (adamax, rmsprop) share, as their optimizers'
    # step() passes them; DirectStep only runs without differentiable and complex parameters.
    return {
        "lr": group["lr"],
        "eps": group["eps"],
        "weight_decay": group["weight_decay"],
        "foreach": group["foreach"],
        "maximize": group["maximize"],
        "capturable": group["capturable"],
        "differentiable": False,
        "has_complex": False,
    }


def _adamax(group: Group, params: Tensors, tensors: list[Tensors]) -> None:
    exp_avgs, exp_infs, steps = tensors
    beta1, beta2 = group["betas"]
    adamax(
        params,
        _grads(params),
        exp_avgs,
        exp_infs,
        steps,
        beta1=beta1,
        beta2=beta2,
        **_functional_options(group),
    )


def _rmsprop_state(group: Group) -> list[str]:
    return [
        "square_avg",
        *(["grad_avg"] if group["centered"] else []),
        *(["momentum_buffer"] if group["momentum"] > 0 else []),
        "step",
    ]


def _rmsprop(group: Group, params: Tensors, tensors: list[Tensors]) -> None:
    square_avgs, steps = tensors[0], tensors[-1]
    grad_avgs = tensors[1] if group["centered"] else []
    momentum_buffers = tensors[-2] if group["momentum"] > 0 else []
    rmsprop(
        params,
        _grads(params),
        square_avgs,
        grad_avgs,
        momentum_buffers,
        steps,
        alpha=group["alpha"],
        momentum=group["momentum"],
        centered=group["centered"],
        **_functional_options(group),
    )


_UPDATES: dict[type[Optimizer], _Update] = {
    Adam: _Update(_adam_state, _adam(decoupled=False), fused=True),
    AdamW: _Update(_adam_state, _adam(decoupled=True), fused=True),
    SGD: _Update(lambda group: ["momentum_buffer"] if group["momentum"] != 0 else [], _sgd, True),
    Adamax: _Update(lambda group: ["exp_avg", "exp_inf", "step"], _adamax, fused=False),
    RMSprop: _Update(_rmsprop_state, _rmsprop, fused=False),
}
