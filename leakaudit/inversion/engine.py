"""The per-run state of one inversion: the step clock, checkpoints, and the objects every phase shares.

``Clock`` is the only place that calls the callbacks and decides when a run
ends (the budget ceiling, a stop request, agreed across ranks); ``RunState``
bundles what the phases pass around so that none takes them one by one.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Protocol

import torch

from leakaudit.runtime.distributed import DistContext
from leakaudit.inversion.config import InversionConfig
from leakaudit.inversion.generator import ConditionalGenerator
from leakaudit.inversion.informed import LatentGaussian
from leakaudit.inversion.interrupt import StopPoll
from leakaudit.inversion.objective import Weights
from leakaudit.model.target import TargetModel
from leakaudit.report.atomic import atomic_write


@dataclass
class InversionCallbacks:
    """Observers of a run; any may be None."""

    on_start: Callable[[int], None] | None = None  # planned steps
    on_step: Callable[[int, int, dict[str, float]], None] | None = None  # step, planned, losses
    on_phase: Callable[[str], None] | None = None


class Clock:
    """Steps, the budget ceiling and stop requests of one run; the only place that calls the callbacks."""

    def __init__(self, config: InversionConfig, phases: list[tuple[str, int]], callbacks: InversionCallbacks,
                 should_stop: Callable[[], bool] | None, dist: DistContext) -> None:
        self.config = config
        self.dist = dist
        self.phases = dict(phases)
        self.planned = sum(n for _, n in phases)
        self.callbacks = callbacks
        self.should_stop = should_stop
        # inside a step (interrupt.py); ranks must agree on every stop, which only happens between steps
        self.stop = StopPoll(None if dist.is_distributed else should_stop)
        self.start = time.monotonic()
        self.steps = 0
        self.stopped = False
        self.interrupted = False  # stopped by should_stop (a signal), not by the budget
        self.last: dict[str, float] = {}
        self.phase_seconds: dict[str, float] = {}
        self._phase: tuple[str, float] | None = None

    def elapsed(self) -> float:
        return time.monotonic() - self.start

    def enter(self, name: str) -> None:
        """Start a phase (its time is recorded); the budget is one ceiling for the whole run."""
        self._close_phase()
        self._phase = (name, time.monotonic())
        if self.callbacks.on_phase:
            self.callbacks.on_phase(name)

    def _close_phase(self) -> None:
        if self._phase is not None:
            name, began = self._phase
            self.phase_seconds[name] = self.phase_seconds.get(name, 0.0) + time.monotonic() - began
            self._phase = None

    def finish(self) -> None:
        self._close_phase()

    def abandoned(self) -> bool:
        """After an ``interruptible`` block: whether a stop cut it short (then the step is dropped, the run ends)."""
        if self.stop.asked:
            self.interrupted = self.stopped = True
        return self.stop.asked

    def tick(self, losses: Mapping[str, torch.Tensor | float]) -> bool:
        """Count a step; False when the run must end (budget ceiling, stop request).

        ``losses`` may be tensors on the device: they are read back here, in one copy, for the progress
        callback and the result; nothing else in a step loop reads the device (a GPU never waits twice a step).
        """
        self.steps += 1
        self.last = host_floats(losses)
        if self.callbacks.on_step:
            self.callbacks.on_step(self.steps, self.planned, self.last)
        asked = self.stop.asked or (self.should_stop is not None and self.should_stop())
        over = self.config.budget_s is not None and self.elapsed() >= self.config.budget_s
        # Ranks agree on the decision, so they always run the same number of collectives.
        self.interrupted, over = self.dist.any_flags(self.interrupted or asked, over)
        self.stopped = self.stopped or self.interrupted or over
        return not self.stopped


def host_floats(values: Mapping[str, torch.Tensor | float]) -> dict[str, float]:
    """Scalar tensors (any device) and floats → floats, with one read of the device for all the tensors."""
    tensors = {name: value for name, value in values.items() if isinstance(value, torch.Tensor)}
    read: list[float] = []
    if tensors:  # float64 holds every float32 exactly: the same numbers as float() of each
        device = next(iter(tensors.values())).device
        read = torch.stack([t.detach().reshape(()).to(device, torch.float64) for t in tensors.values()]).tolist()
    out = dict(zip(tensors, read))
    return {name: out[name] if name in out else float(value) for name, value in values.items()}


class Checkpointed(Protocol):
    """What a generator checkpoint saves: the generator, or its weights as the confined worker sent them."""

    def state_dict(self) -> Mapping[str, Any]: ...


class Checkpointer:
    """Writes ``generator.pt`` into the checkpoint folder every N steps (atomically, never through a link)."""

    def __init__(self, folder: Path | None, config: InversionConfig) -> None:
        self.folder = Path(folder) if folder is not None else None
        self.every = config.checkpoint_every
        self.config = asdict(config)

    def save(self, gen: Checkpointed, step: int, phase: str, force: bool = False) -> None:
        if self.folder is None or (not force and (self.every <= 0 or step % self.every)):
            return
        payload = {"generator": gen.state_dict(), "step": step, "phase": phase, "config": self.config}
        atomic_write(self.folder / "generator.pt", lambda stream: torch.save(payload, stream), owned=True)


def cosine_lr(opt: torch.optim.Optimizer, step: int, total: int, final_fraction: float) -> None:
    """Cosine decay of every parameter group's rate, from the rate it was created with to final_fraction of it."""
    t = min(1.0, step / max(1, total))
    factor = final_fraction + (1 - final_fraction) * 0.5 * (1 + math.cos(math.pi * t))
    for group in opt.param_groups:
        group["lr"] = group.setdefault("initial_lr", group["lr"]) * factor


@dataclass
class RunState:
    """What every phase of one run shares; ``latents`` changes once the informed prior is fitted."""

    target: TargetModel
    config: InversionConfig
    weights: Weights
    gen: ConditionalGenerator
    clock: Clock
    ckpt: Checkpointer
    rng: torch.Generator
    device: torch.device
    latents: LatentGaussian

    @property
    def num_classes(self) -> int:
        return self.gen.num_classes
