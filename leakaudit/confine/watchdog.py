"""When the parent stops a worker: silence past the stall bound, or time past the budget's ceiling.

The stall bound is ``max(30 s, min(budget, 300 s))`` (300 s without a budget):
a worker that sends no message for that long (no step, no batch, no reply)
is stuck in the model's code. The ceiling of the attack is its own budget plus
``max(60 s, a quarter of that budget)``: the engine ends its phases at the
budget, so a worker still busy past the margin is not following it. Either way
the worker gets SIGTERM, then SIGKILL after ``KILL_GRACE_S``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

MIN_STALL_S, MAX_STALL_S = 30.0, 300.0
CEILING_MARGIN_S, CEILING_MARGIN_SHARE = 60.0, 0.25
KILL_GRACE_S = 3.0
STOP_GRACE_S = 20.0  # after a stop request, the worker's time to hand back what it has


def stall_bound(budget_s: float | None) -> float:
    """Seconds without a message after which the worker counts as stuck."""
    if budget_s is None:
        return MAX_STALL_S
    return max(MIN_STALL_S, min(float(budget_s), MAX_STALL_S))


def ceiling(budget_s: float | None) -> float | None:
    """Seconds the attack may take in all, or None (no budget)."""
    if budget_s is None:
        return None
    return budget_s + max(CEILING_MARGIN_S, CEILING_MARGIN_SHARE * budget_s)


@dataclass
class Watchdog:
    """One operation's clocks: the last message, the ceiling, and a stop request's grace."""

    stall_s: float
    ceiling_s: float | None = None  # seconds the whole operation may take
    started: float = 0.0
    last: float = 0.0
    stop_asked: float | None = None

    def __post_init__(self) -> None:
        self.started = self.last = time.monotonic()

    def heard(self) -> None:
        self.last = time.monotonic()

    def ask_stop(self) -> None:
        if self.stop_asked is None:
            self.stop_asked = time.monotonic()

    def verdict(self) -> str | None:
        """None while the worker may go on; else ``"stalled"``, ``"ceiling"`` or ``"stop"``."""
        now = time.monotonic()
        if self.stop_asked is not None and now - self.stop_asked > STOP_GRACE_S:
            return "stop"
        if now - self.last > self.stall_s:
            return "stalled"
        if self.ceiling_s is not None and now - self.started > self.ceiling_s:
            return "ceiling"
        return None
