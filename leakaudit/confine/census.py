"""Every thread of the worker, as the kernel sees it: whether each runs under the filter and no-new-privs.

Confinement that covers the main thread only is no confinement: a thread
started before it (a BLAS pool, a driver thread) runs the model's callbacks
with the process's full rights. The worker reads ``/proc/self/task/*/status``
after confining itself and refuses to load the model unless every thread shows
``Seccomp: 2`` (a filter) and ``NoNewPrivs: 1``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

TASKS = Path("/proc/self/task")


class CensusError(OSError):
    """A thread of the worker runs without the confinement, or the census could not be taken."""


@dataclass(frozen=True)
class ThreadState:
    """One thread's name and its confinement fields from ``/proc``."""

    tid: int
    name: str
    seccomp: int
    no_new_privs: int

    @property
    def confined(self) -> bool:
        return self.seccomp == 2 and self.no_new_privs == 1


def _fields(text: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for line in text.splitlines():
        key, _, value = line.partition(":")
        out[key.strip()] = value.strip()
    return out


def threads(tasks: Path = TASKS) -> list[ThreadState]:
    """The state of every thread of this process (a thread that ends while it is read is left out)."""
    found = []
    for entry in sorted(os.listdir(tasks), key=int):
        try:
            fields = _fields((tasks / entry / "status").read_text())
        except FileNotFoundError:
            continue
        found.append(ThreadState(int(entry), fields.get("Name", "?"), int(fields.get("Seccomp", "0")),
                                 int(fields.get("NoNewPrivs", "0"))))
    return found


def thread_count(tasks: Path = TASKS) -> int:
    """How many threads this process has now."""
    return len(os.listdir(tasks))


def require_confined(tasks: Path = TASKS) -> list[ThreadState]:
    """The census, or ``CensusError`` naming each thread that runs unconfined (or when there is none to read)."""
    try:
        found = threads(tasks)
    except (OSError, ValueError) as exc:
        raise CensusError(f"the worker could not list its threads ({exc})") from None
    loose = [t for t in found if not t.confined]
    if not found or loose:
        named = ", ".join(f"{t.tid} {t.name!r} (Seccomp {t.seccomp}, NoNewPrivs {t.no_new_privs})" for t in loose)
        raise CensusError(f"threads of the worker run unconfined: {named or 'none listed'}")
    return found
