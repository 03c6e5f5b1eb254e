"""A seccomp-BPF filter built with ctypes: an allowlist of what loading a model and running it need.

Every other call fails with EPERM instead of killing the worker, so the
model's attempt surfaces as a Python exception that the worker reports. The
list was measured (strace of the worker through whole audits: loading each
format, forward and backward passes, the attack, the control, the membership
pass) and holds reading, memory, threads, time and signals to itself. Some
calls are allowed only with safe arguments: ``clone`` for threads,
``open``/``openat`` read-only, ``kill``/``tgkill`` of this process,
``prlimit64`` that only reads, ``prctl`` that names a thread. ``clone3`` and
``openat2`` return ENOSYS (glibc then falls back to ``clone`` and ``openat``,
whose arguments a filter can inspect). The architecture is checked first; a
call from another ABI (x32, i386 on x86_64) is refused.
"""

from __future__ import annotations

import ctypes
import errno
import os
import platform
import struct

PR_SET_NO_NEW_PRIVS, PR_SET_SECCOMP, SECCOMP_MODE_FILTER = 38, 22, 2
SECCOMP_SET_MODE_FILTER, SECCOMP_FILTER_FLAG_TSYNC = 1, 1
PR_SET_NAME, PR_GET_NAME = 15, 16
AUDIT_ARCH = {"x86_64": 0xC000003E, "aarch64": 0xC00000B7}
RET_ALLOW, RET_ERRNO = 0x7FFF0000, 0x00050000
LD_W_ABS, JEQ_K, JGE_K, JSET_K, RET_K = 0x20, 0x15, 0x35, 0x45, 0x06
NR_OFFSET, ARCH_OFFSET = 0, 4
CLONE_THREAD = 0x00010000
WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND

# Allowed with any arguments (each measured in use, or glibc's way to a measured one: stat → newfstatat …).
ALLOWED = (
    "read", "readv", "pread64", "preadv", "lseek", "close", "newfstatat", "fstat", "stat", "lstat", "statx",
    "getdents64", "readlink", "readlinkat", "access", "faccessat", "faccessat2", "fcntl", "dup", "dup2", "dup3",
    "ioctl", "fstatfs", "statfs", "getcwd", "fadvise64",
    "write", "writev",  # to the descriptors it holds: its pipes (every file it may open is read-only)
    "brk", "mmap", "munmap", "mprotect", "mremap", "madvise", "get_mempolicy",
    "futex", "set_robust_list", "get_robust_list", "rseq", "sched_yield", "sched_getaffinity", "sched_setaffinity",
    "sched_getparam", "sched_getscheduler", "sched_get_priority_max", "sched_get_priority_min", "membarrier",
    "nanosleep", "clock_nanosleep", "clock_gettime", "clock_getres", "gettimeofday", "getrusage", "times",
    "getpid", "gettid", "getppid", "getuid", "geteuid", "getgid", "getegid", "getresuid", "getresgid", "uname",
    "sysinfo", "getrlimit", "getrandom",
    "rt_sigaction", "rt_sigprocmask", "rt_sigreturn", "sigaltstack", "restart_syscall", "exit", "exit_group",
    "set_tid_address", "arch_prctl", "poll", "ppoll", "select", "pselect6",
)
SYSCALLS = {
    "x86_64": {
        "read": 0, "write": 1, "readv": 19, "writev": 20, "pread64": 17, "preadv": 295, "lseek": 8, "close": 3,
        "openat": 257, "open": 2, "newfstatat": 262, "fstat": 5, "stat": 4, "lstat": 6, "statx": 332,
        "getdents64": 217, "readlink": 89, "readlinkat": 267, "access": 21, "faccessat": 269, "faccessat2": 439,
        "fcntl": 72, "dup": 32, "dup2": 33, "dup3": 292, "ioctl": 16, "fstatfs": 138, "statfs": 137, "getcwd": 79,
        "fadvise64": 221, "brk": 12, "mmap": 9, "munmap": 11, "mprotect": 10, "mremap": 25, "madvise": 28,
        "mincore": 27, "get_mempolicy": 239, "futex": 202, "set_robust_list": 273, "get_robust_list": 274,
        "rseq": 334, "sched_yield": 24, "sched_getaffinity": 204, "sched_setaffinity": 203, "sched_getparam": 143,
        "sched_getscheduler": 145, "sched_get_priority_max": 146, "sched_get_priority_min": 147, "nanosleep": 35,
        "clock_nanosleep": 230, "clock_gettime": 228, "clock_getres": 229, "gettimeofday": 96, "getrusage": 98,
        "times": 100, "getpid": 39, "gettid": 186, "getppid": 110, "getuid": 102, "geteuid": 107, "getgid": 104,
        "getegid": 108, "getresuid": 118, "getresgid": 120, "uname": 63, "sysinfo": 99, "prlimit64": 302,
        "getrlimit": 97, "rt_sigaction": 13, "rt_sigprocmask": 14, "rt_sigreturn": 15, "sigaltstack": 131,
        "restart_syscall": 219, "exit": 60, "exit_group": 231, "set_tid_address": 218, "arch_prctl": 158,
        "poll": 7, "ppoll": 271, "select": 23, "pselect6": 270, "getrandom": 318, "membarrier": 324, "prctl": 157,
        "clone": 56, "kill": 62, "tgkill": 234, "tkill": 200, "clone3": 435, "openat2": 437,
    },
    "aarch64": {
        "read": 63, "write": 64, "readv": 65, "writev": 66, "pread64": 67, "preadv": 69, "lseek": 62, "close": 57,
        "openat": 56, "newfstatat": 79, "fstat": 80, "statx": 291, "getdents64": 61, "readlinkat": 78,
        "faccessat": 48, "faccessat2": 439, "fcntl": 25, "dup": 23, "dup3": 24, "ioctl": 29, "fstatfs": 44,
        "statfs": 43, "getcwd": 17, "fadvise64": 223, "brk": 214, "mmap": 222, "munmap": 215, "mprotect": 226,
        "mremap": 216, "madvise": 233, "mincore": 232, "get_mempolicy": 236, "futex": 98, "set_robust_list": 99,
        "get_robust_list": 100, "rseq": 293, "sched_yield": 124, "sched_getaffinity": 123,
        "sched_setaffinity": 122, "sched_getparam": 121, "sched_getscheduler": 120, "sched_get_priority_max": 125,
        "sched_get_priority_min": 126, "nanosleep": 101, "clock_nanosleep": 115, "clock_gettime": 113,
        "clock_getres": 114, "gettimeofday": 169, "getrusage": 165, "times": 153, "getpid": 172, "gettid": 178,
        "getppid": 173, "getuid": 174, "geteuid": 175, "getgid": 176, "getegid": 177, "getresuid": 148,
        "getresgid": 150, "uname": 160, "sysinfo": 179, "prlimit64": 261, "getrlimit": 163, "rt_sigaction": 134,
        "rt_sigprocmask": 135, "rt_sigreturn": 139, "sigaltstack": 132, "restart_syscall": 128, "exit": 93,
        "exit_group": 94, "set_tid_address": 96, "ppoll": 73, "pselect6": 72, "getrandom": 278, "membarrier": 283,
        "prctl": 167, "clone": 220, "kill": 129, "tgkill": 131, "tkill": 130, "clone3": 435, "openat2": 437,
    },
}
SECCOMP_SYSCALL = {"x86_64": 317, "aarch64": 277}
CONDITIONAL = ("clone (threads only)", "open/openat (read-only)", "kill/tgkill (this process only)",
               "prlimit64 (reading a limit only)", "prctl (naming a thread only)")


