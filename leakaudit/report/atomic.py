"""Atomic file writes: a reader sees the old file or the new one, never half of one.

Every report and checkpoint writer goes through here. The bytes go to a new
temporary file in the same folder (same file system, so the rename is atomic),
are flushed to disk, and only then replace the target. On any failure the
temporary file is removed and the previous file stays as it was.

Nothing planted in the folder is followed: the folder is opened once and every
name is used relative to that descriptor; the temporary file is created with
``O_EXCL | O_NOFOLLOW`` under a random name (a link or file already there makes
the open fail rather than write through it); the rename replaces whatever is at
the final name, a symbolic link included, never the file a link points at. A
folder that leakaudit makes and owns inside OUT (``owned=True``: the
checkpoints) must not be a symbolic link itself; the folder of a report is the
user's choice (``--out``, ``--junit``) and may be one.
"""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import BinaryIO

from leakaudit.errors import OutputError

_CREATE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC


@contextlib.contextmanager
def open_folder(folder: Path, owned: bool = False, create: bool = True) -> Iterator[int]:
    """A descriptor of ``folder`` (made if ``create``); with ``owned`` a symbolic link there is refused."""
    try:
        if create:
            if owned:
                folder.parent.mkdir(parents=True, exist_ok=True)
                with contextlib.suppress(FileExistsError):
                    folder.mkdir()
            else:
                folder.mkdir(parents=True, exist_ok=True)
        flags = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC | (os.O_NOFOLLOW if owned else 0)
        fd = os.open(folder, flags)
    except OSError as exc:
        if owned and exc.errno in (errno.ELOOP, errno.ENOTDIR) and folder.is_symlink():
            raise OutputError(f"{folder} is a symbolic link; leakaudit writes only into a folder it made there "
                              "(remove the link)") from None
        raise OutputError(f"cannot write into {folder}: {exc.strerror or exc}") from exc
    try:
        yield fd
    finally:
        os.close(fd)


def create_new(folder_fd: int, prefix: str, mode: int = 0o666) -> tuple[int, str]:
    """A new file of a random name starting with ``prefix`` in the folder: never an existing file or link."""
    for _ in range(100):
        name = f"{prefix}{secrets.token_hex(8)}.tmp"
        try:
            return os.open(name, _CREATE, mode, dir_fd=folder_fd), name
        except FileExistsError:
            continue
    raise FileExistsError(errno.EEXIST, "no free temporary name", prefix)


def atomic_write(path: str | Path, write: Callable[[BinaryIO], object], *, owned: bool = False) -> Path:
    """Create or replace ``path`` with whatever ``write`` puts into the binary stream it is given.

    ``owned``: the folder is one leakaudit makes inside OUT, which may not be a symbolic link.
    """
    target = Path(path)
    with open_folder(target.parent, owned=owned) as folder:
        try:
            fd, tmp = create_new(folder, f".{target.name}.")  # 0666 less the umask, as a plain open() makes
        except OSError as exc:
            raise OutputError(f"cannot write into {target.parent}: {exc.strerror or exc}") from exc
        try:
            with os.fdopen(fd, "wb") as stream:
                write(stream)
                stream.flush()
                os.fsync(stream.fileno())
            os.replace(tmp, target.name, src_dir_fd=folder, dst_dir_fd=folder)
        except BaseException as exc:
            with contextlib.suppress(OSError):
                os.unlink(tmp, dir_fd=folder)
            if isinstance(exc, OSError):
                raise OutputError(f"cannot write {target}: {exc.strerror or exc}") from exc
            raise
    return target


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    """Create or replace ``path`` with ``data``."""
    return atomic_write(path, lambda stream: stream.write(data))


def atomic_write_text(path: str | Path, text: str) -> Path:
    """Create or replace ``path`` with ``text`` as UTF-8."""
    return atomic_write_bytes(path, text.encode("utf-8"))
