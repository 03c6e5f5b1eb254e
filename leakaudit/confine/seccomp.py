"""A seccomp-BPF filter built with ctypes: no new programs, processes, sockets, writes or foreign signals.

Denied calls return an errno instead of killing the worker, so the model's
attempt surfaces as a Python exception that the worker reports. ``clone3``
and ``openat2`` return ENOSYS (glibc then falls back to ``clone`` for threads,
whose flags a filter can inspect). The architecture is checked first; a call
from another ABI (x32, i386 on x86_64) is refused.
"""

from __future__ import annotations

import ctypes
import errno
import os
import platform
import struct

PR_SET_NO_NEW_PRIVS, PR_SET_SECCOMP, SECCOMP_MODE_FILTER = 38, 22, 2
SECCOMP_SET_MODE_FILTER, SECCOMP_FILTER_FLAG_TSYNC = 1, 1
SECCOMP_SYSCALL = {"x86_64": 317, "aarch64": 277}
AUDIT_ARCH = {"x86_64": 0xC000003E, "aarch64": 0xC00000B7}
RET_ALLOW, RET_ERRNO = 0x7FFF0000, 0x00050000
LD_W_ABS, JEQ_K, JGE_K, JSET_K, RET_K = 0x20, 0x15, 0x35, 0x45, 0x06
NR_OFFSET, ARCH_OFFSET = 0, 4
CLONE_THREAD = 0x00010000
WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND

_DENIED_COMMON = (
    "execve", "execveat", "socket", "socketpair", "connect", "bind", "listen", "accept", "accept4", "ptrace",
    "process_vm_readv", "process_vm_writev", "mknodat", "unlinkat", "renameat", "renameat2", "mkdirat", "linkat",
    "symlinkat", "truncate", "fchmodat", "fchownat", "mount", "umount2", "chroot", "pivot_root", "unshare", "setns",
    "bpf", "perf_event_open", "userfaultfd", "keyctl", "add_key", "request_key", "init_module", "finit_module",
    "kexec_load", "open_by_handle_at", "name_to_handle_at", "io_uring_setup", "io_uring_enter", "io_uring_register",
)
_DENIED_X86_ONLY = ("fork", "vfork", "creat", "mknod", "unlink", "rename", "mkdir", "rmdir", "link", "symlink", "chmod",
                    "chown", "lchown")
SYSCALLS = {
    "x86_64": {
        "execve": 59, "execveat": 322, "fork": 57, "vfork": 58, "clone": 56, "clone3": 435, "socket": 41,
        "socketpair": 53, "connect": 42, "bind": 49, "listen": 50, "accept": 43, "accept4": 288, "ptrace": 101,
        "process_vm_readv": 310, "process_vm_writev": 311, "kill": 62, "tkill": 200, "tgkill": 234, "open": 2,
        "openat": 257, "openat2": 437, "creat": 85, "mknod": 133, "mknodat": 259, "unlink": 87, "unlinkat": 263,
        "rename": 82, "renameat": 264, "renameat2": 316, "mkdir": 83, "mkdirat": 258, "rmdir": 84, "link": 86,
        "linkat": 265, "symlink": 88, "symlinkat": 266, "truncate": 76, "chmod": 90, "fchmodat": 268, "chown": 92,
        "lchown": 94, "fchownat": 260, "mount": 165, "umount2": 166, "chroot": 161, "pivot_root": 155,
        "unshare": 272, "setns": 308, "bpf": 321, "perf_event_open": 298, "userfaultfd": 323, "keyctl": 250,
        "add_key": 248, "request_key": 249, "init_module": 175, "finit_module": 313, "kexec_load": 246,
        "open_by_handle_at": 304, "name_to_handle_at": 303, "io_uring_setup": 425, "io_uring_enter": 426,
        "io_uring_register": 427,
    },
    "aarch64": {
        "execve": 221, "execveat": 281, "clone": 220, "clone3": 435, "socket": 198, "socketpair": 199, "bind": 200,
        "listen": 201, "accept": 202, "connect": 203, "accept4": 242, "ptrace": 117, "process_vm_readv": 270,
        "process_vm_writev": 271, "kill": 129, "tkill": 130, "tgkill": 131, "openat": 56, "openat2": 437,
        "mknodat": 33, "unlinkat": 35, "renameat": 38, "renameat2": 276, "mkdirat": 34, "linkat": 37,
        "symlinkat": 36, "truncate": 45, "fchmodat": 53, "fchownat": 54, "mount": 40, "umount2": 39, "chroot": 51,
        "pivot_root": 41, "unshare": 97, "setns": 268, "bpf": 280, "perf_event_open": 241, "userfaultfd": 282,
        "keyctl": 219, "add_key": 217, "request_key": 218, "init_module": 105, "finit_module": 273,
        "kexec_load": 104, "open_by_handle_at": 265, "name_to_handle_at": 264, "io_uring_setup": 425,
        "io_uring_enter": 426, "io_uring_register": 427,
    },
}


