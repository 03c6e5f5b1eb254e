"""One audit per output folder: a lock file that a second audit on the same ``--out`` finds at once.

Two audits writing one folder would race on the checkpoint and the reports
(and a resumed state could come from the other run). The lock is an
``flock`` on ``OUT/.leakaudit.lock``, so it disappears with the process that
held it, even after SIGKILL; the file records that process's id for the
error message. A folder the lock had to create is removed again when the
audit leaves it empty (a run that failed on its inputs leaves nothing).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator
from pathlib import Path

from leakaudit.errors import OutputError

LOCK_NAME = ".leakaudit.lock"


def _holder(path: Path) -> str:
    try:
        pid = path.read_text(encoding="utf-8").strip()
    except OSError:
        return ""
    return f" (process {pid})" if pid.isdigit() else ""


def _acquire(path: Path) -> int:
    """An open descriptor holding the lock on ``path``; OutputError when another process holds it."""
    while True:
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise OutputError(f"cannot write to the output folder {path.parent}: {exc.strerror or exc}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise OutputError(
                f"another leakaudit audit is writing to {path.parent}{_holder(path)}; wait for it to finish "
                "or give this one another --out"
            ) from None
        try:
            same = os.fstat(fd).st_ino == os.stat(path).st_ino
        except FileNotFoundError:
            same = False
        if same:  # not a file that its previous holder unlinked while we waited for it
            return fd
        os.close(fd)


@contextlib.contextmanager
def output_lock(out: Path) -> Iterator[None]:
    """Hold the output folder's lock for the duration of the block."""
    if out.exists() and not out.is_dir():
        raise OutputError(f"--out {out} exists and is not a folder")
    created = not out.exists()
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"cannot write to the output folder {out}: {exc.strerror or exc}") from None
    path = out / LOCK_NAME
    try:
        fd = _acquire(path)
    except BaseException:
        if created:
            with contextlib.suppress(OSError):
                out.rmdir()
        raise
    try:
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        yield
    finally:
        with contextlib.suppress(OSError):
            path.unlink()  # before the unlock: a waiting process then sees another inode and retries
        os.close(fd)
        if created:
            with contextlib.suppress(OSError):
                out.rmdir()  # only when empty: a failed run leaves no folder it made
