"""Forward FLOPs of a trial's net over one training batch: what the fold plan sizes nets by."""

from __future__ import annotations

from typing import Any

import torch


def batch_rows(net: Any, train_rows: int | None) -> int:
    """Rows of one training batch of ``net``: its ``batch_size``, or with ``batch_size: -1``
    (the whole training fold as one batch) ``train_rows``, the fold's rows with their copies;
    without them, 1."""
    if net.batch_size == -1:
        return max(1, train_rows or 1)
    return max(1, int(net.batch_size))


def forward_flops(net: Any, input_shape: tuple[int, ...], train_rows: int | None = None) -> int:
    """FLOPs of one forward pass of ``net``'s module over a training batch (matrix products
    and convolutions, as ``torch.utils.flop_counter`` counts them).

    Args:
        net: an unfitted skorch net; its ``module__*`` parameters build the module.
        input_shape: one row's shape.
        train_rows: the training fold's rows (with ``augment``'s copies), which a batch of
            ``batch_size: -1`` holds. Default: None (such a batch then counts one row).
    """
    # Imported here: the flop counter pulls in torch's compiler stack (tens of MiB), which a
    # worker that never asks (a GPU, or folds in processes) should not carry.
    from torch.utils.flop_counter import FlopCounterMode

    module = net.module(**net.get_params_for("module"))
    module.eval()
    # Counted on one row and scaled (products and convolutions grow with the rows): a batch
    # of batch_size rows would be allocated here whole, 256 GB for batch_size: 10**9.
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        module(torch.zeros(1, *input_shape))
    return int(counter.get_total_flops()) * batch_rows(net, train_rows)
