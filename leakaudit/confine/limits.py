"""Resource limits of the worker: open files and memory.

Memory is bounded with ``RLIMIT_DATA`` (heap and private writable mappings,
where torch's tensors live), not ``RLIMIT_AS``: a CUDA build reserves large
virtual ranges it never touches, which an address-space limit would break.
The default is a share of the machine's physical memory, so a model that
allocates without end meets a ``MemoryError`` in the worker, never the
kernel's out-of-memory killer in the middle of the audit.
"""

from __future__ import annotations

import os
import resource

MEMORY_SHARE = 0.75  # of physical memory, by default
MEMORY_ENV = "LEAKAUDIT_WORKER_MEMORY_GIB"  # another limit, in GiB (tests use a small one)
OPEN_FILES = 1024


def physical_memory() -> int | None:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None


def memory_limit() -> int | None:
    """The worker's memory limit in bytes: ``LEAKAUDIT_WORKER_MEMORY_GIB``, else a share of physical memory."""
    value = os.environ.get(MEMORY_ENV)
    if value:
        return int(float(value) * (1 << 30))
    total = physical_memory()
    return int(total * MEMORY_SHARE) if total else None


def gib(n: int) -> str:
    return f"{n / (1 << 30):.3g}"


def apply(memory_bytes: int | None) -> dict[str, int | None]:
    """Lower this process's limits (never raise them); what was set."""
    applied: dict[str, int | None] = {}
    for name, which, value in (("nofile", resource.RLIMIT_NOFILE, OPEN_FILES),
                               ("data", resource.RLIMIT_DATA, memory_bytes),
                               ("core", resource.RLIMIT_CORE, 0), ("fsize", resource.RLIMIT_FSIZE, 0)):
        if value is None:
            applied[name] = None
            continue
        soft, hard = resource.getrlimit(which)
        capped = value if hard == resource.RLIM_INFINITY else min(value, hard)
        resource.setrlimit(which, (capped, capped))
        applied[name] = capped
    return applied
