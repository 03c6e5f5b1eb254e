"""What produced a result: file digests, seed, versions, device, command, and the time each stage took.

Everything here is recorded so that a result can be traced and repeated;
the timings are left out of any comparison of two documents.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import platform
import time
from collections.abc import Iterator
from importlib import metadata
from pathlib import Path
from typing import Any

import torch

from leakaudit.version import __version__
from leakaudit.config import AuditSettings
from leakaudit.data.folders import ImageSet
from leakaudit.pipeline.inputs import AuditInputs

VERSIONED = ("torch", "torchvision", "lpips", "scikit-image", "numpy")


class StageTimer:
    """Wall time of each stage of the audit (recorded in the provenance, left out of any comparison)."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self._current: tuple[str, float] | None = None
        self.started = time.monotonic()
        self.started_at = dt.datetime.now(dt.timezone.utc).replace(microsecond=0).isoformat()

    def start(self, name: str) -> None:
        self.stop()
        self._current = (name, time.monotonic())

    def stop(self) -> None:
        if self._current is not None:
            name, began = self._current
            self.seconds[name] = round(self.seconds.get(name, 0.0) + time.monotonic() - began, 3)
            self._current = None

    @contextlib.contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        self.start(name)
        try:
            yield
        finally:
            self.stop()

    def snapshot(self) -> dict[str, float]:
        if self._current is not None:
            name, began = self._current
            return {**self.seconds, name: round(self.seconds.get(name, 0.0) + time.monotonic() - began, 3)}
        return dict(self.seconds)

    def elapsed(self) -> float:
        return round(time.monotonic() - self.started, 3)


def versions() -> dict[str, str | None]:
    """The versions of leakaudit, Python and the packages that decide the numbers."""
    out: dict[str, str | None] = {"leakaudit": __version__, "python": platform.python_version()}
    for name in VERSIONED:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return f"{device} ({torch.cuda.get_device_name(device)})"
    return str(device)


def _image_set(images: ImageSet | None, source: Any) -> dict[str, Any] | None:
    if images is None or source is None:
        return None
    return {"path": str(source), "manifest_sha256": images.manifest_sha256, "n_images": len(images),
            "skipped": [{"path": s.path, "reason": s.reason} for s in images.skipped]}


def model_name(model: Any) -> str:
    """A model file's path, or what an in-memory module is."""
    return str(model) if isinstance(model, (str, Path)) else f"<in-memory {type(model).__name__}>"


def provenance(settings: AuditSettings, inputs: AuditInputs, timer: StageTimer, threads: int) -> dict[str, Any]:
    """The ``provenance`` object of the findings document."""
    target = inputs.model.info
    return {
        "model": {"path": model_name(settings.model), "sha256": target.sha256, "format": target.format,
                  "input_shape": list(target.input_shape), "num_classes": target.num_classes,
                  "features": "penultimate features reached" if target.has_features else target.feature_note},
        "data": _image_set(inputs.train, settings.data),
        "holdout": _image_set(inputs.holdout, settings.holdout),
        "seed": settings.seed, "budget_s": settings.budget, "elapsed_s": timer.elapsed(),
        "started_at": timer.started_at, "versions": versions(), "device": _device_name(target.device),
        "command": list(settings.command),
        "nondeterminism": ("CUDA kernels (cuDNN convolution algorithms, atomic adds in backward passes) are not "
                           "bitwise deterministic; CPU runs with the same seed are."
                           if target.device.type == "cuda" else None),
        "threads": threads,
        "confinement": inputs.model.confinement,
    }
