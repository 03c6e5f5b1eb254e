"""The worker's confinement, applied in one call before the model file is opened; and whether it can be.

Order: resource limits, ``PR_SET_NO_NEW_PRIVS``, Landlock (read-only rules),
then the seccomp filter last (it denies what the earlier steps still use).
"""

from __future__ import annotations

import os
import sys
import sysconfig
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from leakaudit.confine import landlock, limits, seccomp

MODE_ENV = "LEAKAUDIT_CONFINEMENT"  # "off": run the model in-process, as where the kernel offers no confinement
SYSTEM_READABLE = ("/usr/lib", "/usr/lib64", "/usr/local/lib", "/lib", "/lib64", "/usr/share/zoneinfo",
                   "/etc/ld.so.cache", "/etc/localtime", "/proc", "/sys", "/dev/null", "/dev/urandom",
                   "/dev/zero", "/dev/shm")


def unavailable_reason() -> str | None:
    """Why the model cannot run confined here, or None when it can."""
    if os.environ.get(MODE_ENV, "").lower() == "off":
        return f"confinement turned off ({MODE_ENV}=off)"
    if sys.platform != "linux":
        return f"no confinement on {sys.platform} (Landlock and seccomp are Linux's)"
    if seccomp.supported_machine() is None:
        return f"no confinement for this architecture ({os.uname().machine})"
    if landlock.abi_version() is None:
        return "the kernel offers no Landlock (too old, or disabled)"
    return None


def python_paths() -> list[Path]:
    """The interpreter and its packages: what imports read after confinement."""
    found = [sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix,
             *sysconfig.get_paths().values(), *sys.path]
    return [Path(p) for p in found if p and os.path.exists(p)]


def readable_paths(model: Path, init: Path | None, arch: bool) -> list[Path]:
    """What the worker may read: the model, the --init file, the --arch module's folder, Python, system libraries."""
    paths = [model.resolve()]
    if init is not None:
        paths.append(init.resolve())
    if arch:  # imported from the working directory, like the in-process audit
        paths.append(Path.cwd())
    paths += python_paths()
    paths += [Path(p) for p in SYSTEM_READABLE]
    return paths


def confine(readable: Iterable[Path], memory_bytes: int | None) -> dict[str, Any]:
    """Apply everything this kernel offers; the record the findings document keeps."""
    record: dict[str, Any] = {"worker": True, "landlock_abi": None, "seccomp": False}
    record["rlimits"] = limits.apply(memory_bytes)
    seccomp.no_new_privs()
    record["no_new_privs"] = True
    record["landlock_abi"] = landlock.restrict(readable)
    record["seccomp_denied"] = seccomp.install()
    record["seccomp"] = True
    return record
