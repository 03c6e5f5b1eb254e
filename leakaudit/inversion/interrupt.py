"""Stop requests seen inside a step, not only between steps.

At 224×224 one step of the attack (or of the control's training) is a
forward and backward pass through the classifier that can take tens of
seconds on a CPU; a stop checked only between steps waits for it. Inside
``interruptible`` the stop request is polled every time autograd saves a
tensor in the forward pass and every time it reads one back in the backward
pass, i.e. between the classifier's layers, whatever the model's format. A
request abandons the step (nothing is applied), so the run ends as
interrupted from the state it had before the step: a saved resume state (it
is only written at phase boundaries) stays valid. The hooks return the very
tensors they are given, so the numbers are those of an uninterrupted step.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator

import torch

POLL_S = 0.2  # at most this often the stop request itself is asked (it may read a file or a flag)


class StopRequested(Exception):
    """A stop request seen inside a step; ``interruptible`` swallows it (never leaves the inversion)."""


class StopPoll:
    """A rate-limited, latching view of a ``should_stop`` callable (None: never stops)."""

    def __init__(self, should_stop: Callable[[], bool] | None, every_s: float = POLL_S) -> None:
        self.should_stop = should_stop
        self.every_s = every_s
        self.asked = False  # latched: once a stop was seen, it stays
        self._polled = -float("inf")

    def poll(self) -> bool:
        """Whether a stop was asked for (asks ``should_stop`` at most every ``every_s`` seconds)."""
        if self.asked or self.should_stop is None:
            return self.asked
        now = time.monotonic()
        if now - self._polled >= self.every_s:
            self._polled = now
            self.asked = bool(self.should_stop())
        return self.asked

    def check(self) -> None:
        """Raise ``StopRequested`` when a stop was asked for."""
        if self.poll():
            raise StopRequested


@contextlib.contextmanager
def interruptible(stop: StopPoll) -> Iterator[None]:
    """Run a step's forward and backward with the stop request polled between autograd's operations.

    A stop abandons the rest of the block: the caller reads ``stop.asked`` after it and applies nothing.
    TorchScript reports a Python exception raised inside its interpreter as a RuntimeError; that one is
    swallowed too when the stop is latched, any other error propagates.
    """

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        stop.check()
        return tensor

    def unpack(tensor: torch.Tensor) -> torch.Tensor:
        stop.check()
        return tensor

    if stop.should_stop is None:
        yield
        return
    try:
        with torch.autograd.graph.saved_tensors_hooks(pack, unpack):
            yield
    except StopRequested:
        pass
    except RuntimeError:
        if not stop.asked:
            raise
