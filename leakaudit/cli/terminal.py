"""How the CLI shows progress: a live bar on a terminal, phase lines and a heartbeat in logs.

Only the CLI uses this module; the library reports to an ``Observer`` and never prints.
"""

from __future__ import annotations

import threading
from typing import Any, Protocol

from leakaudit.runtime.progress import PhaseTracker
from leakaudit.sanitize import terminal_text

HEARTBEAT_S = 30.0
LABEL_WIDTH = 40


class Speaker(Protocol):
    """Where lines go (the CLI's Console)."""

    def say(self, message: str) -> None: ...


class LineObserver:
    """Progress for logs: one line when a phase starts, one when it ends, and a heartbeat in between."""

    def __init__(self, console: Speaker, heartbeat_s: float = HEARTBEAT_S) -> None:
        self.console = console
        self.heartbeat_s = heartbeat_s
        self._phase: PhaseTracker | None = None
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, name="leakaudit-heartbeat", daemon=True)
        self._thread.start()

    def _beat(self) -> None:
        while not self._stop.wait(self.heartbeat_s):
            with self._lock:
                if self._phase is not None:
                    self.console.say(f"  {self._phase.name}: {self._phase.status()}")

    def _end(self) -> None:
        if self._phase is not None and not self._phase.trivial:
            self.console.say(f"  {self._phase.name}: {self._phase.ending()}")

    def phase(self, name: str, total: int | None = None) -> None:
        with self._lock:
            previous = self._phase
            self._end()
            self._phase = PhaseTracker(name, total)
            if previous is not None and name.startswith("inversion") and previous.name.startswith("inver"):
                self._phase.done = previous.done  # the inversion counts its steps across sub-phases
                self._phase.shared = True
            self.console.say(f"· {name}{self._size(self._phase)}")

    @staticmethod
    def _size(phase: PhaseTracker) -> str:
        if not phase.total:
            return ""
        unit = f" {phase.unit}" if phase.unit else ""
        return f" (from {phase.done} of {phase.total}{unit})" if phase.done else f" ({phase.total}{unit})"

    def advance(self, done: int, total: int | None = None, detail: str = "") -> None:
        with self._lock:
            if self._phase is not None:
                self._phase.update(done, total, detail)

    def note(self, message: str) -> None:
        self.console.say(f"  {message}")

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=1.0)
        with self._lock:
            self._end()
            self._phase = None


class RichObserver:
    """A live progress bar on an interactive terminal, with counts, units and remaining time."""

    def __init__(self, stream: Any) -> None:
        # rich is imported only for a live bar on an interactive terminal, never in CI logs
        from rich.console import Console as RichConsole
        from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn
        from rich.table import Column

        self._rich = RichConsole(file=stream)
        self._progress = Progress(
            TextColumn("{task.description}",
                       table_column=Column(max_width=LABEL_WIDTH, no_wrap=True, overflow="ellipsis")),
            BarColumn(bar_width=30), TextColumn("{task.fields[count]}"),
            TimeRemainingColumn(), TextColumn("{task.fields[detail]}"), console=self._rich, transient=False,
        )
        self._task: Any = None
        self._phase: PhaseTracker | None = None
        self._progress.start()

    def _end(self) -> None:
        if self._task is None or self._phase is None:
            return
        if self._phase.trivial:  # a heading replaced at once by its first sub-phase
            self._progress.remove_task(self._task)
            return
        phase = self._phase
        total = phase.total or 0  # None or 0: nothing counted, so complete
        complete = not total or phase.done >= total
        ending = ("✓" if complete else "ended here" if phase.shared
                  else f"stopped at {100 * phase.done / total:.0f}%")
        self._progress.update(self._task, detail=ending)
        self._progress.stop_task(self._task)  # left where it got to: no jump to 100 %

    def phase(self, name: str, total: int | None = None) -> None:
        previous = self._phase
        self._end()
        self._phase = PhaseTracker(name, total)
        start = previous.done if previous is not None and name.startswith("inversion") else 0
        self._phase.done, self._phase.shared = start, bool(start) or name.startswith("inversion")
        count = self._phase.counts() if total else ""
        self._task = self._progress.add_task(name, total=total, completed=start, count=count, detail="")

    def advance(self, done: int, total: int | None = None, detail: str = "") -> None:
        if self._task is not None and self._phase is not None:
            self._phase.update(done, total, detail)
            self._progress.update(self._task, completed=done, total=total or None, count=self._phase.counts(),
                                  detail=self._phase.detail)

    def note(self, message: str) -> None:
        self._progress.console.print(terminal_text(message), markup=False, highlight=False)

    def close(self) -> None:
        self._end()
        self._progress.stop()
