"""Torch's CPU thread count, set for a block and given back after: the one place that does."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch


@contextmanager
def torch_threads(threads: int | None) -> Iterator[int]:
    """Run the block on ``threads`` torch CPU threads; restore the count it had after.

    Args:
        threads: threads for the block; None keeps the current count.

    Yields:
        The thread count in force inside the block.
    """
    before = torch.get_num_threads()
    inside = before if threads is None else max(1, threads)
    if inside != before:
        torch.set_num_threads(inside)
    try:
        yield inside
    finally:
        if torch.get_num_threads() != before:
            torch.set_num_threads(before)
