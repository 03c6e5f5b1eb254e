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
The folder is leakaudit's own: a symbolic link there is refused, and no file
in it is read, written or removed through a link.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import stat
import zipfile
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from leakaudit.inversion.config import InversionConfig
from leakaudit.loading.limits import check_zip_sizes
from leakaudit.model.target import TargetModel
from leakaudit.report.atomic import atomic_write, open_folder

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
    """Write the state after a completed phase (atomically, never through a link planted in the folder)."""
    if folder is None:
        return
    payload = {"key": key, "next_phase": next_phase, **state}
    atomic_write(folder / RESUME_FILE, lambda stream: torch.save(payload, stream), owned=True)


def load_state(folder: Path | None, key: str) -> dict[str, Any] | None:
    """The saved state for these inputs, or None (absent, unreadable, or from other inputs).

    OutputError when the folder is a symbolic link: checked here, at the inversion's start, so a planted link
    fails the audit before anything is written through it.
    """
    if folder is None or not os.path.lexists(folder):
        return None
    with open_folder(folder, owned=True, create=False) as folder_fd:
        try:
            fd = os.open(RESUME_FILE, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK, dir_fd=folder_fd)
        except OSError:  # absent, or a link: nothing of ours to resume
            return None
    with os.fdopen(fd, "rb") as stream:
        if not stat.S_ISREG(os.fstat(stream.fileno()).st_mode):
            return None
        try:
            with zipfile.ZipFile(stream) as archive:  # declared sizes first, as for any file torch.load reads
                check_zip_sizes(folder / RESUME_FILE, archive, os.fstat(stream.fileno()).st_size)
            stream.seek(0)
            state = torch.load(stream, map_location="cpu", weights_only=True)
        except Exception:  # a damaged checkpoint is not worth failing the audit for: start afresh
            return None
    if not isinstance(state, dict) or state.get("key") != key:
        return None
    return state


def clear_state(folder: Path | None) -> None:
    """Forget the state once the inversion has finished: the next run starts afresh (never through a link)."""
    if folder is None or not os.path.lexists(folder):
        return
    with open_folder(folder, owned=True, create=False) as folder_fd, contextlib.suppress(FileNotFoundError):
        os.unlink(RESUME_FILE, dir_fd=folder_fd)
