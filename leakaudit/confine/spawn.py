"""Starting the worker process, possibly before the audit itself has imported torch.

The worker's interpreter start is mostly importing torch (seconds). The CLI
calls ``prestart`` before its own heavy imports so that both happen at once;
the session then ``take``s that process instead of starting another. This
module imports nothing heavy.
"""

from __future__ import annotations

import atexit
import os
import subprocess
import sys

_early: subprocess.Popen[bytes] | None = None


def start() -> subprocess.Popen[bytes]:
    """A fresh worker on pipes; its own session, so the terminal's Ctrl-C reaches the audit only."""
    return subprocess.Popen(
        [sys.executable, "-m", "leakaudit.confine.worker"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, start_new_session=True, close_fds=True,
        env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"},
    )


def prestart() -> None:
    """Start a worker now, for the session to take later (no-op where the audit will not confine)."""
    global _early
    from leakaudit.confine.sandbox import unavailable_reason

    if _early is None and unavailable_reason() is None and int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        _early = start()
        atexit.register(discard)


def take() -> subprocess.Popen[bytes]:
    """The prestarted worker if it is still alive, else a new one."""
    global _early
    proc, _early = _early, None
    if proc is not None and proc.poll() is None:
        return proc
    return start()


def discard() -> None:
    """End a prestarted worker nobody took (the model runs in-process after all, or the run failed early)."""
    global _early
    proc, _early = _early, None
    if proc is not None and proc.poll() is None:
        proc.kill()
        proc.wait()
