"""The worker's side of progress, stop requests and checkpoints: everything it would write goes to the parent.

The worker may not write files, so the engine's checkpoint functions are
replaced, in the worker only, by ones that send the state to the parent,
which writes it with the engine's own writers (``session``); a saved state
the parent read comes with the attack request instead of from a file.
"""

from __future__ import annotations

import importlib
import time
from pathlib import Path
from typing import Any

import torch

from leakaudit.confine.channel import Channel
from leakaudit.inversion import InversionCallbacks
from leakaudit.inversion.engine import Checkpointer

invert_module = importlib.import_module("leakaudit.inversion.invert")  # the module, not its function
STEP_INTERVAL_S = 0.05  # progress frames at most this often (the parent's display needs no more)
MAX_WARNINGS = 1000  # distinct warnings sent; a model warning in a loop sends each text once
RELAY_FOLDER = Path("/nonexistent/leakaudit-relay")  # stands for the parent's checkpoint folder


class Relay:
    """Events to the parent and its stop request back, over the worker's channel."""

    def __init__(self, channel: Channel) -> None:
        self.channel = channel
        self.stopped = False
        self.resume_state: dict[str, Any] | None = None
        self._pending: dict[str, Any] | None = None
        self._last_sent = 0.0
        self._warned: set[tuple[str, str]] = set()

    def send(self, message: dict[str, Any]) -> None:
        self.flush()
        self.channel.send(message)

    def flush(self) -> None:
        if self._pending is not None:
            pending, self._pending = self._pending, None
            self.channel.send(pending)
            self._last_sent = time.monotonic()

    def warning(self, message: Warning | str, category: type[Warning], *_: Any, **__: Any) -> None:
        """A warning raised in the worker (by the model, say), sent once per distinct text."""
        key = (category.__name__, str(message)[:2000])
        if key in self._warned or len(self._warned) >= MAX_WARNINGS:
            return
        self._warned.add(key)
        self.send({"kind": "warning", "category": key[0], "message": key[1]})

    def alive(self) -> None:
        """Progress without a count (a batch of the membership pass): it keeps the watchdog quiet."""
        now = time.monotonic()
        if now - self._last_sent >= STEP_INTERVAL_S:
            self.channel.send({"kind": "event", "name": "alive"})
            self._last_sent = now

    def should_stop(self) -> bool:
        """Whether the parent asked for a stop (polled by the engine every step)."""
        while not self.stopped and self.channel.readable(0):
            if self.channel.recv().get("kind") == "stop":
                self.stopped = True
        return self.stopped

    def callbacks(self) -> InversionCallbacks:
        def on_start(planned: int) -> None:
            self.send({"kind": "event", "name": "start", "planned": int(planned)})

        def on_phase(name: str) -> None:
            self.send({"kind": "event", "name": "phase", "phase": str(name)})

        def on_step(step: int, planned: int, losses: dict[str, float]) -> None:
            self._pending = {"kind": "event", "name": "step", "step": int(step), "planned": int(planned),
                             "losses": {str(k): float(v) for k, v in losses.items()}}
            if time.monotonic() - self._last_sent >= STEP_INTERVAL_S:
                self.flush()

        return InversionCallbacks(on_start=on_start, on_step=on_step, on_phase=on_phase)

    def install_checkpoints(self) -> None:
        """The engine's checkpoint writers, readers and clearer, sent across instead of touching files."""
        relay = self

        class RelayCheckpointer(Checkpointer):
            def save(self, gen: Any, step: int, phase: str, force: bool = False) -> None:
                if self.folder is None or (not force and (self.every <= 0 or step % self.every)):
                    return
                state = {k: v.detach().cpu().clone() for k, v in gen.state_dict().items()}
                relay.send({"kind": "checkpoint", "name": "generator", "generator": state, "step": int(step),
                            "phase": str(phase)})

        def save_state(folder: Path | None, key: str, next_phase: str, state: dict[str, Any]) -> None:
            if folder is not None:
                relay.send({"kind": "checkpoint", "name": "resume", "key": key, "next_phase": next_phase,
                            "state": _cpu(state)})

        def load_state(folder: Path | None, key: str) -> dict[str, Any] | None:
            state = relay.resume_state
            if folder is None or not isinstance(state, dict) or state.get("key") != key:
                return None
            return state

        def clear_state(folder: Path | None) -> None:
            if folder is not None:
                relay.send({"kind": "checkpoint", "name": "clear"})

        # looked up by name (the package's ``invert`` is the function): a plain module to the checker, so set by name
        replacements: dict[str, object] = {"Checkpointer": RelayCheckpointer, "save_state": save_state,
                                           "load_state": load_state, "clear_state": clear_state}
        for name, value in replacements.items():
            setattr(invert_module, name, value)


def _cpu(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.detach().cpu().clone()
    if isinstance(value, dict):
        return {k: _cpu(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_cpu(v) for v in value)
    return value
