"""The model in the audit's own process, behind the same interface as the confined worker.

``ModelSession`` is what the audit may do with the model; ``InProcessSession``
does it here, for in-memory modules, distributed runs (their collectives need
sockets) and where the kernel offers no confinement.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

import torch

from leakaudit.confine.operations import AttackRequest, ControlRequest, LoadRequest, ModelInfo, ReferenceRequest
from leakaudit.runtime.distributed import DistContext
from leakaudit.inversion import InversionCallbacks, InversionResult
from leakaudit.inversion.warmstart import PretrainCache
from leakaudit.membership.references import OnModel, ReferenceModel, ReferenceRun
from leakaudit.model.target import TargetModel
from leakaudit.power.control import ControlRun

StopCheck = Callable[[], bool]


class ModelSession(Protocol):
    """What the audit may do with the model under audit."""

    confinement: dict[str, Any]

    @property
    def info(self) -> ModelInfo: ...

    def load(self, request: LoadRequest) -> ModelInfo: ...

    def attack(self, request: AttackRequest, callbacks: InversionCallbacks, should_stop: StopCheck,
               checkpoint_dir: Path | None) -> InversionResult: ...

    def logits(self, images: torch.Tensor) -> torch.Tensor: ...

    def run_control(self, request: ControlRequest, callbacks: InversionCallbacks,
                    should_stop: StopCheck) -> ControlRun: ...

    def train_references(self, request: ReferenceRequest, callbacks: InversionCallbacks,
                         should_stop: StopCheck, on_model: OnModel | None = None) -> ReferenceRun: ...

    def close(self) -> None: ...



class HoldsModelInfo:
    """A session's description of its loaded model, which the audit reads only after ``load``."""

    _info: ModelInfo | None = None

    @property
    def info(self) -> ModelInfo:
        if self._info is None:
            raise RuntimeError("the model's description was read before the model was loaded")
        return self._info


class InProcessSession(HoldsModelInfo):
    """The model in this process: today's behaviour, with the session's interface."""

    def __init__(self, reason: str, target: TargetModel | None = None, dist: DistContext | None = None) -> None:
        self.confinement: dict[str, Any] = {"worker": False, "reason": reason}
        self.target = target
        self.dist = dist
        self._info = ModelInfo.of(target) if target is not None else None  # else set by ``load``
        self.pretrain_cache = PretrainCache()  # the attack's informed pre-training, for the controls

    def load(self, request: LoadRequest) -> ModelInfo:
        from leakaudit.confine import operations

        self.target = operations.load(request)
        self._info = ModelInfo.of(self.target)
        return self._info

    def attack(self, request: AttackRequest, callbacks: InversionCallbacks, should_stop: StopCheck,
               checkpoint_dir: Path | None) -> InversionResult:
        from leakaudit.confine import operations

        return operations.attack(self._target(), request, callbacks, should_stop, checkpoint_dir, self.dist,
                                 self.pretrain_cache)

    def logits(self, images: torch.Tensor) -> torch.Tensor:
        from leakaudit.confine import operations

        return operations.logits(self._target(), images)

    def run_control(self, request: ControlRequest, callbacks: InversionCallbacks, should_stop: StopCheck) -> ControlRun:
        from leakaudit.confine import operations

        return operations.control(self._target(), request, callbacks, should_stop, self.pretrain_cache)

    def train_references(self, request: ReferenceRequest, callbacks: InversionCallbacks,
                         should_stop: StopCheck, on_model: OnModel | None = None) -> ReferenceRun:
        """``on_model``: each finished model's signals as it finishes (the membership checkpoints)."""
        from leakaudit.confine import operations

        def finished(model: ReferenceModel, done: int, planned: int) -> None:
            if on_model is not None:
                on_model(model, done, planned)
            if callbacks.on_step is not None:
                callbacks.on_step(done, planned, {})

        return operations.train_references(self._target(), request, should_stop, finished)

    def _target(self) -> TargetModel:
        if self.target is None:
            raise RuntimeError("the model is not loaded yet")
        return self.target

    def close(self) -> None:
        pass

