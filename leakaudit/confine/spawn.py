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
from typing import Any

_early: subprocess.Popen[bytes] | None = None
_early_first: dict[str, Any] | None = None  # the confine request the prestarted worker was sent

# The worker's whole environment: what torch, the C libraries and Python's own imports read (threads, locale,
# the GPU's selection, the import path). Nothing else of the parent's passes (tokens, keys, CI variables).
PASSED_ENV = ("LANG", "LANGUAGE", "TZ", "PYTHONPATH", "PYTHONHASHSEED", "PYTHONUTF8", "PYTHONIOENCODING",
              "OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_THREADING_LAYER", "KMP_AFFINITY",
              "KMP_BLOCKTIME", "OMP_PROC_BIND", "OMP_PLACES", "GOMP_CPU_AFFINITY", "LD_LIBRARY_PATH",
              "CUDA_VISIBLE_DEVICES", "CUDA_DEVICE_ORDER", "NVIDIA_VISIBLE_DEVICES", "CUBLAS_WORKSPACE_CONFIG",
              "PYTORCH_CUDA_ALLOC_CONF", "TORCH_CUDA_ARCH_LIST")
PASSED_PREFIXES = ("LC_",)


def worker_environment(parent: dict[str, str] | None = None) -> dict[str, str]:
    """The parent's variables the worker needs, and only those."""
    source = dict(os.environ) if parent is None else parent
    env = {k: v for k, v in source.items() if k in PASSED_ENV or k.startswith(PASSED_PREFIXES)}
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    env["PATH"] = ""  # no program to look up: ``ctypes.util.find_library`` then asks no compiler (and no tempfile)
    env["TORCHINDUCTOR_CACHE_DIR"] = "/"  # an existing folder: torch's import "creates" it, and writes nothing there
    return env


def start() -> subprocess.Popen[bytes]:
    """A fresh worker on pipes; its own session, so the terminal's Ctrl-C reaches the audit only."""
    return subprocess.Popen(
        [sys.executable, "-m", "leakaudit.confine.worker"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, start_new_session=True, close_fds=True,
        env=worker_environment(),
    )


def prestart(first: dict[str, Any] | None = None) -> None:
    """Start a worker now, for the session to take later (no-op where the audit will not confine).

    ``first``: the confine request (``sandbox.confine_request``), sent at once so that the worker confines itself
    and imports torch while this process does the same.
    """
    global _early, _early_first
    from leakaudit.confine.sandbox import unavailable_reason

    if _early is None and unavailable_reason() is None and int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        _early = start()
        _early_first = first if first is not None and _send(_early, first) else None
        atexit.register(discard)


def take(first: dict[str, Any]) -> subprocess.Popen[bytes]:
    """A worker that was sent ``first``: the prestarted one if it is alive and got the same request, else a new one."""
    global _early, _early_first
    proc, sent = _early, _early_first
    _early, _early_first = None, None
    if proc is not None and proc.poll() is None and sent == first:
        return proc
    if proc is not None and proc.poll() is None:
        proc.kill()
        proc.wait()
    proc = start()
    _send(proc, first)  # a worker that died at once shows as a closed channel on the first call
    return proc


def _send(proc: subprocess.Popen[bytes], message: dict[str, Any]) -> bool:
    from leakaudit.confine.channel import encode

    assert proc.stdin is not None
    try:
        proc.stdin.write(encode(message))
        proc.stdin.flush()
        return True
    except OSError:
        return False


def discard() -> None:
    """End a prestarted worker nobody took (the model runs in-process after all, or the run failed early)."""
    global _early
    proc, _early = _early, None
    if proc is not None and proc.poll() is None:
        proc.kill()
        proc.wait()
