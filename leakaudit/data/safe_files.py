"""Walking an untrusted folder: what may be read, and reading it so that nothing can block.

Only regular files are read. A FIFO, device or socket named ``*.png`` is
skipped (opened with ``O_NONBLOCK`` and checked with ``fstat``, so even one
swapped in after listing cannot block the read). Each file's size is checked
with ``stat`` before it is opened, against a cap the caller sets. Symlinks,
to files and to folders alike, are followed only while their target stays
inside the root folder. A name that is not valid UTF-8 is skipped and
recorded with its bytes shown as ``\\xNN``.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from leakaudit.errors import UsageError
from leakaudit.sanitize import path_text, terminal_text

DEFAULT_MAX_FILE_BYTES = 64 << 20


@dataclass(frozen=True)
class SkippedFile:
    """A file that was not loaded, and why (``path`` is escaped for display)."""

    path: str
    reason: str


def decodable(name: str) -> bool:
    """Whether a name from the file system is valid UTF-8 (Python keeps bad bytes as surrogates)."""
    try:
        name.encode("utf-8")
        return True
    except UnicodeEncodeError:
        return False


def inside(path: Path, root: Path) -> bool:
    """Whether ``path``, with every symlink resolved, lies in ``root``."""
    try:
        path.resolve().relative_to(root.resolve())
        return True
    except (ValueError, OSError, RuntimeError):
        return False


def _kind(mode: int) -> str:
    if stat.S_ISFIFO(mode):
        return "a FIFO"
    if stat.S_ISSOCK(mode):
        return "a socket"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    if stat.S_ISDIR(mode):
        return "a folder"
    return "not a regular file"


def file_problem(path: Path, root: Path, max_bytes: int) -> str | None:
    """Why ``path`` may not be read, checked with ``lstat``/``stat`` before anything opens it."""
    try:
        info = os.lstat(path)
        if stat.S_ISLNK(info.st_mode):
            if not inside(path, root):
                return "symlink pointing outside the data folder"
            info = os.stat(path)
    except OSError as exc:
        return f"cannot stat: {exc.strerror or exc}"
    if not stat.S_ISREG(info.st_mode):
        return f"{_kind(info.st_mode)}, not a regular file"
    if info.st_size > max_bytes:
        return f"{info.st_size} bytes, over the {max_bytes}-byte limit per image file"
    return None


def open_regular_file(path: Path, max_bytes: int) -> BinaryIO:
    """``path`` opened for reading if it is a regular file of at most ``max_bytes``; never blocks.

    ``O_NONBLOCK`` makes opening a FIFO return at once; ``fstat`` on the open
    descriptor then tells what was really opened. Raises ``OSError``.
    """
    flags = os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_NOCTTY", 0) | getattr(os, "O_CLOEXEC", 0)
    fd = os.open(path, flags)
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise OSError(f"{_kind(info.st_mode)}, not a regular file")
        if info.st_size > max_bytes:
            raise OSError(f"{info.st_size} bytes, over the {max_bytes}-byte limit per image file")
    except BaseException:
        os.close(fd)
        raise
    return os.fdopen(fd, "rb")


def read_regular_file(path: Path, max_bytes: int) -> bytes:
    """The bytes of a regular file of at most ``max_bytes``; raises ``OSError`` otherwise."""
    with open_regular_file(path, max_bytes) as fh:
        data = fh.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise OSError(f"grew past the {max_bytes}-byte limit while being read")
    return data


def _walk_class(root: Path, name: str, extensions: tuple[str, ...], max_bytes: int,
                files: list[Path], skipped: list[SkippedFile]) -> None:
    top = root / name
    if top.is_symlink() and not inside(top, root):
        skipped.append(SkippedFile(f"{path_text(name)}/", "class folder is a symlink to a folder outside the data "
                                                          "folder; none of its files were read"))
        return
    for dirpath, dirnames, filenames in os.walk(top, followlinks=False):
        here = Path(dirpath)
        for sub in sorted(dirnames):
            if (here / sub).is_symlink():
                rel = (here / sub).relative_to(root).as_posix()
                skipped.append(SkippedFile(f"{path_text(rel)}/",
                                           "symlinked folder inside a class folder; not followed"))
        dirnames[:] = sorted(d for d in dirnames if decodable(d) and not (here / d).is_symlink())
        for filename in sorted(filenames):
            path = here / filename
            rel = path.relative_to(root).as_posix()
            if not filename.lower().endswith(extensions):
                continue
            if not decodable(rel):
                skipped.append(SkippedFile(path_text(rel), "name is not valid UTF-8; skipped"))
                continue
            problem = file_problem(path, root, max_bytes)
            if problem is not None:
                skipped.append(SkippedFile(terminal_text(rel), problem))
                continue
            files.append(path)


def list_image_files(root: Path, classes: Sequence[str], extensions: tuple[str, ...],
                     max_bytes: int) -> tuple[list[tuple[Path, int]], list[SkippedFile]]:
    """Every readable image file under each class folder, with its class index; the rest, recorded."""
    found: list[tuple[Path, int]] = []
    skipped: list[SkippedFile] = []
    for index, name in enumerate(classes):
        files: list[Path] = []
        _walk_class(root, name, extensions, max_bytes, files, skipped)
        found.extend((path, index) for path in files)
    return found, skipped


def check_apart(out: Path, folders: Iterable[Path | None]) -> None:
    """The output folder may not lie inside an input folder, nor an input inside it."""
    target = out.resolve()
    for folder in folders:
        if folder is None:
            continue
        source = folder.resolve()
        if target == source or source in target.parents or target in source.parents:
            raise UsageError(
                f"--out {terminal_text(out)} and the image folder {terminal_text(folder)} overlap: outputs written "
                "into the data would be read as images (or a class) on the next run; choose an --out outside it"
            )
