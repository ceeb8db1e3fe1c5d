"""A user's own module trained as K stacked folds through ``torch.func``: ``VmappedFolds``.

hpo's MLP and CNN are stacked layer by layer (``hpo.engine.folds.stacked.StackedFolds``), which
needs to know every layer. A user's module is a forward function hpo did not write, so it is
stacked by torch instead: its parameters are stacked K times (``torch.func.stack_module_state``)
and its forward runs over the K folds at once under ``torch.func.vmap`` of
``torch.func.functional_call``, so each of torch's ops runs once over the K folds' values. The
stacked parameters are ``nn.Parameter``s of ``VmappedFolds``, so the trainer net's optimizer
(every one of hpo's updates each number on its own) steps the K folds in one step.

Which modules qualify is decided by running them, not by reading them. ``vmap_refusal``
accepts a module when, on a batch of two rows, in one cheap probe:

- its parameters are materialized floating-point tensors (no lazy module), and not of rank 3
  and rank 4 together: a net with 4-dimensional parameters is moved to channels-last
  (``hpo.engine.nets``), which the 5-dimensional stacked copy of a 4-dimensional one cannot take;
- a forward and backward pass in train mode leaves its buffers as they were: a buffer that
  training changes (BatchNorm's running statistics, a step counter) would have to be kept and
  updated per fold inside ``vmap``, which cannot update an unstacked buffer in place;
- ``vmap`` runs its forward (train and eval mode) and the backward over two stacked copies of
  its parameters with ``randomness="error"``. This refuses random draws in training (dropout,
  noise): under ``vmap`` they cannot come from each fold's own generator in the order its own
  fit draws them, so a fold could not end where its own fit ends. It refuses data-dependent
  Python control flow (``if x.sum() > 0``, ``.item()``) too, which ``vmap`` cannot trace;
- its output is one tensor with a row per input row.

What the probe cannot see is Python state the forward keeps (an attribute set in
``forward``): a module must be a function of its parameters, buffers and input, as
``functional_call`` assumes.

``net_refusal``, which ``hpo.engine.folds.plan.stackable`` asks for a trial's net, adds
what the probe does not decide: the module is built from the net's ``module__*`` parameters
(so its constructor must take ``input_shape``, to make a batch), and it must take under the
FLOPs per batch the plan gives (``hpo.engine.folds.plan.VMAPPED_NET_FLOPS``), the size up to
which stacking through ``vmap`` was measured to pay. A refused module's folds run one after
another (or in fold processes, where the worker has them), with the same scores.
"""

from __future__ import annotations

import copy
import logging
import re
from collections.abc import Callable
from typing import Any

import torch
from torch import nn
from torch.func import functional_call, stack_module_state, vmap
from torch.nn.parameter import is_lazy

from hpo.engine.folds.flops import forward_flops
from hpo.engine.threads import torch_threads

logger = logging.getLogger("hpo.engine.folds.vmapped")

#: Rows of the probe's batch: two, so that anything computed across rows is computed.
PROBE_ROWS = 2

#: Refusals already logged, so that a worker says why once, not on every trial.
_logged: set[tuple[str, str]] = set()


