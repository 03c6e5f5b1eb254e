"""Landlock through raw syscalls: the worker may read a short list of paths and write none.

Every filesystem right the kernel's ABI knows is handled (so denied unless a
rule grants it); the rules grant reading only. At ABI 4 TCP bind and connect
are handled with no rule (denied), at ABI 6 signals and abstract unix sockets
are scoped to the worker's own domain.
"""

from __future__ import annotations

import ctypes
import os
import platform
from collections.abc import Iterable
from pathlib import Path

SYSCALLS = {"x86_64": (444, 445, 446), "aarch64": (444, 445, 446)}  # create_ruleset, add_rule, restrict_self
CREATE_RULESET_VERSION = 1 << 0
RULE_PATH_BENEATH = 1

EXECUTE, WRITE_FILE, READ_FILE, READ_DIR = 1 << 0, 1 << 1, 1 << 2, 1 << 3
IOCTL_DEV = 1 << 15
_FS_BY_ABI = {1: (1 << 13) - 1, 2: (1 << 14) - 1, 3: (1 << 15) - 1, 4: (1 << 15) - 1, 5: (1 << 16) - 1}
NET_BIND_TCP, NET_CONNECT_TCP = 1 << 0, 1 << 1
SCOPE_ABSTRACT_UNIX_SOCKET, SCOPE_SIGNAL = 1 << 0, 1 << 1


class _RulesetAttr(ctypes.Structure):
    _fields_ = [("handled_access_fs", ctypes.c_uint64), ("handled_access_net", ctypes.c_uint64),
                ("scoped", ctypes.c_uint64)]


class _PathBeneathAttr(ctypes.Structure):
    _pack_ = 1
    _fields_ = [("allowed_access", ctypes.c_uint64), ("parent_fd", ctypes.c_int32)]


class LandlockError(OSError):
    """Landlock is there but refused the ruleset."""


def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(None, use_errno=True)


def _numbers() -> tuple[int, int, int] | None:
    return SYSCALLS.get(platform.machine()) if platform.system() == "Linux" else None


def abi_version() -> int | None:
    """The kernel's Landlock ABI, or None where there is none (not Linux, unknown arch, disabled)."""
    numbers = _numbers()
    if numbers is None:
        return None
    libc = _libc()
    libc.syscall.restype = ctypes.c_long
    version = libc.syscall(ctypes.c_long(numbers[0]), None, ctypes.c_size_t(0), ctypes.c_uint32(CREATE_RULESET_VERSION))
    return int(version) if version > 0 else None


def _fs_rights(abi: int) -> int:
    return _FS_BY_ABI.get(abi, _FS_BY_ABI[5])


def restrict(readable: Iterable[Path], devices: Iterable[Path] = ()) -> int:
    """Apply the ruleset to the calling thread and the threads it starts later; the ABI applied.

    Threads that already exist keep their rights: call it while the process has one thread. Needs
    ``PR_SET_NO_NEW_PRIVS`` first. Paths that do not exist are skipped. ``devices`` may also be opened for
    writing and take ioctls (a GPU's device files); everything else is read-only.
    """
    numbers = _numbers()
    abi = abi_version()
    if numbers is None or abi is None:
        raise LandlockError("Landlock is not available")
    create, add_rule, restrict_self = numbers
    libc = _libc()
    libc.syscall.restype = ctypes.c_long
    handled = _fs_rights(abi)
    attr = _RulesetAttr(handled, NET_BIND_TCP | NET_CONNECT_TCP if abi >= 4 else 0,
                        SCOPE_ABSTRACT_UNIX_SOCKET | SCOPE_SIGNAL if abi >= 6 else 0)
    size = 8 if abi < 4 else 16 if abi < 6 else 24
    ruleset = libc.syscall(ctypes.c_long(create), ctypes.byref(attr), ctypes.c_size_t(size), ctypes.c_uint32(0))
    if ruleset < 0:
        raise LandlockError(ctypes.get_errno(), f"landlock_create_ruleset: {os.strerror(ctypes.get_errno())}")
    try:
        for path in dict.fromkeys(Path(p) for p in readable):
            _allow(libc, add_rule, int(ruleset), path, handled, READ_FILE)
        for path in dict.fromkeys(Path(p) for p in devices):
            _allow(libc, add_rule, int(ruleset), path, handled, READ_FILE | WRITE_FILE | IOCTL_DEV)
        if libc.syscall(ctypes.c_long(restrict_self), ctypes.c_int(ruleset), ctypes.c_uint32(0)) != 0:
            raise LandlockError(ctypes.get_errno(), f"landlock_restrict_self: {os.strerror(ctypes.get_errno())}")
    finally:
        os.close(ruleset)
    return abi


def _allow(libc: ctypes.CDLL, add_rule: int, ruleset: int, path: Path, handled: int, file_rights: int) -> None:
    try:
        fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
    except OSError:
        return  # absent here: nothing to grant
    try:
        rights = file_rights | (READ_DIR if path.is_dir() else 0)
        rule = _PathBeneathAttr(rights & handled, fd)
        if libc.syscall(ctypes.c_long(add_rule), ctypes.c_int(ruleset), ctypes.c_int(RULE_PATH_BENEATH),
                        ctypes.byref(rule), ctypes.c_uint32(0)) != 0:
            raise LandlockError(ctypes.get_errno(), f"landlock_add_rule {path}: {os.strerror(ctypes.get_errno())}")
    finally:
        os.close(fd)
