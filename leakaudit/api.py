"""The Python API: ``leakaudit.audit(model, train, holdout)`` from a training script, a notebook or a test.

It takes what a script holds (an ``nn.Module``, a ``Dataset``, tensors, numpy
arrays) or the paths the CLI takes, builds the same ``AuditSettings`` the CLI
builds (every keyword argument is a ``[tool.leakaudit]`` key, converted and
checked by the settings schema, a typo an error with "did you mean"), and runs
the same ``run_audit``. It prints nothing: progress goes to an optional
callback, errors are ``leakaudit.errors`` exceptions. It never imports the CLI.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from leakaudit.config import AuditSettings
from leakaudit.config import build_settings as settings_from_values
from leakaudit.config.keywords import check_keywords
from leakaudit.errors import ModelError
from leakaudit.runtime.progress import Observer, SilentObserver, StopCheck
from leakaudit.results import AuditReport, OutputOptions

if TYPE_CHECKING:
    from leakaudit.runtime.distributed import DistContext

API_COMMAND = ("leakaudit.audit",)  # the provenance's command of an audit started from Python
PARAMETERS = frozenset({"train", "holdout", "effort", "gate", "init", "seed", "out", "progress", "classes"})


@dataclass(frozen=True)
class ProgressEvent:
    """One progress report: a phase starting, work done in it, or a note (a skipped image)."""

    kind: str  # "phase" | "advance" | "note"
    phase: str
    done: int | None = None
    total: int | None = None
    detail: str = ""
    message: str = ""


ProgressCallback = Callable[[ProgressEvent], None]


class CallbackObserver:
    """The audit's ``Observer``, as events to one callback."""

    def __init__(self, callback: ProgressCallback) -> None:
        self.callback = callback
        self.current = ""

    def phase(self, name: str, total: int | None = None) -> None:
        self.current = name
        self.callback(ProgressEvent("phase", name, total=total))

    def advance(self, done: int, total: int | None = None, detail: str = "") -> None:
        self.callback(ProgressEvent("advance", self.current, done=done, total=total, detail=detail))

    def note(self, message: str) -> None:
        self.callback(ProgressEvent("note", self.current, message=message))


def build_settings(model: Any, train: Any, holdout: Any = None, *, effort: str = AuditSettings.effort,
                   gate: Mapping[str, Any] | None = None, init: str | Path | None = None,
                   seed: int = AuditSettings.seed, out: str | Path | None = None,
                   classes: Sequence[str] | None = None, **settings: Any) -> AuditSettings:
    """The ``AuditSettings`` of an ``audit`` call: keywords checked by the schema, built as the CLI builds them."""
    from torch import nn

    from leakaudit.data.sources import resolve_source

    if not isinstance(model, (str, Path, nn.Module)):
        raise ModelError(f"model must be a torch.nn.Module or the path of a model file, not {type(model).__name__}")
    explicit = {"effort": effort, "seed": seed, "init": init, "out": out if out is not None else AuditSettings.out}
    keywords = check_keywords({**settings, **explicit}, gate, parameters=PARAMETERS)
    values = dict(keywords.values)
    values["model"] = Path(model) if isinstance(model, str) else model
    values["data"] = resolve_source(train, classes=classes, name="train")
    values["holdout"] = resolve_source(holdout, classes=classes, name="holdout") if holdout is not None else None
    return settings_from_values(values, gate=keywords.gate, inversion=keywords.inversion, command=API_COMMAND)


def run(settings: AuditSettings, *, observer: Observer | None = None, should_stop: StopCheck | None = None,
        dist: DistContext | None = None, write: bool = True, clock: Callable[[], float] | None = None) -> AuditReport:
    """One audit of finished settings, as an ``AuditReport``: the path the CLI and ``audit`` share.

    ``clock``: what ``--budget`` is measured by after loading (``time.monotonic`` unless given; a test moves its
    own on to end the budget at a chosen phase).
    """
    from leakaudit.pipeline.audit import run_audit

    outcome = run_audit(settings, observer=observer or SilentObserver(), should_stop=should_stop, dist=dist,
                        write=write, clock=clock)
    options = OutputOptions(settings.redact, settings.images, settings.junit, settings.markdown)
    return AuditReport(outcome.document, outcome.exit_status, outcome.arrays, tuple(outcome.written),
                       tuple(outcome.warnings), options)


def audit(model: Any, train: Any, holdout: Any = None, *, effort: str = AuditSettings.effort,
          gate: Mapping[str, Any] | None = None, init: str | Path | None = None, seed: int = AuditSettings.seed,
          out: str | Path | None = None, progress: ProgressCallback | None = None,
          classes: Sequence[str] | None = None, **settings: Any) -> AuditReport:
    """Audit ``model`` for leakage of ``train``, with ``holdout`` as the non-members.

    ``model``: an ``nn.Module`` (audited on a copy) or a model file's path.
    ``train`` / ``holdout``: a folder, an ``.npz`` or Parquet path, a pair
    ``(images, labels)`` of tensors or arrays (N×C×H×W or N×H×W, uint8 or
    float in [0, 1]), or a ``Dataset`` of ``(image, label)``; ``classes``
    names the labels of in-memory data. ``gate``: thresholds, as in
    ``[tool.leakaudit.gate]``. ``out``: write every output file there as the
    audit ends; without it nothing is written until ``report.write(folder)``.
    ``settings``: any other ``[tool.leakaudit]`` key (``budget``, ``prior``,
    ``candidates_per_class``, ``inversion={...}``, ``fail_ssim`` …), and the
    Python-only ``train_fn``: the owner's training loop for the membership
    test's reference models, ``train_fn(model, images, labels, *, seed) ->
    model``, trusted like ``--arch`` (docs/membership.md).
    Raises ``leakaudit.errors.LeakAuditError`` subclasses on bad input.
    """
    built = build_settings(model, train, holdout, effort=effort, gate=gate, init=init, seed=seed, out=out,
                           classes=classes, **settings)
    observer = CallbackObserver(progress) if progress is not None else None
    if out is not None:
        return run(built, observer=observer)
    with tempfile.TemporaryDirectory(prefix="leakaudit-") as scratch:  # the attack's checkpoints, then gone
        return run(replace(built, out=Path(scratch)), observer=observer, write=False)
