"""Progress as an observer, so the library never holds UI code.

The pipeline and the inversion report what they are doing to an ``Observer``;
the CLI decides whether that becomes a rich progress bar, a line every few
seconds (CI logs) or nothing (``--quiet``).
"""

from __future__ import annotations

from typing import Protocol


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


class RecordingObserver(SilentObserver):
    """Keeps the notes, for callers (and tests) that want them afterwards."""

    def __init__(self) -> None:
        self.notes: list[str] = []
        self.phases: list[str] = []

    def phase(self, name: str, total: int | None = None) -> None:
        self.phases.append(name)

    def note(self, message: str) -> None:
        self.notes.append(message)
