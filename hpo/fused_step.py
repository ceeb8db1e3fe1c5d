"""A fused optimizer step without ``torch.optim``'s per-step Python.

torch's fused Adam, AdamW and SGD update every parameter of a group in one kernel call, but
``optimizer.step()`` wraps that call in Python that runs again on every step: a profiler
record, the step hooks, ``_init_group`` walking each parameter and its state, the grouping of
tensors by device and dtype, the checks for a grad scaler. On the small nets of a search that
wrapper costs more than the update itself: ``FusedStep`` takes 65 of 450 us off a digits MLP
training step on our 2-core machines (``benchmarks/trial_speed.py`` times whole trials).

``FusedStep`` gathers each group's state tensors once and calls the same kernels
(``torch._fused_adam_``, ``torch._fused_adamw_``, ``torch._fused_sgd_``) with the same
arguments ``optimizer.step()`` passes them, read from the param groups at every step (so a
learning-rate scheduler works as usual): the update is bit for bit the same
(``tests/test_fused_step.py``). Whatever it does not cover goes through ``optimizer.step()``:
the first step of a parameter (which creates its state), a parameter without a gradient or with
a sparse one, step hooks, a grad scaler, a tensor learning rate, an optimizer built without
``fused=True``, or a subclass of these optimizers.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch.optim import SGD, Adam, AdamW, Optimizer
from torch.optim import optimizer as optimizer_module

#: Per group: the parameters and the state tensors the kernel reads and writes besides them.
_GroupState = tuple[list[torch.Tensor], list[list[torch.Tensor]]]


class FusedStep:
    """Steps a fused ``Adam``, ``AdamW`` or ``SGD`` as ``optimizer.step()`` would, faster.

    Args:
        optimizer: the optimizer to step; any other optimizer is stepped by its own ``step``.
    """

    def __init__(self, optimizer: Optimizer) -> None:
        self.optimizer = optimizer
        self._kernel: Callable[[dict[str, Any], _GroupState], None] | None = _KERNELS.get(
            type(optimizer)
        )
        self._state: Any = None
        self._key: tuple[Any, ...] | None = None
        self._groups: list[_GroupState] = []
        #: Steps taken by the kernels directly, without ``optimizer.step()``.
        self.fused_steps = 0

    def step(self) -> None:
        """One optimization step (the gradients are already computed)."""
        groups = self._ready_groups()
        if groups is None:
            self.optimizer.step()
            return
        with torch.no_grad():
            for group, state in zip(self.optimizer.param_groups, groups, strict=True):
                self._kernel(group, state)  # type: ignore[misc]
        self.fused_steps += 1

    def _ready_groups(self) -> list[_GroupState] | None:
        # None whenever optimizer.step() must run: what it would do differently (hooks, a
        # grad scaler, an option the kernel call below does not pass, a parameter without a
        # gradient, which torch skips) or what only it creates (the state of a first step).
        optimizer = self.optimizer
        if self._kernel is None or _has_hooks(optimizer):
            return None
        if getattr(optimizer, "grad_scale", None) is not None:
            return None
        if getattr(optimizer, "found_inf", None) is not None:
            return None
        for group in optimizer.param_groups:
            if not group.get("fused") or group.get("differentiable"):
                return None
            if isinstance(group["lr"], torch.Tensor):
                return None
        # The gathered state holds while the optimizer keeps its state object (a new one
        # comes with load_state_dict), its groups and their parameters and options.
        key = (
            len(optimizer.state),
            tuple(
                (id(group["params"]), len(group["params"]), _needs_buffers(group))
                for group in optimizer.param_groups
            ),
        )
        if optimizer.state is not self._state or key != self._key:
            groups = [_group_state(optimizer, group) for group in optimizer.param_groups]
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


def _needs_buffers(group: dict[str, Any]) -> tuple[bool, bool]:
    # Which state tensors the kernel needs: SGD's momentum buffers (with momentum), Adam's
    # third average (with amsgrad).
    return group.get("momentum", 0) != 0, bool(group.get("amsgrad", False))


def _group_state(optimizer: Optimizer, group: dict[str, Any]) -> _GroupState | None:
    params = list(group["params"])
    states = [optimizer.state.get(param) for param in params]
    if isinstance(optimizer, SGD):
        if group["momentum"] == 0:
            return params, []
        names = ["momentum_buffer"]
    else:
        names = ["exp_avg", "exp_avg_sq", "step"]
        if group["amsgrad"]:
            names.insert(2, "max_exp_avg_sq")
    if any(not state or any(state.get(name) is None for name in names) for state in states):
        return None
    return params, [[state[name] for state in states] for name in names]  # type: ignore[index]


def _adam(decoupled: bool) -> Callable[[dict[str, Any], _GroupState], None]:
    def step(group: dict[str, Any], state: _GroupState) -> None:
        params, tensors = state
        if group["amsgrad"]:
            exp_avgs, exp_avg_sqs, max_exp_avg_sqs, steps = tensors
        else:
            (exp_avgs, exp_avg_sqs, steps), max_exp_avg_sqs = tensors, []
        beta1, beta2 = group["betas"]
        kernel = (
            torch._fused_adamw_
            if decoupled or group.get("decoupled_weight_decay")
            else torch._fused_adam_
        )
        torch._foreach_add_(steps, 1)
        kernel(
            params,
            [param.grad for param in params],
            exp_avgs,
            exp_avg_sqs,
            max_exp_avg_sqs,
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

    return step


def _sgd(group: dict[str, Any], state: _GroupState) -> None:
    params, tensors = state
    torch._fused_sgd_(
        params,
        [param.grad for param in params],
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


_KERNELS: dict[type[Optimizer], Callable[[dict[str, Any], _GroupState], None]] = {
    Adam: _adam(decoupled=False),
    AdamW: _adam(decoupled=True),
    SGD: _sgd,
}
