"""Process-wide numeric and execution settings, changed only for as long as they are needed."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch


def denormals_flushed() -> bool:
    """Whether the CPU currently flushes denormal floats to zero (torch cannot say directly)."""
    tiny = torch.tensor([1e-39], dtype=torch.float32)  # a float32 denormal
    return bool((tiny * 1.0).item() == 0.0)


@contextlib.contextmanager
def flush_denormals() -> Iterator[None]:
    """Flush denormals to zero inside the block, then put the caller's setting back.

    Models trained to a loss near zero produce denormal floats that make CPU
    steps several times slower; other code in the same process (NumPy users,
    property-testing libraries) relies on IEEE behaviour, so the setting must
    not leak out.
    """
    before = denormals_flushed()
    torch.set_flush_denormal(True)
    try:
        yield
    finally:
        torch.set_flush_denormal(before)


def without_jit_profiling() -> contextlib.AbstractContextManager[None]:
    """TorchScript models run by the interpreter alone inside the block: no profiling and re-optimisation.

    The graph executor re-specialises a scripted graph for every new batch shape and differentiates it
    symbolically; in training loops and large-input attacks that costs several times a plain forward+backward.
    """
    return torch.jit.optimized_execution(False)  # type: ignore[attr-defined]  # not in torch.jit's __all__
