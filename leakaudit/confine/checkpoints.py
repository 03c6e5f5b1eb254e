"""The worker's checkpoints, written by the parent: the confined worker cannot write files.

The worker sends each checkpoint over the pipe; ``CheckpointWriter`` writes it
with the inversion engine's own writers into the parent's checkpoint folder,
and ``saved_state`` reads an interrupted run's state back for the worker.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from leakaudit.confine import results
from leakaudit.confine.operations import AttackRequest
from leakaudit.inversion.engine import Checkpointer
from leakaudit.inversion.resume import RESUME_FILE, clear_state, save_state
from leakaudit.membership.references import OnModel


class _Weights:
    """A state_dict standing in for the generator, for the engine's own checkpoint writer."""

    def __init__(self, state: dict[str, torch.Tensor]) -> None:
        self._state = state

    def state_dict(self) -> dict[str, torch.Tensor]:
        return self._state



class CheckpointWriter:
    """Writes the worker's checkpoints with the engine's own writers, into the parent's checkpoint folder."""

    def __init__(self, folder: Path | None, request: AttackRequest) -> None:
        self.folder = folder
        self.config = request.config

    def write(self, message: dict[str, Any]) -> None:
        if self.folder is None:
            return
        name = message.get("name")
        if name == "generator":
            state = message.get("generator")
            if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
                raise results.ReplyError("generator checkpoint")
            step, phase = results.integer(message.get("step")), str(message.get("phase"))
            Checkpointer(self.folder, self.config).save(_Weights(state), step, phase, force=True)
        elif name == "resume":
            key, next_phase, state = message.get("key"), message.get("next_phase"), message.get("state")
            if not isinstance(key, str) or not isinstance(next_phase, str) or not isinstance(state, dict):
                raise results.ReplyError("resume checkpoint")
            save_state(self.folder, key, next_phase, state)
        elif name == "clear":
            clear_state(self.folder)



class ReferenceWriter:
    """Hands each reference model the worker finished to ``on_model`` (which keeps its checkpoint), checked first."""

    def __init__(self, on_model: OnModel | None, n: int, num_classes: int, flips: bool, planned: int) -> None:
        self.on_model, self.n, self.num_classes, self.flips, self.planned = on_model, n, num_classes, flips, planned
        self.done = 0

    def write(self, message: dict[str, Any]) -> None:
        if message.get("name") != "reference" or self.on_model is None:
            return
        fields = message.get("model")
        if not isinstance(fields, dict):
            raise results.ReplyError("reference checkpoint")
        model = results.reference_model(fields, self.n, self.num_classes, self.flips)
        self.done += 1
        self.on_model(model, self.done, self.planned)


def saved_state(folder: Path | None) -> dict[str, Any] | None:
    """The saved inversion state of an interrupted run, for the worker to resume (it checks the key)."""
    if folder is None or not (folder / RESUME_FILE).is_file():
        return None
    try:
        state = torch.load(folder / RESUME_FILE, map_location="cpu", weights_only=True)
    except Exception:  # damaged: start afresh, as the engine does
        return None
    return state if isinstance(state, dict) else None

