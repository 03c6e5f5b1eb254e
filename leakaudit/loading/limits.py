"""Declared-size checks: refuse what a file says it holds before anything is allocated.

A zip archive states every entry's uncompressed size in its central
directory; a safetensors header states every tensor's byte range. A small
file that declares gigabytes is a memory bomb, refused here by comparing the
declared sizes with the file's own size and with the memory this machine has.
An archive with two entries of the same name is refused too: which one a
reader takes differs between readers, so a check could vet the other one.
PyTorch's reader (miniz) looks names up ignoring ASCII letter case, so two
names that differ only in case are the same name to it, and every check that
asks "which entries would torch read" compares names folded the same way
(``folded``).
"""

from __future__ import annotations

import os
import zipfile
from pathlib import Path

from leakaudit.errors import ModelError
from leakaudit.sanitize import terminal_text

# PyTorch stores archive entries uncompressed; real weights deflate by ~10%.
# An entry that inflates far more than this is not a tensor.
MAX_INFLATION = 16.0
# Below this total, inflation is not worth refusing (JSON and code compress well).
SMALL_TOTAL = 64 << 20
# Never let one model file claim more than this share of the machine's memory.
MEMORY_SHARE = 0.5


def available_memory() -> int:
    """Bytes of memory this process could still get (MemAvailable, else physical size)."""
    try:
        with open("/proc/meminfo", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
    except (ValueError, OSError, AttributeError):
        return 1 << 34


def _gib(n: int) -> str:
    if n >= 1 << 30:
        return f"{n / (1 << 30):.2f} GiB"
    return f"{n / (1 << 20):.1f} MiB" if n >= 1 << 20 else f"{n} bytes"


def check_declared_total(path: Path, declared: int, what: str) -> None:
    """Refuse when ``declared`` bytes exceed what memory allows."""
    limit = int(available_memory() * MEMORY_SHARE)
    if declared > limit:
        raise ModelError(
            f"{terminal_text(path)}: {what} declares {_gib(declared)}, more than half the available memory "
            f"({_gib(limit * 2)}); refused before allocating"
        )


def check_zip_sizes(path: Path, archive: zipfile.ZipFile, file_size: int | None = None, what: str = "") -> None:
    """Every entry's declared size is plausible for the file (``file_size`` bytes) and fits in memory."""
    file_size = path.stat().st_size if file_size is None else file_size
    where = f"{terminal_text(path)}{what}"
    infos = archive.infolist()
    total = sum(info.file_size for info in infos)
    for info in infos:
        compressed = max(info.compress_size, 1)
        if info.file_size > SMALL_TOTAL and info.file_size > MAX_INFLATION * compressed:
            raise ModelError(
                f"{where}: archive entry {terminal_text(info.filename)} inflates from "
                f"{_gib(info.compress_size)} to {_gib(info.file_size)} ({info.file_size / compressed:.0f}x); "
                "refused before allocating (a zip bomb, not weights)"
            )
    if total > SMALL_TOTAL and total > MAX_INFLATION * max(file_size, 1):
        raise ModelError(f"{where}: the archive declares {_gib(total)} of content in {_gib(file_size)}; "
                         "refused before allocating")
    check_declared_total(path, total, "the archive")


_ASCII_UPPER = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz")


def folded(name: str) -> str:
    """An entry name as PyTorch's zip reader compares it: ASCII letters lower-cased, nothing else changed."""
    return name.translate(_ASCII_UPPER)


def check_unique_names(path: Path, archive: zipfile.ZipFile) -> None:
    """Two entries of one name (to PyTorch's reader: ignoring letter case): which one counts differs, so a check
    could vet the other one."""
    seen: dict[str, str] = {}
    for name in archive.namelist():
        key = folded(name)
        if key in seen:
            if seen[key] == name:
                raise ModelError(f"{terminal_text(path)}: archive entry {terminal_text(name)} appears twice; "
                                 "refused (zip readers differ on which one counts)")
            raise ModelError(f"{terminal_text(path)}: archive entries {terminal_text(seen[key])} and "
                             f"{terminal_text(name)} differ only in letter case, which PyTorch's reader ignores "
                             "(either could be the one it reads); refused")
        seen[key] = name


def open_zip(path: Path) -> zipfile.ZipFile:
    """The archive at ``path``, with unique entry names and plausible declared sizes."""
    try:
        archive = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError, ValueError) as exc:
        raise ModelError(f"{terminal_text(path)}: corrupt zip archive ({terminal_text(exc)})") from None
    try:
        check_unique_names(path, archive)
        check_zip_sizes(path, archive)
    except ModelError:
        archive.close()
        raise
    return archive
