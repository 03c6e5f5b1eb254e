"""The Python API: ``leakaudit.audit(model, train, holdout)`` from a training script, a notebook or a test.

It takes what a script holds (an ``nn.Module``, a ``Dataset``, tensors, numpy
arrays) or the paths the CLI takes, builds the same ``AuditSettings`` the CLI
builds (every keyword argument is a ``[tool.leakaudit]`` key, converted and
checked by the CLI's own option types, a typo an error with "did you mean"),
and runs the same ``run_audit``. It prints nothing: progress goes to an
optional callback, errors are ``leakaudit.errors`` exceptions.
"""

from __future__ import annotations

import functools
import tempfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import click

from leakaudit.cli.options import file_keys, run_options, settings_from
from leakaudit.config import RUN_LEVEL_INVERSION_KEYS, AuditSettings, FileConfig
from leakaudit.errors import ConfigError, ModelError, UsageError, did_you_mean
from leakaudit.gate.settings import GATE_KEYS
from leakaudit.runtime.progress import Observer, SilentObserver, StopCheck
from leakaudit.results import AuditReport, OutputOptions

API_COMMAND = ("leakaudit.audit",)  # the provenance's command of an audit started from Python
CLI_ONLY = frozenset({"format", "quiet"})  # how the CLI shows its result: no meaning for a library call
EXPLICIT = frozenset({"data", "holdout", "out", "seed", "effort", "init"})  # audit()'s own parameters
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


@functools.cache
def _run_command() -> click.Command:
    """The ``run`` command's parameters, built from the CLI's own option list (no CLI module imported).

    ``--config`` is left out: a library call never reads the working
    directory's ``pyproject.toml``; its settings are its arguments.
    """
    command = click.command("run")(run_options(lambda **_: None))
    command.params = [p for p in command.params if p.name != "config"]
    return command


def setting_keys() -> frozenset[str]:
    """Every keyword ``audit`` accepts as a setting: the ``[tool.leakaudit]`` keys a library call can use."""
    return frozenset(set(file_keys(_run_command())) - CLI_ONLY - EXPLICIT) | GATE_KEYS | {"inversion"}


def _convert(ctx: click.Context, key: str, value: Any) -> tuple[str, Any]:
    """A setting through its CLI option's type: the same conversion and range checks as a flag or a file key."""
    param = next(p for p in _run_command().params if p.name == file_keys(_run_command())[key].param)
    if value is None:
        return str(param.name), None
    try:
        return str(param.name), param.type_cast_value(ctx, value)
    except click.BadParameter as exc:
        raise UsageError(f"{key}={value!r}: {exc.message}") from None


def _split(settings: Mapping[str, Any], gate: Mapping[str, Any] | None) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    """Keyword settings into run options, gate keys and the engine's table; an unknown key is an error."""
    known = setting_keys()
    run: dict[str, Any] = {}
    gate_table = dict(gate or {})
    inversion: dict[str, Any] = {}
    for key, value in settings.items():
        if key == "inversion":
            if not isinstance(value, Mapping):
                raise ConfigError("inversion= must be a dict of InversionConfig fields")
            inversion = {str(k).replace("-", "_"): v for k, v in value.items()}
        elif key in GATE_KEYS:
            if key in gate_table:
                raise UsageError(f"{key} is given both as a keyword and in gate=; give it once")
            gate_table[key] = value
        elif key in known:
            run[key] = value
        elif key in EXPLICIT or key in CLI_ONLY:
            raise UsageError(f"{key!r} is not a setting of audit(): "
                             + ("pass train= / holdout=" if key in ("data", "holdout") else
                                "it only changes what the CLI prints" if key in CLI_ONLY else f"pass {key}= itself"))
        else:
            raise UsageError(f"unknown setting {key!r}{did_you_mean(key, known | PARAMETERS)}; settings are the "
                             "[tool.leakaudit] keys (see `leakaudit run --help`)")
    owned = sorted(set(inversion) & set(RUN_LEVEL_INVERSION_KEYS))
    if owned:
        raise ConfigError(f"inversion= {owned[0]!r} is set for the whole run: pass "
                          f"{RUN_LEVEL_INVERSION_KEYS[owned[0]]}= instead")
    return run, gate_table, inversion


def build_settings(model: Any, train: Any, holdout: Any = None, *, effort: str = "standard",
                   gate: Mapping[str, Any] | None = None, init: str | Path | None = None, seed: int = 0,
                   out: str | Path | None = None, classes: Sequence[str] | None = None,
                   **settings: Any) -> AuditSettings:
    """The ``AuditSettings`` of an ``audit`` call, made by the CLI's own ``settings_from``."""
    from torch import nn

    from leakaudit.data.sources import resolve_source

    if not isinstance(model, (str, Path, nn.Module)):
        raise ModelError(f"model must be a torch.nn.Module or the path of a model file, not {type(model).__name__}")
    if gate is not None and not isinstance(gate, Mapping):
        raise ConfigError("gate= must be a dict of thresholds (the [tool.leakaudit.gate] keys)")
    run, gate_table, inversion = _split(settings, gate)
    ctx = _run_command().make_context("run", ["model"])  # every option at its CLI default, as click sets it
    ctx.meta["leakaudit.config"] = FileConfig(None, {}, gate_table, (), inversion)
    opts: dict[str, Any] = dict(ctx.params)
    explicit = {"effort": effort, "seed": seed, "init": init, "out": out if out is not None else Path("leakaudit-out")}
    for key, value in {**run, **explicit}.items():
        name, converted = _convert(ctx, key, value)
        opts[name] = converted
    opts["model"] = Path(model) if isinstance(model, str) else model
    opts["data"] = resolve_source(train, classes=classes, name="train")
    opts["holdout"] = resolve_source(holdout, classes=classes, name="holdout") if holdout is not None else None
    for key in ("baseline", "init", "lpips_weights"):
        if opts.get(key) is not None and not Path(opts[key]).is_file():
            raise UsageError(f"{key}={str(opts[key])!r}: file not found")
    return replace(settings_from(ctx, opts), command=API_COMMAND)


def run(settings: AuditSettings, *, observer: Observer | None = None, should_stop: StopCheck | None = None,
        dist: Any = None, write: bool = True) -> AuditReport:
    """One audit of finished settings, as an ``AuditReport``: the path the CLI and ``audit`` share."""
    from leakaudit.pipeline.audit import run_audit

    outcome = run_audit(settings, observer=observer or SilentObserver(), should_stop=should_stop, dist=dist,
                        write=write)
    options = OutputOptions(settings.redact, settings.images, settings.junit, settings.markdown)
    return AuditReport(outcome.document, outcome.exit_status, outcome.arrays, tuple(outcome.written),
                       tuple(outcome.warnings), options)


def audit(model: Any, train: Any, holdout: Any = None, *, effort: str = "standard",
          gate: Mapping[str, Any] | None = None, init: str | Path | None = None, seed: int = 0,
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
    ``candidates_per_class``, ``inversion={...}``, ``fail_ssim`` …).
    Raises ``leakaudit.errors.LeakAuditError`` subclasses on bad input.
    """
    built = build_settings(model, train, holdout, effort=effort, gate=gate, init=init, seed=seed, out=out,
                           classes=classes, **settings)
    observer = CallbackObserver(progress) if progress is not None else None
    if out is not None:
        return run(built, observer=observer)
    with tempfile.TemporaryDirectory(prefix="leakaudit-") as scratch:  # the attack's checkpoints, then gone
        return run(replace(built, out=Path(scratch)), observer=observer, write=False)
