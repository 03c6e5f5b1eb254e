"""What every stage of one audit shares: its settings, where progress goes, the stop check, the ranks, the clock."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from leakaudit.config import AuditSettings
from leakaudit.runtime.distributed import DistContext
from leakaudit.runtime.progress import Observer, StopCheck
from leakaudit.pipeline.provenance import StageTimer


@dataclass(frozen=True)
class RunContext:
    """The per-run objects a stage needs, passed as one so that no stage takes them one by one."""

    settings: AuditSettings
    observer: Observer
    stop: StopCheck
    dist: DistContext
    timer: StageTimer  # the stages' wall times; the budget counts from its start
    threads: int  # torch CPU threads of this audit (recorded in the provenance)
    clock: Callable[[], float] = time.monotonic  # what the budget is measured by (a test may move it on)

    def budget_left_s(self) -> float | None:
        """Seconds of ``--budget`` left (negative once spent); None without a budget."""
        budget = self.settings.budget
        return None if budget is None else budget - (self.clock() - self.timer.started)
