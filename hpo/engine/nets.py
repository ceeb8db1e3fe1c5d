"""skorch nets for hpo: names mapped to classes, seeded, and fed by whole-tensor batches.

``TunedClassifier`` and ``TunedRegressor`` are ordinary skorch nets (``clone``,
``set_params`` and ``cross_val_score`` work on them) with these additions, each an
estimator parameter so an exported CSV row can be applied with ``set_params(**row)``:

- ``optimizer`` may be a name (``adam``, ``sgd``, ``adamax``, ``rmsprop``), and ``criterion``
  a name (``mse``, ``huber``, ...; ``hpo.spec.names.CRITERIA``) or ``package.module:Name``;
- ``random_state`` seeds torch's generator for each ``fit`` (the weights, then the shuffles
  and dropout: ``seeded_fit``) and for an ``initialize`` of its own (the weights), forked, so
  a fit is reproducible, two clones fit identically and the caller's generator is left as it
  was (``partial_fit`` alone draws from the caller's, as in plain skorch);
- ``early_stopping_patience`` adds skorch's ``EarlyStopping`` on the validation loss;
- ``lr_schedule: cosine`` adds skorch's ``LRScheduler`` with torch's ``CosineAnnealingLR``:
  the learning rate falls from ``lr`` to 0 over ``max_epochs``, stepped after every epoch;
- ``mixed_precision`` runs the forward pass under ``torch.autocast`` in bfloat16 (the loss,
  weights, gradients and optimizer stay float32);
- ``preprocess`` scales the features by statistics fitted on the rows ``fit`` is given
  (``standard`` or ``minmax``), so each fold and the refit are scaled by their own training
  rows and a saved net predicts on raw features;
- ``augment`` adds copies of the rows a fit trains on (``shifts``: each image moved by one
  pixel four ways; ``hpo.engine.augment``), after the validation rows are split off;
- batches are sliced from whole tensors (``TensorBatches``) instead of being collated from
  per-sample ``Dataset.__getitem__`` calls, which dominates the cost of small nets (skorch#1100).

Small nets spend as much time in skorch's per-batch bookkeeping as in the arithmetic, so the
nets also trim what skorch does per batch without changing what a fit computes: callbacks are
called only for the hooks they implement, modules switch between train and eval mode only
when the mode changes, the batch losses stay on the device until the epoch ends (``.item()``
per batch would wait for a GPU after every step), and predictions and validation losses run
in batches of ``EVAL_BATCH_ROWS``. The optimizer updates every parameter in one call per
arithmetic step instead of one per parameter: Adam, AdamW and SGD with torch's fused kernel
(``fused=True``), Adamax and RMSprop with its multi-tensor loop (``foreach=True``).

All of it goes through skorch's and torch's public API: skorch's overridable steps
(``train_step``, ``train_step_single``, ``validation_step``, ``evaluation_step``,
``run_single_epoch``, ``get_iterator``, ``infer``, ``notify``) and torch's ``optimizer.step()``;
no private method of either is called or overridden, so their internals may change from one
release to the next without an optimizer silently no longer stepping. ``tests/engine/test_nets.py``
checks that a fit scores as plain skorch does and that every optimizer in ``OPTIMIZERS``
trains.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any, TypeVar

import numpy as np
import torch
from skorch import NeuralNet, NeuralNetClassifier, NeuralNetRegressor
from skorch.callbacks import Callback, EarlyStopping, LRScheduler
from skorch.dataset import Dataset, ValidSplit, get_len, unpack_data
from skorch.utils import TeeGenerator
from torch import nn
from torch.optim.lr_scheduler import CosineAnnealingLR

from hpo.engine.augment import augment
from hpo.engine.device import device_kind
from hpo.engine.preprocess import Scaling, fit_scaling
from hpo.engine.user_code import criterion_class

OPTIMIZERS: dict[str, type[torch.optim.Optimizer]] = {
    "adam": torch.optim.Adam,
    "adamw": torch.optim.AdamW,
    "adamax": torch.optim.Adamax,
    "sgd": torch.optim.SGD,
    "rmsprop": torch.optim.RMSprop,
}

_OWN_OPTIMIZERS = frozenset(OPTIMIZERS.values())

_Part = TypeVar("_Part")

#: Rows per batch when a net predicts or computes its validation loss through
#: ``TensorBatches`` and ``iterator_valid__batch_size`` is not set. Nothing is kept for a
#: backward pass, and in eval mode a row's output does not depend on the rows beside it, so a
#: bigger batch changes only the per-batch overhead (and the last bits of float rounding).
EVAL_BATCH_ROWS = 1024


def resolve_optimizer(optimizer: str | type[torch.optim.Optimizer]) -> type[torch.optim.Optimizer]:
    """Map an optimizer name to its class; a class passes through unchanged."""
    if not isinstance(optimizer, str):
        return optimizer
    try:
        return OPTIMIZERS[optimizer]
    except KeyError:
        raise ValueError(
            f"Unknown optimizer {optimizer!r}; use one of {', '.join(OPTIMIZERS)}."
        ) from None


class TensorBatches:
    """Mini-batches sliced from whole tensors, a drop-in for skorch's ``DataLoader``.

    The data is turned into tensors once, on ``device``, when skorch builds the iterator
    (once per fit or predict; data already on ``device`` is not copied), so an epoch costs
    one ``randperm`` and a gather per batch.

    Args:
        dataset: a skorch ``Dataset`` over arrays, or a ``torch.utils.data.Subset`` of one
            (what skorch's ``ValidSplit`` returns).
        batch_size: rows per batch; the last batch may be smaller.
        shuffle: draw a new order every epoch from torch's global generator (seeded by the
            net's ``random_state``). Default: False.
        device: where the tensors live; ``None`` keeps them on the CPU.
        transform: applied once to the features when the iterator is built (a net's
            ``scaling_``, so that a fit scales its rows once rather than every epoch);
            ``prescaled`` then says the batches are transformed. Default: None.
    """

    def __init__(
        self,
        dataset: Any,
        batch_size: int,
        shuffle: bool = False,
        device: str | None = None,
        transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
        **_: Any,
    ) -> None:
        X, y = _arrays_of(dataset)
        self.X = torch.as_tensor(X, device=device)
        self.prescaled = transform is not None
        if transform is not None:
            self.X = transform(self.X)
        self.y = None if y is None else torch.as_tensor(y, device=device)
        self.batch_size = batch_size
        self.shuffle = shuffle

    def __len__(self) -> int:
        return (len(self.X) + self.batch_size - 1) // self.batch_size

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor | None]]:
        X, y = self.X, self.y
        if not self.shuffle:
            for start in range(0, len(X), self.batch_size):
                stop = start + self.batch_size
                yield X[start:stop], None if y is None else y[start:stop]
            return
        # One order per epoch, each batch gathered as it is needed: the batch is still in
        # the cache when the first layer reads it. Gathering the whole epoch first and
        # slicing it costs a pass over memory more (an MNIST-shaped epoch of 12,000 rows
        # with its first layer's product: 84 ms against 57 ms, docs/benchmarks.md).
        order = torch.randperm(len(X)).to(X.device)
        for start in range(0, len(X), self.batch_size):
            rows = order[start : start + self.batch_size]
            yield X.index_select(0, rows), None if y is None else y.index_select(0, rows)


def _arrays_of(dataset: Any) -> tuple[Any, Any]:
    if isinstance(dataset, torch.utils.data.Subset):
        X, y = _arrays_of(dataset.dataset)
        index = np.asarray(dataset.indices)
        return X[index], None if y is None else y[index]
    if isinstance(dataset, Dataset):
        return dataset.X, dataset.y
    raise TypeError(
        f"TensorBatches needs a skorch Dataset over arrays, got {type(dataset).__name__}; "
        "pass iterator_train=torch.utils.data.DataLoader for other datasets."
    )


def _multi_tensor_option(
    optimizer_class: type[torch.optim.Optimizer], groups: list[Any], kwargs: dict[str, Any]
) -> dict[str, bool]:
    """``fused=True`` or ``foreach=True`` for one of hpo's optimizers, else nothing.

    torch's fused kernels (Adam, AdamW and SGD) update every parameter in one call, on the CPU
    as on a GPU; they round a few last bits differently from the per-parameter loop that
    torch uses by default on the CPU (SGD not at all). Adamax and RMSprop have no fused kernel;
    their ``foreach`` loop runs each arithmetic step over all parameters in one op (torch's
    default on a GPU, not on the CPU), with the same arithmetic as the per-parameter loop. A
    user's own ``optimizer__foreach`` or ``optimizer__fused`` wins.
    """
    if optimizer_class not in _OWN_OPTIMIZERS or {"fused", "foreach"} & kwargs.keys():
        return {}
    options = inspect.signature(optimizer_class).parameters
    params = [p for group in groups for p in group["params"]]
    fusable = all(p.device.type in ("cpu", "cuda") and p.is_floating_point() for p in params)
    if "fused" in options and fusable:
        return {"fused": True}
    return {"foreach": True} if "foreach" in options else {}


#: The schedules ``lr_schedule`` names besides ``none``: each gives skorch's ``LRScheduler``
#: for a fit of so many epochs, stepped after every epoch (``cosine``: torch's
#: ``CosineAnnealingLR``, from ``lr`` down to 0 over the fit's epochs).
LR_SCHEDULERS: dict[str, Callable[[int], LRScheduler]] = {
    "cosine": lambda epochs: LRScheduler(CosineAnnealingLR, T_max=epochs),
}


def lr_scheduler(schedule: str, epochs: int) -> LRScheduler:
    """skorch's ``LRScheduler`` of ``lr_schedule`` for a fit of ``epochs`` epochs.

    Raises:
        ValueError: an unknown ``schedule``.
    """
    if schedule not in LR_SCHEDULERS:
        choices = ", ".join(["none", *LR_SCHEDULERS])
        raise ValueError(f"lr_schedule must be one of {choices}, got {schedule!r}")
    return LR_SCHEDULERS[schedule](epochs)


@contextmanager
def seeded_rng(random_state: int | None, device: Any = "cpu") -> Iterator[None]:
    """The block draws from torch's generator seeded with ``random_state`` (the CPU's, and
    the device's on a GPU), forked: the caller's generators are restored after it
    (``torch.random.fork_rng``). ``None`` draws from the caller's generators unforked."""
    if random_state is None:
        yield
        return
    on = torch.device(device)
    devices = [on.index or 0] if on.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(random_state)
        yield


#: Set while a ``seeded_fit`` block runs: an ``initialize`` inside it draws the weights from
#: the fit's seeded stream, which the fit's shuffles and dropout then continue.
_IN_SEEDED_FIT: ContextVar[bool] = ContextVar("hpo_in_seeded_fit", default=False)


@contextmanager
def seeded_fit(random_state: int | None, device: Any = "cpu") -> Iterator[None]:
    """A fit's randomness: ``seeded_rng``, in which ``initialize`` draws the weights and the
    training then draws on from where the weights left the stream (as a fit seeded once, at
    its start, would). ``hpo.engine.folds.stacked_fit`` builds each fold's start here too."""
    token = _IN_SEEDED_FIT.set(True)
    try:
        with seeded_rng(random_state, device):
            yield
    finally:
        _IN_SEEDED_FIT.reset(token)


class _TunedNet(NeuralNet):
    """What ``TunedClassifier`` and ``TunedRegressor`` add to skorch's nets; see their docs.

    A ``NeuralNet`` itself, so that its methods are typed as a skorch net's; the two public
    classes put it before skorch's classifier or regressor.
    """

    default_criterion: type[nn.Module]
    module_: nn.Module  # skorch sets it in initialize_module

    def __init__(
        self,
        module: Any,
        *args: Any,
        criterion: Any = None,
        optimizer: Any = "adam",
        random_state: int | None = 0,
        early_stopping_patience: int | None = None,
        lr_schedule: str = "none",
        validation_fraction: float = 0.2,
        mixed_precision: bool = False,
        preprocess: str = "none",
        augment: str = "none",
        train_split: Any = None,
        iterator_train: Any = TensorBatches,
        iterator_valid: Any = TensorBatches,
        verbose: int = 0,
        **kwargs: Any,
    ) -> None:
        super().__init__(
            module,
            *args,
            criterion=criterion,
            optimizer=optimizer,
            train_split=train_split,
            iterator_train=iterator_train,
            iterator_valid=iterator_valid,
            verbose=verbose,
            **kwargs,
        )
        self.random_state = random_state
        self.early_stopping_patience = early_stopping_patience
        self.lr_schedule = lr_schedule
        self.validation_fraction = validation_fraction
        self.mixed_precision = mixed_precision
        self.preprocess = preprocess
        self.augment = augment

    def fit(self, X: Any, y: Any = None, **fit_params: Any) -> Any:
        """skorch's ``fit``, after fitting ``preprocess`` on ``X``, the rows it trains on, with
        ``augment``'s copies of them (``hpo.engine.preprocess``); a warm start keeps the
        scaling it had. With a ``random_state``, the fit draws from torch's generator seeded
        with it inside ``seeded_rng``, so the caller's generator is as it was afterwards."""
        if not (self.warm_start and hasattr(self, "scaling_")):
            # The copies only when a scaling reads them: five times the rows is no small copy.
            rows = X if self.preprocess == "none" else augment(self.augment, X, None)[0]
            self.scaling_: Scaling | None = fit_scaling(self.preprocess, rows)
        with seeded_fit(self.random_state, self.device):
            return super().fit(X, y, **fit_params)

    def initialize(self) -> Any:
        if self.mixed_precision not in (True, False):
            raise ValueError(
                f"mixed_precision must be true or false, got {self.mixed_precision!r}"
            )
        cuda = device_kind(self.device) == "cuda"
        if (
            self.mixed_precision
            and cuda
            and not torch.cuda.is_bf16_supported(including_emulation=False)
        ):
            raise ValueError(
                "mixed_precision needs a GPU with bfloat16 (compute capability 8.0 or newer: "
                f"A100, L4, H100, RTX 30xx and later); {torch.cuda.get_device_name()} has none. "
                "Remove mixed_precision from the spec."
            )
        if cuda:
            # Every batch of a fit has the same shape (but the last), so the fastest
            # convolution algorithm is worth finding once.
            torch.backends.cudnn.benchmark = True
        if _IN_SEEDED_FIT.get():  # a fit's: the stream goes on into its training
            return super().initialize()
        # Called on its own: the weights from a seeded fork, the caller's generator untouched.
        with seeded_rng(self.random_state, self.device):
            return super().initialize()

    def initialize_module(self) -> Any:
        super().initialize_module()
        module = self.module_
        on_cpu = device_kind(self.device) == "cpu"
        if on_cpu and any(p.dim() == 4 for p in module.parameters()):
            # oneDNN's CPU convolutions, pooling and batch norm run faster on channels-last
            # (NHWC) tensors (measured: docs/benchmarks.md). A convolution whose weight
            # is channels-last returns channels-last outputs, so the layers after it follow.
            self.module_ = module.to(memory_format=torch.channels_last)
        return self

    def get_default_callbacks(self) -> list[tuple[str, Any]]:
        callbacks = list(super().get_default_callbacks())
        if not self.verbose:
            # PrintLog formats a table every epoch even when it prints nothing.
            callbacks = [(name, cb) for name, cb in callbacks if name != "print_log"]
        if self.early_stopping_patience is not None:
            callbacks.append(
                (
                    "early_stopping",
                    EarlyStopping(patience=self.early_stopping_patience, load_best=True),
                )
            )
        if self.lr_schedule != "none":
            callbacks.append(("lr_schedule", lr_scheduler(self.lr_schedule, self.max_epochs)))
        return callbacks

    def initialize_criterion(self) -> Any:
        # skorch's, but the criterion may be a name (mse, huber, ...) or package.module:Name.
        loss = criterion_class(self.criterion, self.default_criterion)
        kwargs = self.get_params_for("criterion")
        self.criterion_ = self.initialized_instance(loss, kwargs)
        return self

    def initialize_optimizer(self, triggered_directly: Any = None) -> Any:
        named_parameters = self.get_all_learnable_params()
        args, kwargs = self.get_params_for_optimizer("optimizer", named_parameters)
        optimizer_class = resolve_optimizer(self.optimizer)
        (groups,) = args
        kwargs = {**kwargs, **_multi_tensor_option(optimizer_class, groups, kwargs)}
        self.optimizer_ = optimizer_class(groups, **kwargs)
        return self

    def train_step(self, batch: Any, **fit_params: Any) -> dict[str, Any]:
        """One optimization step on ``batch``: skorch's ``train_step``, without the closure
        for hpo's own optimizers (which call it exactly once).

        A net whose only optimizer is one of ``OPTIMIZERS`` zeroes the gradients, computes
        them (``train_step_single``), tells the callbacks (``on_grad_computed``) and steps, as
        skorch's closure does inside ``optimizer.step(closure)``. Any other optimizer, or a
        subclass's optimizers of its own, go through skorch's ``train_step``, so an optimizer
        that calls the closure more than once (LBFGS) works as in plain skorch.
        """
        optimizer = self.optimizer_
        optimizers = self._torch_parts(torch.optim.Optimizer)
        if type(optimizer) not in _OWN_OPTIMIZERS or optimizers != [optimizer]:
            plain: dict[str, Any] = super().train_step(batch, **fit_params)
            return plain
        optimizer.zero_grad(set_to_none=True)
        step = self.train_step_single(batch, **fit_params)
        self.notify(
            "on_grad_computed",
            named_parameters=TeeGenerator(self.get_all_learnable_params()),
            batch=batch,
            training=True,
        )
        optimizer.step()
        return step

    def train_step_single(self, batch: Any, **fit_params: Any) -> dict[str, Any]:
        # skorch's, but for the mode switch (see _train_mode).
        self._train_mode(True)
        Xi, yi = unpack_data(batch)
        y_pred = self.infer(Xi, **fit_params)
        loss = self.get_loss(y_pred, yi, X=Xi, training=True)
        loss.backward()
        return {"loss": loss, "y_pred": y_pred}

    def validation_step(self, batch: Any, **fit_params: Any) -> dict[str, Any]:
        # skorch's, but for the mode switch (see _train_mode).
        self._train_mode(False)
        Xi, yi = unpack_data(batch)
        with torch.no_grad():
            y_pred = self.infer(Xi, **fit_params)
            loss = self.get_loss(y_pred, yi, X=Xi, training=False)
        return {"loss": loss, "y_pred": y_pred}

    def evaluation_step(self, batch: Any, training: bool = False) -> Any:
        # skorch's, but for the mode switch (see _train_mode).
        self.check_is_fitted()
        Xi, _ = unpack_data(batch)
        with torch.set_grad_enabled(training):
            self._train_mode(training)
            return self.infer(Xi)

    def _train_mode(self, training: bool) -> None:
        # skorch sets the mode of every module and criterion, recursively, before every batch;
        # only a switch needs it.
        for module in self._torch_parts(nn.Module):
            if module.training != training:
                module.train(training)

    def _torch_parts(self, kind: type[_Part]) -> list[_Part]:
        # skorch lists every module, criterion and optimizer a net holds, a subclass's own
        # included, in its public cuda_dependent_attributes_ (registered as they are set).
        names = self.cuda_dependent_attributes_
        parts = (getattr(self, name, None) for name in names)
        return [part for part in parts if isinstance(part, kind)]

    def get_iterator(self, dataset: Any, training: bool = False) -> Any:
        prefix = "iterator_train" if training else "iterator_valid"
        iterator = getattr(self, prefix)
        kwargs = self.get_params_for(prefix)
        batch_size = self.batch_size
        if iterator is TensorBatches:
            kwargs.setdefault("shuffle", training)
            kwargs.setdefault("device", self.device)
            if training:
                # Scaled once here, not every epoch; ``run_single_epoch`` tells ``infer``.
                kwargs.setdefault("transform", getattr(self, "scaling_", None))
            if not training and batch_size != -1:
                batch_size = max(batch_size, EVAL_BATCH_ROWS)
        kwargs.setdefault("batch_size", batch_size)
        if kwargs["batch_size"] == -1:
            kwargs["batch_size"] = len(dataset)
        return iterator(dataset, **kwargs)

    def run_single_epoch(
        self, iterator: Any, training: bool, prefix: str, step_fn: Any, **fit_params: Any
    ) -> None:
        # skorch's own loop, except that each batch's loss is recorded as a tensor and turned
        # into a float once the epoch is over: one wait for the device per epoch, not per
        # batch. Epoch-level scores (train_loss, valid_loss) are computed after this returns,
        # from the floats.
        if iterator is None:
            return
        self._batches_prescaled = getattr(iterator, "prescaled", False)
        try:
            self._run_epoch_batches(iterator, training, prefix, step_fn, **fit_params)
        finally:
            self._batches_prescaled = False

    def _run_epoch_batches(
        self, iterator: Any, training: bool, prefix: str, step_fn: Any, **fit_params: Any
    ) -> None:
        history = self.history
        loss_key, size_key = prefix + "_loss", prefix + "_batch_size"
        rows: list[dict[str, Any]] = []
        losses: list[torch.Tensor] = []
        for batch in iterator:
            self.notify("on_batch_begin", batch=batch, training=training)  # a new batch row
            step = step_fn(batch, **fit_params)
            loss = step["loss"].detach()
            history.record_batch(loss_key, loss)
            history.record_batch(
                size_key, get_len(batch[0] if isinstance(batch, (tuple, list)) else batch)
            )
            rows.append(history[-1]["batches"][-1])
            losses.append(loss)
            self.notify("on_batch_end", batch=batch, training=training, **step)
        if losses:
            # History has no setter for a batch before the last: the tensors that
            # record_batch stored are replaced by their values in the rows it wrote them to.
            values = torch.stack([loss.float().reshape(()) for loss in losses]).tolist()
            for row, value in zip(rows, values, strict=True):
                row[loss_key] = value
        history.record(prefix + "_batch_count", len(losses))

    def notify(self, method_name: str, **cb_kwargs: Any) -> None:
        # skorch calls every callback's hook for every batch, though most callbacks inherit
        # Callback's no-op for most hooks; calling only the hooks a callback implements
        # changes nothing but the time.
        getattr(self, method_name)(self, **cb_kwargs)
        for callback in self._callbacks_implementing(method_name):
            getattr(callback, method_name)(self, **cb_kwargs)

    def _callbacks_implementing(self, method_name: str) -> list[Any]:
        callbacks = self.callbacks_
        cache: tuple[Any, dict[str, list[Any]]] | None = getattr(self, "hook_cache_", None)
        if cache is None or cache[0] is not callbacks:
            # callbacks_ is replaced, never changed in place, when callbacks are initialized.
            # The trailing underscore keeps the cache out of get_params (and so out of clone).
            cache = (callbacks, {})
            self.hook_cache_ = cache
        hooked = cache[1].get(method_name)
        if hooked is None:
            no_op = getattr(Callback, method_name, None)
            hooked = [
                callback
                for _, callback in callbacks
                if no_op is None or getattr(type(callback), method_name, None) is not no_op
            ]
            cache[1][method_name] = hooked
        return hooked

    def infer(self, x: Any, **fit_params: Any) -> Any:
        scaling = getattr(self, "scaling_", None)
        if scaling is not None and not getattr(self, "_batches_prescaled", False):
            x = scaling(torch.as_tensor(x, device=self.device))
        if not self.mixed_precision:
            return super().infer(x, **fit_params)
        # bfloat16 keeps float32's exponent range, so gradients need no loss scaling. The
        # output goes back to float32: the loss and the predictions are computed in it.
        device_type = device_kind(self.device)
        with torch.autocast(device_type, dtype=torch.bfloat16):
            y = super().infer(x, **fit_params)
        return y.float()

    def get_split_datasets(self, X: Any, y: Any = None, **fit_params: Any) -> Any:
        """skorch's split into training and validation data, then ``augment``'s copies of the
        training rows added (the validation rows get none, so they stay unseen)."""
        train, valid = self._split_datasets(X, y, **fit_params)
        if self.augment != "none":
            train = Dataset(*augment(self.augment, *_arrays_of(train)))
        return train, valid

    def _split_datasets(self, X: Any, y: Any = None, **fit_params: Any) -> Any:
        # A validation split is only worth its data when early stopping reads it: then,
        # without a train_split of the user's, skorch's ValidSplit of validation_fraction
        # splits the dataset as skorch's get_split_datasets would call a train_split.
        if self.train_split is None and self.early_stopping_patience is not None:
            stratified = isinstance(self, NeuralNetClassifier)
            split = ValidSplit(
                self.validation_fraction, stratified=stratified, random_state=self.random_state
            )
            dataset = self.get_dataset(X, y)
            if y is None:
                return split(dataset, **fit_params)
            return split(dataset, y, **fit_params)
        return super().get_split_datasets(X, y, **fit_params)


class TunedClassifier(_TunedNet, NeuralNetClassifier):
    """skorch ``NeuralNetClassifier`` with hpo's defaults.

    Args:
        module: the ``nn.Module`` class (``hpo.engine.models.MLP``, ``CNN``) or an instance.
        criterion: a loss class, a name of ``hpo.spec.names.CRITERIA`` or
            ``package.module:Name``; None (the default) is ``nn.CrossEntropyLoss`` (the
            module returns logits), resolved when the net initializes.
        optimizer: a name from ``OPTIMIZERS`` or a class. Default: ``"adam"``.
        random_state: seed for weights, shuffling and dropout, drawn inside ``fit`` from a
            fork of torch's generator; ``None`` draws from torch's global generator as plain
            skorch does. Default: 0.
        early_stopping_patience: epochs without a better validation loss before stopping, the
            best weights restored; ``None`` disables it and uses no validation data. Default:
            None.
        lr_schedule: ``cosine``: the learning rate falls from ``lr`` to 0 over
            ``max_epochs`` (``lr_scheduler``); ``none`` keeps it. Default: ``"none"``.
        validation_fraction: share of the training data held out for early stopping when
            ``train_split`` is None. Default: 0.2.
        mixed_precision: the forward pass under ``torch.autocast`` in bfloat16, for GPUs
            with bfloat16 tensor cores (compute capability 8.0+); the output, the loss, the
            weights and the optimizer stay float32. Default: False.
        preprocess: ``standard``, ``minmax`` or ``none``: features scaled by statistics
            fitted in ``fit`` on the rows it is given, applied to every batch after
            (``scaling_``; ``hpo.engine.preprocess``). Default: ``"none"``.
        augment: ``shifts`` or ``none``: copies of the training rows added in ``fit``, after
            the validation rows are split off (``hpo.engine.augment``). Default: ``"none"``.
        train_split: skorch's; default None (all training data is trained on).
        iterator_train, iterator_valid: default ``TensorBatches``; training batches are
            shuffled every epoch.
        verbose: default 0.
        **kwargs: any other skorch ``NeuralNet`` argument (``lr``, ``max_epochs``,
            ``batch_size``, ``module__*``, ``optimizer__*``, ``device``, ...).
    """

    default_criterion = nn.CrossEntropyLoss


class TunedRegressor(_TunedNet, NeuralNetRegressor):
    """skorch ``NeuralNetRegressor`` with hpo's defaults; see ``TunedClassifier``.

    The criterion defaults to ``nn.MSELoss``; targets are float32 of shape (n, 1).
    """

    default_criterion = nn.MSELoss
