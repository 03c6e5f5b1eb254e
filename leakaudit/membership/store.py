"""The membership phase's checkpoints: each finished reference model's signals, so a re-run trains only the rest.

A reference model is kept as what the attacks read of it (its logits on the
pool, on the mirrored pool, its IN/OUT fit), never its weights: that is all a
resumed audit needs, and a fraction of the size. Each model is one file
``reference-<i>.pt`` in the run's checkpoint folder, written as soon as the
model is finished (by the parent: the confined worker writes nothing), and
tagged with a key over everything that decides the model: the seed, the
splits (their SHA-256), the pool, the recipe or the owner's function, and the
target's own logits (which stand for the model and its weights). A file under
another key, damaged, or of the wrong shape is ignored and the model trained
again. The folder is leakaudit's own: nothing in it is read or written
through a symbolic link.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import stat
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import torch

from leakaudit.membership.recipe import TrainingRecipe
from leakaudit.membership.references import ReferenceModel
from leakaudit.membership.splits import masks_sha256
from leakaudit.report.atomic import atomic_write

MEMBERSHIP_DIR = "membership"  # under the run's checkpoint folder
MAX_FILE_BYTES = 1 << 30


def store_key(seed: int, masks: np.ndarray, images: torch.Tensor, labels: torch.Tensor, recipe: TrainingRecipe,
              target_logits: torch.Tensor, init: Path | None) -> str:
    """What a saved model must match to be used again: seed, splits, pool, recipe, the target, its --init."""
    digest = hashlib.sha256(f"seed={seed}\0splits={masks_sha256(masks)}\0".encode())
    digest.update(json.dumps(recipe.to_dict(), sort_keys=True).encode())
    for tensor in (images, labels, target_logits):
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    if init is not None:
        digest.update(init.read_bytes())
    return digest.hexdigest()


class ReferenceStore:
    """Saved reference models of one plan (``key``) in ``folder``; with no folder it keeps and finds nothing."""

    def __init__(self, folder: Path | None, key: str) -> None:
        self.folder, self.key = folder, key

    def save(self, model: ReferenceModel) -> None:
        if self.folder is None:
            return
        payload = {"key": self.key, "index": model.index, "logits": model.logits.contiguous(),
                   "mirrored": None if model.mirrored is None else model.mirrored.contiguous(),
                   "fit": torch.tensor(model.fit, dtype=torch.float64), "seconds": float(model.seconds)}
        atomic_write(self.folder / _name(model.index), lambda stream: torch.save(payload, stream), owned=True)

    def load(self, indices: Iterable[int], n: int, k: int, flips: bool) -> dict[int, ReferenceModel]:
        """The saved models among ``indices`` whose file has this key and the pool's shapes."""
        if self.folder is None or not self.folder.is_dir() or self.folder.is_symlink():
            return {}
        found = {}
        for index in indices:
            model = self._read(index, n, k, flips)
            if model is not None:
                found[index] = model
        return found

    def _read(self, index: int, n: int, k: int, flips: bool) -> ReferenceModel | None:
        assert self.folder is not None
        try:
            fd = os.open(self.folder / _name(index), os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
        except OSError:  # absent, or a link
            return None
        with os.fdopen(fd, "rb") as stream:
            info = os.fstat(stream.fileno())
            if not stat.S_ISREG(info.st_mode) or info.st_size > MAX_FILE_BYTES:
                return None
            try:
                state = torch.load(stream, map_location="cpu", weights_only=True)
            except Exception:  # damaged: train the model again
                return None
        return _model(state, self.key, index, n, k, flips)


def _name(index: int) -> str:
    return f"reference-{index}.pt"


def _model(state: object, key: str, index: int, n: int, k: int, flips: bool) -> ReferenceModel | None:
    """A saved model's payload checked field by field, or None."""
    if not isinstance(state, dict) or state.get("key") != key or state.get("index") != index:
        return None
    logits, mirrored, fit = state.get("logits"), state.get("mirrored"), state.get("fit")
    with contextlib.suppress(TypeError, ValueError):
        shapes_ok = (isinstance(logits, torch.Tensor) and tuple(logits.shape) == (n, k)
                     and logits.dtype == torch.float32 and isinstance(fit, torch.Tensor) and fit.numel() == 4
                     and (mirrored is None if not flips else isinstance(mirrored, torch.Tensor)
                          and tuple(mirrored.shape) == (n, k) and mirrored.dtype == torch.float32))
        if shapes_ok and isinstance(logits, torch.Tensor) and isinstance(fit, torch.Tensor):
            in_loss, in_accuracy, out_loss, out_accuracy = (float(v) for v in fit.double().tolist())
            return ReferenceModel(index, logits, mirrored, (in_loss, in_accuracy, out_loss, out_accuracy),
                                  float(state.get("seconds", 0.0)))
    return None