class VmappedFolds(nn.Module):
    """K copies of a user's ``module``, trained side by side through ``torch.func.vmap``.

    The interface of ``hpo.engine.folds.stacked.StackedFolds``, which ``fit_stacked`` uses.

    Args:
        module: the initialized module every fold starts from; ``vmap_refusal`` accepts it.
            It is kept as the template that ``functional_call`` runs, not trained itself.
        folds: K.

    Its forward takes a list of K batches, one per fold, and returns K outputs stacked in one
    tensor (``(K, N, outputs)``) when the batches have the same size, else a list of K, each
    computed with fold k's slice of the stacked parameters.
    """

    def __init__(self, module: nn.Module, folds: int) -> None:
        super().__init__()
        # Not a submodule: its own parameters are not trained, and must not reach the optimizer.
        self._template = (module,)
        self.names = [name for name, _ in module.named_parameters()]
        stacked, _ = stack_module_state([module] * folds)
        self.stacked = nn.ParameterList(
            nn.Parameter(stacked[name], requires_grad=stacked[name].requires_grad)
            for name in self.names
        )
        self.aliases = _parameter_aliases(module)
        self.folds: list[torch.Generator] = [torch.Generator() for _ in range(folds)]
        self._vmapped = vmap(self._call, randomness="error")

    @property
    def module(self) -> nn.Module:
        """The template module (its own parameters unused)."""
        return self._template[0]

    def set_generators(self, generators: list[torch.Generator]) -> None:
        """The folds' generators; the module draws nothing (``vmap_refusal``), so they only
        say how many folds there are."""
        self.folds = generators

    def train(self, mode: bool = True) -> VmappedFolds:
        super().train(mode)
        self.module.train(mode)
        return self

    def forward(self, batches: list[torch.Tensor]) -> torch.Tensor | list[torch.Tensor]:
        if len({len(batch) for batch in batches}) > 1:
            return [self._single(batch, fold) for fold, batch in enumerate(batches)]
        return self._vmapped(self._parameters_by_name(), torch.stack(batches))

    def _call(self, parameters: dict[str, torch.Tensor], X: torch.Tensor) -> torch.Tensor:
        # Every name of a tied parameter is given (_parameters_by_name), so functional_call
        # need not look for ties on every call.
        return functional_call(self.module, parameters, (X,), tie_weights=False)  # type: ignore[no-any-return]

    def _parameters_by_name(self) -> dict[str, torch.Tensor]:
        """Each stacked parameter under every name the module has for it."""
        stacked = dict(zip(self.names, self.stacked, strict=True))
        return {name: stacked[source] for name, source in self.aliases.items()}

    def _single(self, X: torch.Tensor, fold: int) -> torch.Tensor:
        parameters = {name: value[fold] for name, value in self._parameters_by_name().items()}
        return self._call(parameters, X)

    def fold_state_dict(self, fold: int) -> dict[str, torch.Tensor]:
        """Fold k's weights and buffers, under the names of the module it was stacked from."""
        state = self.module.state_dict()
        for name, stacked in self._parameters_by_name().items():
            if name in state:
                state[name] = stacked[fold]
        return {name: value.detach().clone() for name, value in state.items()}


def _parameter_aliases(module: nn.Module) -> dict[str, str]:
    """Every name of each parameter (a tied one has several) -> the name
    ``named_parameters`` gives it."""
    first: dict[int, str] = {}
    aliases = {}
    for name, parameter in module.named_parameters(remove_duplicate=False):
        aliases[name] = first.setdefault(id(parameter), name)
    return aliases


def vmap_refusal(module: nn.Module, sample_batch: torch.Tensor) -> str | None:
    """Why ``module``'s folds cannot be trained as ``VmappedFolds``, or None when they can.

    Runs the probe the module docstring lists on a copy of ``module`` and the first
    ``PROBE_ROWS`` rows of ``sample_batch``; ``module`` and torch's global generator are left
    as they were.
    """
    parameters = list(module.parameters())
    if not parameters:
        return "it has no parameters to train"
    if any(is_lazy(p) for p in parameters):
        return "it has lazy parameters, not yet materialized"
    if not all(p.is_floating_point() for p in parameters):
        return "it has parameters that are not floating point"
    if {3, 4} <= {p.dim() for p in parameters}:
        return (
            "it has parameters of 3 and of 4 dimensions, whose stacked copies no one memory "
            "format fits (channels-last takes 4)"
        )
    probe = copy.deepcopy(module).train()
    X = sample_batch[:PROBE_ROWS]
    # One thread: a batch of two rows gains nothing from more, and waits for them.
    with torch.random.fork_rng(devices=[]), torch_threads(1):
        return _buffers_refusal(probe, X) or _vmap_refusal(probe, X)