class SeccompError(OSError):
    """The kernel refused the filter."""


def _insn(code: int, k: int, jt: int = 0, jf: int = 0) -> bytes:
    return struct.pack("=HBBI", code, jt, jf, k & 0xFFFFFFFF)


def _arg(i: int, high: bool = False) -> int:
    return 16 + 8 * i + (4 if high else 0)  # the low (or high) 32 bits of argument i (little-endian seccomp_data)


def _errno(e: int) -> bytes:
    return _insn(RET_K, RET_ERRNO | e)


_ALLOW = _insn(RET_K, RET_ALLOW)


def _when(nr: int, block: list[bytes]) -> list[bytes]:
    """Run ``block`` (which ends in a return) for syscall ``nr``; skip it otherwise."""
    return [_insn(JEQ_K, nr, 0, len(block)), *block]


def _conditional(table: dict[str, int], pid: int) -> list[bytes]:
    """The calls allowed only with safe arguments; each block returns."""
    deny = _errno(errno.EPERM)
    out = _when(table["clone"], [_insn(LD_W_ABS, _arg(0)), _insn(JSET_K, CLONE_THREAD, 0, 1), _ALLOW, deny])
    for name, flags_arg in (("open", 1), ("openat", 2)):
        if name in table:
            out += _when(table[name], [_insn(LD_W_ABS, _arg(flags_arg)), _insn(JSET_K, WRITE_FLAGS, 1, 0), _ALLOW,
                                       deny])
    for name in ("kill", "tgkill"):
        out += _when(table[name], [_insn(LD_W_ABS, _arg(0)), _insn(JEQ_K, pid, 0, 1), _ALLOW, deny])
    out += _when(table["prlimit64"], [_insn(LD_W_ABS, _arg(2)), _insn(JEQ_K, 0, 0, 3), _insn(LD_W_ABS, _arg(2, True)),
                                      _insn(JEQ_K, 0, 0, 1), _ALLOW, deny])
    out += _when(table["prctl"], [_insn(LD_W_ABS, _arg(0)), _insn(JEQ_K, PR_SET_NAME, 2, 0),
                                  _insn(JEQ_K, PR_GET_NAME, 1, 0), deny, _ALLOW])
    for name in ("clone3", "openat2"):
        out += _when(table[name], [_errno(errno.ENOSYS)])
    return out


def program(machine: str, pid: int) -> tuple[bytes, int, list[str]]:
    """The filter's instructions, their count and the names it allows, for ``machine`` and this worker's ``pid``."""
    table = SYSCALLS[machine]
    out = [_insn(LD_W_ABS, ARCH_OFFSET), _insn(JEQ_K, AUDIT_ARCH[machine], 1, 0), _errno(errno.EPERM),
           _insn(LD_W_ABS, NR_OFFSET)]
    if machine == "x86_64":
        out += [_insn(JGE_K, 0x40000000, 0, 1), _errno(errno.EPERM)]  # the x32 ABI
    out += _conditional(table, pid)
    allowed = [name for name in ALLOWED if name in table]
    for name in allowed:
        out += [_insn(JEQ_K, table[name], 0, 1), _ALLOW]
    out.append(_errno(errno.EPERM))  # everything else
    return b"".join(out), len(out), allowed + list(CONDITIONAL)


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
    no-new-privs on each), so threads started before it are held as the calling one is; the allowed calls."""
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
