"""Resume an interrupted inversion from its last completed phase.

At the end of every completed training phase the engine saves everything the
following phases depend on: generator (and encoder) weights, both random
number generators, the step count, the latent distribution and the
pre-trained candidates. Only an interrupted run keeps it: a run that
finished (complete or cut by the budget) removes it. A re-run of the same
command (and effort) starts from there and,
because every phase starts from exactly that state, ends with the same
candidates as an uninterrupted run (on the CPU, when the budget did not cut a
phase short). The state is keyed by a hash of the classifier's weights and
normalisation, the prior images, the engine settings (the effort level among
them) and the command line, so a checkpoint from other inputs is never reused.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from leakaudit.inversion.config import InversionConfig
from leakaudit.models import TargetModel

RESUME_FILE = "resume.pt"
# Settings that bound or place the run but do not change what a completed phase computes.
_NOT_IN_KEY = ("budget_s", "threads", "checkpoint_every", "device")


def resume_key(target: TargetModel, config: InversionConfig, prior: tuple[torch.Tensor, torch.Tensor] | None,
               tag: str = "") -> str:
    """Identity of an inversion's inputs: classifier, normalisation, prior images, settings (effort included), tag.

    ``tag`` is what else must match (the audit's command line): a state is only
    resumed by the same command.
    """
    digest = hashlib.sha256(tag.encode("utf-8") + b"\0")
    for tensor in [*target.parameters(), target.mean, target.std]:
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    digest.update(repr(target.input_shape).encode())
    settings = {k: v for k, v in asdict(config).items() if k not in _NOT_IN_KEY}
    digest.update(json.dumps(settings, sort_keys=True, default=str).encode())
    if prior is not None:
        for tensor in prior:
            digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def save_state(folder: Path | None, key: str, next_phase: str, state: dict[str, Any]) -> None:
    """Write the state after a completed phase (atomically: a kill never leaves half a file)."""
    if folder is None:
        return
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / RESUME_FILE
    tmp = path.with_name(path.name + ".tmp")
    torch.save({"key": key, "next_phase": next_phase, **state}, tmp)
    os.replace(tmp, path)


def load_state(folder: Path | None, key: str) -> dict[str, Any] | None:
    """The saved state for these inputs, or None (absent, unreadable, or from other inputs)."""
    if folder is None or not (folder / RESUME_FILE).is_file():
        return None
    try:
        state = torch.load(folder / RESUME_FILE, map_location="cpu", weights_only=True)
    except Exception:  # a damaged checkpoint is not worth failing the audit for: start afresh
        return None
    if not isinstance(state, dict) or state.get("key") != key:
        return None
    return state


def clear_state(folder: Path | None) -> None:
    """Forget the state once the inversion has finished: the next run starts afresh."""
    if folder is not None:
        (folder / RESUME_FILE).unlink(missing_ok=True)
