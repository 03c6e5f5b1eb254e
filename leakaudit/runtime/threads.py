"""A fixed torch thread count for a block of work whose result must not depend on the machine.

Float sums split over another number of threads add up in another order, so a
classifier trained with 2 threads differs in its last bits from one trained with
1, and a few epochs later in its predictions. Work that must give the same
weights on every CPU machine (building a zoo reference) runs inside
``torch_threads``; the caller's setting is put back afterwards.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch


@contextlib.contextmanager
def torch_threads(count: int) -> Iterator[None]:
    """Run the block with ``count`` intra-op threads, then restore the previous count."""
    if count < 1:
        raise ValueError(f"a thread count is at least 1, got {count}")
    previous = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(previous)