class SeccompError(OSError):
    """The kernel refused the filter."""


def _insn(code: int, k: int, jt: int = 0, jf: int = 0) -> bytes:
    return struct.pack("=HBBI", code, jt, jf, k & 0xFFFFFFFF)


def _arg(i: int) -> int:
    return 16 + 8 * i  # the low 32 bits of argument i (little-endian seccomp_data)


def _errno(e: int) -> bytes:
    return _insn(RET_K, RET_ERRNO | e)


def _when(nr: int, block: list[bytes]) -> list[bytes]:
    """Run ``block`` for syscall ``nr`` (the block ends by reloading the number); skip it otherwise."""
    return [_insn(JEQ_K, nr, 0, len(block)), *block]


def program(machine: str, pid: int) -> tuple[bytes, int, list[str]]:
    """The filter's instructions, their count and the names it denies, for ``machine`` and this worker's ``pid``."""
    table = SYSCALLS[machine]
    load_nr = _insn(LD_W_ABS, NR_OFFSET)
    out = [_insn(LD_W_ABS, ARCH_OFFSET), _insn(JEQ_K, AUDIT_ARCH[machine], 1, 0), _errno(errno.EPERM), load_nr]
    if machine == "x86_64":
        out += [_insn(JGE_K, 0x40000000, 0, 1), _errno(errno.EPERM)]  # the x32 ABI
    denied = list(_DENIED_COMMON) + (list(_DENIED_X86_ONLY) if machine == "x86_64" else [])
    for name in denied:
        out += _when(table[name], [_errno(errno.EPERM)])
    for name in ("clone3", "openat2"):
        out += _when(table[name], [_errno(errno.ENOSYS)])
    # clone: threads only
    out += _when(table["clone"], [_insn(LD_W_ABS, _arg(0)), _insn(JSET_K, CLONE_THREAD, 1, 0), _errno(errno.EPERM),
                                  load_nr])
    # open/openat: read-only
    for name, flags_arg in (("open", 1), ("openat", 2)):
        if name in table:
            out += _when(table[name], [_insn(LD_W_ABS, _arg(flags_arg)), _insn(JSET_K, WRITE_FLAGS, 0, 1),
                                       _errno(errno.EPERM), load_nr])
    # signals: to this process only
    for name in ("kill", "tgkill"):
        out += _when(table[name], [_insn(LD_W_ABS, _arg(0)), _insn(JEQ_K, pid, 1, 0), _errno(errno.EPERM), load_nr])
    out += _when(table["tkill"], [_errno(errno.EPERM)])
    out.append(_insn(RET_K, RET_ALLOW))
    names = denied + ["clone3", "openat2", "clone (without CLONE_THREAD)", "open/openat (for writing)",
                      "kill/tgkill (of another process)", "tkill"]
    return b"".join(out), len(out), names


class _SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]


def supported_machine() -> str | None:
    machine = platform.machine()
    return machine if platform.system() == "Linux" and machine in SYSCALLS else None


def no_new_privs() -> None:
    """``PR_SET_NO_NEW_PRIVS``: nothing this process runs gains privileges (needed by both filters)."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
        raise SeccompError(ctypes.get_errno(), "prctl(PR_SET_NO_NEW_PRIVS) failed")


def install() -> list[str]:
    """Install the filter on every thread of this process at once (``SECCOMP_FILTER_FLAG_TSYNC``, which also sets
    no-new-privs on each), so threads started before it are held as the calling one is; the denied calls."""
    machine = supported_machine()
    if machine is None:
        raise SeccompError(errno.ENOSYS, f"no seccomp filter for {platform.system()} {platform.machine()}")
    code, count, names = program(machine, os.getpid())
    buffer = ctypes.create_string_buffer(code, len(code))
    prog = _SockFprog(count, ctypes.cast(buffer, ctypes.c_void_p))
    libc = ctypes.CDLL(None, use_errno=True)
    libc.syscall.restype = ctypes.c_long
    done = libc.syscall(ctypes.c_long(SECCOMP_SYSCALL[machine]), ctypes.c_uint(SECCOMP_SET_MODE_FILTER),
                        ctypes.c_uint(SECCOMP_FILTER_FLAG_TSYNC), ctypes.byref(prog))
    if done != 0:  # -1 and errno, or the id of a thread that could not take the filter
        reason = os.strerror(ctypes.get_errno()) if done < 0 else f"thread {done} could not take it"
        raise SeccompError(ctypes.get_errno() if done < 0 else errno.EBUSY, f"seccomp(TSYNC): {reason}")
    return names