def _buffers_refusal(module: nn.Module, X: torch.Tensor) -> str | None:
    """A plain forward and backward in train mode: it must run, give a row per row, and leave
    the buffers as they were."""
    before = {name: buffer.clone() for name, buffer in module.named_buffers()}
    try:
        output = module(X)
        if not isinstance(output, torch.Tensor):
            return f"its forward returns a {type(output).__name__}, not one tensor"
        if output.dim() == 0 or len(output) != len(X):
            return f"its output (shape {tuple(output.shape)}) has no row per input row"
        torch.autograd.backward(output.sum())
    except Exception as error:  # the user's code may raise anything
        return f"its forward and backward fail on a batch of {len(X)} rows: {_first_line(error)}"
    changed = [
        name
        for name, buffer in module.named_buffers()
        if name not in before or not torch.equal(buffer, before[name])
    ]
    if changed:
        return (
            f"training changes its buffers ({', '.join(changed)}), as BatchNorm's running "
            "statistics do; each fold would need its own"
        )
    return None


def _vmap_refusal(module: nn.Module, X: torch.Tensor) -> str | None:
    """Forward (train and eval mode) and backward under ``vmap`` over two stacked copies of the
    parameters, with random draws refused."""
    stacked, _ = stack_module_state([module, module])

    def call(parameters: dict[str, torch.Tensor], X: torch.Tensor) -> Any:
        return functional_call(module, parameters, (X,))

    batches = torch.stack([X, X])
    vmapped: Callable[..., Any] = vmap(call, randomness="error")
    try:
        vmapped(stacked, batches).sum().backward()
        module.eval()
        with torch.no_grad():
            vmapped(stacked, batches)
    except Exception as error:  # vmap's own refusals and the user's code alike
        message = _first_line(error)
        if "random" in message:
            return (
                "its forward draws random numbers in training (dropout, noise), which stacked "
                "folds cannot draw as each fold's own fit does"
            )
        return f"torch.func.vmap cannot run its forward and backward: {message}"
    finally:
        module.train()
    return None


def _first_line(error: Exception, limit: int = 200) -> str:
    lines = str(error).strip().splitlines()
    text = f"{type(error).__name__}: {lines[0] if lines else ''}"
    return text if len(text) <= limit else text[: limit - 1] + "…"


def net_refusal(net: Any, max_flops: int, train_rows: int | None = None) -> str | None:
    """Why hpo does not stack the folds of an unfitted skorch ``net``'s user module, or None.

    ``vmap_refusal`` for its module, built from its ``module__*`` parameters and probed with
    zeros of its ``module__input_shape`` (which hpo passes when the constructor takes it);
    then, as the plan's FLOP limits are measured, a module of ``max_flops`` or more per batch
    (of ``train_rows`` rows for ``batch_size: -1``),
    which gains nothing from being stacked this way. Logged once per module class and reason.
    """
    reason = _net_refusal(net, max_flops, train_rows)
    if reason is not None:
        name = getattr(net.module, "__qualname__", type(net.module).__name__)
        kind = re.sub(r"\d+(\.\d+)?", "N", reason)  # one line for every size of a net
        if (name, kind) not in _logged:
            _logged.add((name, kind))
            logger.info("folds of %s are not stacked: %s", name, reason)
    return reason


def _net_refusal(net: Any, max_flops: int, train_rows: int | None) -> str | None:
    arguments = net.get_params_for("module")
    shape = arguments.get("input_shape")
    if shape is None:
        return "its constructor takes no input_shape, so hpo cannot probe it with a batch"
    if not isinstance(net.module, type):
        return "it is given as an instance, not as a class hpo builds for each trial"
    try:
        with torch.random.fork_rng(devices=[]):  # the module's initialization draws
            module = net.module(**arguments)
    except Exception as error:  # the fit will raise it where it belongs
        return f"its constructor fails: {_first_line(error)}"
    reason = vmap_refusal(module, torch.zeros(PROBE_ROWS, *shape))
    if reason is not None:
        return reason
    with torch.random.fork_rng(devices=[]):
        flops = forward_flops(net, tuple(shape), train_rows)
    if flops >= max_flops:
        return (
            f"its forward takes {flops / 1e6:.1f} MFLOP per batch; stacked through vmap, "
            f"only a net under {max_flops / 1e6:.0f} MFLOP gains"
        )
    return None
