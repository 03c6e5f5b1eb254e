"""Progress as an observer, so the library never holds UI code.

The pipeline and the inversion report what they are doing to an ``Observer``;
the CLI decides whether that becomes a rich progress bar, a line per phase and
a heartbeat (CI logs) or nothing (``--quiet``). ``PhaseTracker`` holds the
arithmetic both displays share: counts with their unit, rate, remaining time,
and an honest account of how far a phase got when it ended.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

StopCheck = Callable[[], bool]  # polled by long stages: True once a stop (a signal) was asked for

# Units for callers that do not name one: the first matching prefix of the phase name decides.
UNITS_BY_PHASE = (("inversion", "steps"), ("inverting", "steps"), ("training", "epochs"), ("LPIPS", "pairs"),
                  ("matching", "images"), ("loading", "images"))


class Observer(Protocol):
    """Receives progress from a running audit."""

    def phase(self, name: str, total: int | None = None) -> None:
        """A new stage begins (``total`` units of work, if known)."""

    def advance(self, done: int, total: int | None = None, detail: str = "") -> None:
        """``done`` units of the current stage are finished."""

    def note(self, message: str) -> None:
        """Something the user should read (a skipped file, a resumed run)."""


class SilentObserver:
    """Discards everything: the default for library callers."""

    def phase(self, name: str, total: int | None = None) -> None:
        pass

    def advance(self, done: int, total: int | None = None, detail: str = "") -> None:
        pass

    def note(self, message: str) -> None:
        pass


def unit_for(name: str, detail: str = "") -> str:
    """The unit of a phase's counts: a detail made of words only ("training images") is one."""
    if detail and not re.search(r"\d", detail):
        return detail
    for prefix, unit in UNITS_BY_PHASE:
        if name.startswith(prefix):
            return unit
    return ""


def duration(seconds: float) -> str:
    """``42 s``, ``3m05s``, ``1h02m``."""
    s = max(0, round(seconds))
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


@dataclass
class PhaseTracker:
    """One phase's counts and timing; counts may start above zero (steps shared by sub-phases)."""

    name: str
    total: int | None = None
    clock: Callable[[], float] = time.monotonic
    started: float = field(default=0.0)
    first: int | None = None
    done: int = 0
    unit: str = ""
    detail: str = ""
    shared: bool = False  # the total is a larger stage's, shared with sibling phases (the inversion's steps)

    def __post_init__(self) -> None:
        self.started = self.clock()
        self.unit = unit_for(self.name)

    def update(self, done: int, total: int | None, detail: str) -> None:
        if self.first is None:
            self.first = self.done  # counts at entry: 0, or where the previous sub-phase stopped
        self.done, self.total = done, total or self.total
        self.detail = "" if detail == self.unit else detail
        self.unit = unit_for(self.name, detail) or self.unit

    @property
    def elapsed(self) -> float:
        return self.clock() - self.started

    def remaining(self) -> float | None:
        """Seconds left at the rate so far, or None when it cannot be known yet."""
        if not self.total or self.first is None or self.done <= self.first or self.elapsed < 1.0:
            return None
        rate = (self.done - self.first) / self.elapsed
        return max(0.0, (self.total - self.done) / rate)

    def counts(self) -> str:
        """``312/800 steps`` (or ``312 steps`` without a total)."""
        unit = f" {self.unit}" if self.unit else ""
        return f"{self.done}/{self.total}{unit}" if self.total else f"{self.done}{unit}"

    def status(self) -> str:
        """A heartbeat line: counts, percentage, remaining time where known, detail."""
        parts = [self.counts()]
        if self.total:
            parts[0] += f" ({100 * self.done / self.total:.0f}%)"
        left = self.remaining()
        parts.append(f"about {duration(left)} left" if left is not None else f"{duration(self.elapsed)} so far")
        if self.detail:
            parts.append(self.detail)
        return ", ".join(parts)

    def ending(self) -> str:
        """How the phase ended, honestly: ``done``, or how far it got."""
        took = duration(self.elapsed)
        if self.first is None:
            return f"done in {took}"
        if self.shared and self.total:
            unit = f" {self.unit}" if self.unit else ""
            return f"reached {self.done} of {self.total}{unit} after {took}"
        if self.total and self.done < self.total:
            return f"ended at {self.counts()} ({100 * self.done / self.total:.0f}%) after {took}"
        return f"done, {self.counts()} in {took}"

    @property
    def trivial(self) -> bool:
        """A heading that another phase replaced at once: not worth an end line."""
        return self.first is None and self.elapsed < 0.5
