"""The worker's stderr as the parent reads it: bounded in line length, in rate and in what is remembered.

Whatever the model prints reaches the audit's notes (``model: …``), each
distinct line once. A worker that writes one endless line or a flood of
lines costs the parent a few kilobytes per line and a fixed number of lines,
never memory in proportion to what was written.
"""

from __future__ import annotations

import collections
import threading
import time
from dataclasses import dataclass, field
from typing import Any

MAX_STDERR_LINES = 10_000  # distinct lines remembered (each shown once)
SHOWN_LINE_CHARS = 300
STDERR_LINE_BYTES = 4096  # a longer line is cut here, the rest of it read and dropped
STDERR_LINES_PER_S = 50  # lines kept per second; the rest are counted, not kept


@dataclass
class WorkerStderr:
    """The worker's stderr, read on a thread; each distinct line is shown once."""

    seen: set[str] = field(default_factory=set)
    pending: collections.deque[str] = field(default_factory=lambda: collections.deque(maxlen=200))
    last: collections.deque[str] = field(default_factory=lambda: collections.deque(maxlen=5))
    lock: threading.Lock = field(default_factory=threading.Lock)
    dropped: int = 0  # lines over the rate, never kept
    _window: tuple[float, int] = (0.0, 0)

    def read(self, stream: Any) -> None:
        """Line by line, each cut at ``STDERR_LINE_BYTES`` and at most ``STDERR_LINES_PER_S`` a second kept."""
        cut = False
        for raw in iter(lambda: stream.readline(STDERR_LINE_BYTES), b""):
            whole = raw.endswith(b"\n")
            if cut:  # the rest of a line already cut
                cut = not whole
                continue
            cut = not whole
            line = raw.decode("utf-8", "replace").rstrip()
            if line.strip():
                self._keep(line, self._within_rate())

    def _within_rate(self) -> bool:
        now = time.monotonic()
        began, count = self._window
        if now - began >= 1.0:
            began, count = now, 0
        self._window = (began, count + 1)
        if count < STDERR_LINES_PER_S:
            return True
        self.dropped += 1
        return False

    def _keep(self, line: str, shown: bool) -> None:
        """``last`` always has the latest lines (a dying worker's last words); shown ones are rate-limited."""
        with self.lock:
            self.last.append(line)
            if shown and line not in self.seen and len(self.seen) < MAX_STDERR_LINES:
                self.seen.add(line)
                self.pending.append(line)

    def take(self) -> list[str]:
        with self.lock:
            lines = list(self.pending)
            self.pending.clear()
        return lines
