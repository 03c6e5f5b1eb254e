"""One audit per output folder: a lock file that a second audit on the same ``--out`` finds at once.

Two audits writing one folder would race on the checkpoint and the reports
(and a resumed state could come from the other run). The lock is an
``flock`` on ``OUT/.leakaudit.lock``, so it disappears with the process that
held it, even after SIGKILL; the file records that process's id for the
error message. A folder the lock had to create is removed again when the
audit leaves it empty (a run that failed on its inputs leaves nothing).

Nothing planted in OUT is written through: the lock file is opened with
``O_NOFOLLOW`` and must be a plain file with one link, and the write probe is a
new file of a random name (``O_EXCL``), never an existing name.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import stat
from collections.abc import Iterator
from pathlib import Path

from leakaudit.errors import OutputError
from leakaudit.report.atomic import create_new, open_folder

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
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, 0o644)
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                raise OutputError(f"{path} is a symbolic link; leakaudit writes its lock only into a file of its "
                                  "own (remove the link)") from None
            raise OutputError(f"cannot write to the output folder {path.parent}: {exc.strerror or exc}") from None
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode) or info.st_nlink != 1:  # a FIFO, a device, a hard link to another file
            os.close(fd)
            raise OutputError(f"{path} is not a plain file of leakaudit's own (it is "
                              f"{'a hard link' if stat.S_ISREG(info.st_mode) else 'not a regular file'}); "
                              "remove it")
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


WRITE_PROBE = ".leakaudit-write-test."


def check_writable(out: Path) -> None:
    """OUT can be written: a new file of a random name is made there and removed (never an existing name)."""
    with open_folder(out) as folder:
        try:
            fd, name = create_new(folder, WRITE_PROBE)
        except OSError as exc:
            raise OutputError(f"cannot write to the output folder {out}: {exc.strerror or exc}") from None
        os.close(fd)
        os.unlink(name, dir_fd=folder)
