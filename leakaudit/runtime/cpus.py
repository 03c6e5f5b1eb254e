"""How many CPU threads an audit should use: half the CPUs this process may really run on.

torch's default is the machine's core count, which on a CI runner is often
more than the process is allowed (a CPU affinity mask, a cgroup quota) or than
is free. Oversubscribed threads wait on each other at every parallel region.
Measured on the 2-core development machine under a load average of about 9
(other jobs), the informed pre-training step of the reference MLP took 1.6 s
of wall time with 2 threads and 0.37 s with 1 (40 ms of CPU either way); an
earlier measurement beside one busy process: 88 s with 2 threads, 40 s with 1,
24 s with 2 on the idle machine. The attack's small batches gain little from a
second thread and lose most when a neighbour takes a core, so an audit uses
half the usable CPUs (at least one). Measured again for large inputs, where a
second thread might pay (bench/bench_cost.py --compare-threads, load average
about 12): one forward+backward of 20 images of ResNet-18 at 224×224 took
31.6 s on 1 thread and 47.4 s on 2; beside one busy process (load average
about 2), 3.8 s and 5.6 s (at 128×128, 1.2 s and 3.4 s). So the choice is the
same for every input size: a second thread pays only on an otherwise idle
machine, which an audit cannot count on.

The count depends on what the process is allowed, never on the load of the
moment: another thread count sums in another order and moves SSIM values by
about 1e-3, so two runs of one audit on one machine must use the same count
to write the same document. It is recorded as ``provenance.threads``.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

CGROUP_V2 = Path("/sys/fs/cgroup/cpu.max")
CGROUP_V1_QUOTA = Path("/sys/fs/cgroup/cpu/cpu.cfs_quota_us")
CGROUP_V1_PERIOD = Path("/sys/fs/cgroup/cpu/cpu.cfs_period_us")
ENV_OVERRIDE = "LEAKAUDIT_THREADS"


def affinity_cpus() -> int:
    """CPUs in this process's affinity mask (all of them where the platform has no mask)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def cgroup_quota_cpus(v2: Path = CGROUP_V2, v1_quota: Path = CGROUP_V1_QUOTA,
                      v1_period: Path = CGROUP_V1_PERIOD) -> float | None:
    """The CPU quota of this process's cgroup, in CPUs (None: no quota)."""
    try:
        quota, period = v2.read_text().split()[:2]
        if quota != "max":
            return int(quota) / int(period)
        return None
    except (OSError, ValueError):
        pass
    try:
        quota_us = int(v1_quota.read_text())
        period_us = int(v1_period.read_text())
        return quota_us / period_us if quota_us > 0 and period_us > 0 else None
    except (OSError, ValueError):
        return None


def usable_cpus() -> int:
    """The CPUs this process may use: its affinity mask, capped by a cgroup quota (rounded up)."""
    count = affinity_cpus()
    quota = cgroup_quota_cpus()
    if quota is not None:
        count = min(count, max(1, math.ceil(quota)))
    return count


def choose_threads(requested: int | None = None) -> int:
    """The torch thread count of an audit: ``requested``, else $LEAKAUDIT_THREADS, else half the usable CPUs."""
    if requested is not None and requested > 0:
        return requested
    env = os.environ.get(ENV_OVERRIDE, "").strip()
    if env.isdigit() and int(env) > 0:
        return int(env)
    return max(1, usable_cpus() // 2)
