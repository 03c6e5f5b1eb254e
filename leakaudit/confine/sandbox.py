"""The worker's confinement, in two steps, both before the model file is opened; and whether it can be.

``confine_process`` runs first thing in the worker, while it has one thread
(before numpy, scipy or torch start a thread pool): resource limits,
``PR_SET_NO_NEW_PRIVS`` and Landlock (read-only rules), which the kernel
applies to the calling thread and the threads it starts later. Once torch is
imported (and a GPU opened), ``confine_threads`` installs the seccomp filter
on every thread at once and takes the census of ``/proc/self/task``: the
model is not loaded unless every thread is held.
"""

from __future__ import annotations

import os
import sys
import sysconfig
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from leakaudit.confine import census, landlock, limits, seccomp

if TYPE_CHECKING:
    from leakaudit.config import AuditSettings

MODE_ENV = "LEAKAUDIT_CONFINEMENT"  # "off": run the model in-process, as where the kernel offers no confinement
SYSTEM_READABLE = ("/usr/lib", "/usr/lib64", "/usr/local/lib", "/lib", "/lib64", "/usr/share/zoneinfo",
                   "/etc/ld.so.cache", "/etc/localtime", "/proc/cpuinfo", "/proc/meminfo", "/proc/stat",
                   "/sys/devices/system/cpu", "/sys/devices/system/node", "/sys/fs/cgroup", "/dev/null",
                   "/dev/urandom", "/dev/zero")
GPU_DEVICES = ("/dev/nvidiactl", "/dev/nvidia-uvm", "/dev/nvidia-uvm-tools", "/dev/nvidia0", "/dev/nvidia1",
               "/dev/nvidia2", "/dev/nvidia3", "/dev/nvidia4", "/dev/nvidia5", "/dev/nvidia6", "/dev/nvidia7",
               "/dev/nvidia-caps")  # opened read-write by CUDA's initialisation
GPU_READABLE = ("/proc/driver/nvidia", "/proc/devices", "/sys/bus/pci", "/sys/devices")


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
    """The interpreter, its packages and the folders on ``PYTHONPATH``: what imports read after confinement.

    ``PYTHONPATH`` is the worker's (it inherits the variable): a module the user put there (an ``--arch`` or a
    pickled module's class) is importable in the worker too, read-only.
    """
    variable = os.environ.get("PYTHONPATH", "")
    extra = [p or "." for p in variable.split(os.pathsep)] if variable else []
    package = Path(__file__).resolve().parents[1]  # leakaudit itself, wherever an editable install keeps it
    found = [sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix, str(package),
             *sysconfig.get_paths().values(), *sys.path, *extra]
    return [Path(p).resolve() for p in found if p and os.path.exists(p)]


def readable_paths(model: Path, init: Path | None, code_from_cwd: bool) -> list[Path]:
    """What the worker may read: the model, the --init file, Python, system libraries, and with ``code_from_cwd``
    (``--arch``, ``--unsafe-pickle``) the working directory, whose modules the in-process audit imports too."""
    paths = [model.resolve()]
    if init is not None:
        paths.append(init.resolve())
    if code_from_cwd:
        paths.append(Path.cwd())
    paths += python_paths()
    paths += [Path(p) for p in SYSTEM_READABLE]
    return paths


def gpu_wanted(device: str | None) -> bool:
    """Whether the worker may open a GPU's device files: asked for, or (no device named) a GPU driver present.

    Decided without importing torch, so that the request can go out before this process has imported it.
    """
    if device is not None:
        return str(device).startswith("cuda")
    return os.path.exists("/dev/nvidiactl")


def confine_request(settings: AuditSettings) -> dict[str, Any] | None:
    """The worker's first message for an audit of a model file (``ConfinedSession`` sends the same): what it may
    read, its memory limit, whether it may open a GPU. None for a model that is not a file."""
    if not isinstance(settings.model, (str, Path)):
        return None
    model = Path(settings.model)
    readable = readable_paths(model, settings.init, settings.arch is not None or settings.unsafe_pickle)
    return {"kind": "confine", "readable": [str(p) for p in readable], "memory_bytes": limits.memory_limit(),
            "gpu": gpu_wanted(settings.device)}


def confine_process(readable: Iterable[Path], memory_bytes: int | None, gpu: bool) -> dict[str, Any]:
    """Limits, no-new-privs and Landlock, while this process has one thread; the record's first fields.

    ``/proc`` is readable only in this process's own entry (and a few system-wide files). ``gpu``: the GPU's
    device files may be opened for writing too (CUDA needs them), nothing else.
    """
    threads = census.thread_count()
    if threads != 1:
        raise census.CensusError(f"the worker had {threads} threads before confining itself (it needs one)")
    record: dict[str, Any] = {"worker": True, "landlock_abi": None, "seccomp": False}
    record["rlimits"] = limits.apply(memory_bytes)
    seccomp.no_new_privs()
    record["no_new_privs"] = True
    own = [Path(f"/proc/{os.getpid()}")]
    devices = [Path(p) for p in GPU_DEVICES] if gpu else []
    extra = [Path(p) for p in GPU_READABLE] if gpu else []
    record["landlock_abi"] = landlock.restrict([*readable, *own, *extra], devices)
    return record


def confine_threads(record: dict[str, Any]) -> dict[str, Any]:
    """The seccomp filter on every thread, then the census; the completed record (raises if a thread is loose)."""
    record = dict(record)
    record["seccomp_allowed"] = seccomp.install()
    record["seccomp_denied"] = ["every other system call (EPERM)"]
    record["seccomp"] = True
    found = census.require_confined()
    record["every_thread_confined"] = True
    record["census"] = [{"tid": t.tid, "name": t.name, "seccomp": t.seccomp, "no_new_privs": t.no_new_privs}
                        for t in found]  # kept by the session, left out of the findings document (ids vary)
    return record
