"""The attack stage: the engine's settings for this run, the inversion itself, and what it left to say.

The run level (``AuditSettings``) owns the seed, the budget, the conditioning,
the effort and the threat model; ``[tool.leakaudit.inversion]`` tunes the
engine's other fields. Progress reaches the observer through the engine's
callbacks, so the engine holds no UI code.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from typing import Any

import torch

from leakaudit.pipeline.budget import incomplete_reason, inversion_ceiling, matching_reserve_s
from leakaudit.config import RUN_LEVEL_INVERSION_KEYS, AuditSettings
from leakaudit.errors import ConfigError, did_you_mean
from leakaudit.pipeline.inputs import AuditSets
from leakaudit.confine.operations import AttackRequest, ModelInfo
from leakaudit.confine.session import ModelSession
from leakaudit.inversion import InversionCallbacks, InversionConfig, InversionResult
from leakaudit.inversion.candidates import cap_note, capped_by_work, grown, steps_note
from leakaudit.runtime.progress import Observer
from leakaudit.pipeline.run_context import RunContext

CHECKPOINT_DIR = "checkpoints"


@dataclass(frozen=True)
class Attack:
    """What the inversion produced, with the settings it ran under and the notes it leaves."""

    result: InversionResult
    config: InversionConfig
    candidates: torch.Tensor  # (N, C, H, W) float32 in [0, 1], on the CPU
    notes: tuple[str, ...]
    incomplete: str | None  # why the attack did not finish, or None


def resolve_inversion(settings: AuditSettings, n_train: int, num_classes: int, *,
                      most_candidates: int | None = None, model: ModelInfo | None = None) -> InversionConfig:
    """The engine's settings for this run and data: the one place they are resolved.

    In order: the effort level's step counts, ``[tool.leakaudit.inversion]``,
    the run's own values (seed, budget, conditioning, prior), then the
    candidates per class: the run's ``candidates_per_class``, else the
    table's, else grown with the training set (``inversion.candidates``) and,
    at a large input of ``model``, capped by one refinement step's counted
    work, the refinement's steps by the whole stage's
    (``candidates.capped_by_work``; explicit values stand); never above
    ``most_candidates`` (the positive control's cap).
    """
    known = {f.name for f in fields(InversionConfig)} - set(RUN_LEVEL_INVERSION_KEYS)
    unknown = sorted(set(settings.inversion) - known)
    if unknown:
        raise ConfigError("unknown [tool.leakaudit.inversion] keys: "
                          + ", ".join(f"{key}{did_you_mean(key, known)}" for key in unknown))
    values: dict[str, Any] = dict(settings.inversion)
    values.update(seed=settings.seed, budget_s=settings.budget, conditioning=settings.conditioning)
    explicit = settings.candidates_per_class or settings.inversion.get("candidates_per_class")
    if explicit is not None:
        values["candidates_per_class"] = explicit
    if settings.prior == "none":
        values["prior"] = "none"
    try:
        base = InversionConfig.for_effort(settings.effort, **values)
    except TypeError as exc:
        raise ConfigError(f"[tool.leakaudit.inversion]: {exc}") from None
    config: InversionConfig = grown(base, n_train, num_classes, explicit)
    if model is not None:
        config = capped_by_work(config, model.input_shape, model.flops_per_image, num_classes,
                                candidates=explicit is None, steps="refine_steps" not in settings.inversion)
    if most_candidates is not None and config.candidates_per_class > most_candidates:
        config = replace(config, candidates_per_class=most_candidates,
                         pool_per_class=max(base.pool_per_class, most_candidates))
    return config


def work_cap_notes(settings: AuditSettings, n_train: int, model: ModelInfo) -> list[str]:
    """What the document says when the planned work capped the candidates the data asked for or the refinement
    steps the effort plans (nothing when neither was)."""
    asked = resolve_inversion(settings, n_train, model.num_classes)
    allowed = resolve_inversion(settings, n_train, model.num_classes, model=model)
    notes = []
    if allowed.candidates_per_class < asked.candidates_per_class:
        notes.append(cap_note(asked.candidates_per_class, allowed.candidates_per_class, model.input_shape,
                              model.flops_per_image, model.num_classes))
    if allowed.refine_steps < asked.refine_steps:
        notes.append(steps_note(settings.effort, asked.refine_steps, allowed.refine_steps, model.input_shape))
    return notes


def resume_tag(settings: AuditSettings) -> str:
    """What a saved inversion state must match besides its inputs: the command that made it."""
    return "\0".join(settings.command) + f"\0effort={settings.effort}"


class _InversionProgress:
    """Adapts the inversion's callbacks to the observer."""

    def __init__(self, observer: Observer) -> None:
        self.observer = observer
        self.planned = 0

    def on_phase(self, name: str) -> None:
        self.observer.phase(f"inversion: {name}", self.planned or None)

    def on_start(self, planned_steps: int) -> None:
        self.planned = planned_steps
        self.observer.phase("inverting the classifier", planned_steps)

    def on_step(self, step: int, planned: int, losses: dict[str, float]) -> None:
        loss = losses.get("total")
        self.observer.advance(step, planned, f"loss {loss:.3f}" if loss is not None else "")

    def callbacks(self) -> InversionCallbacks:
        return InversionCallbacks(on_start=self.on_start, on_step=self.on_step, on_phase=self.on_phase)


def _planned_config(run: RunContext, target: ModelInfo, sets: AuditSets) -> InversionConfig:
    """The run's engine settings with the candidate count grown to the data and the budget left for it."""
    config = resolve_inversion(run.settings, len(sets.train), target.num_classes, model=target)
    if config.budget_s is None:
        return config
    n_images = len(sets.train) + (len(sets.null) if sets.null is not None else 0)  # all the candidates meet
    reserve = matching_reserve_s(config.candidates_per_class * target.num_classes, n_images, target.input_shape,
                                 sets.informed)
    return replace(config, budget_s=inversion_ceiling(config.budget_s, run.clock() - run.timer.started, reserve))


def run_attack(run: RunContext, model: ModelSession, sets: AuditSets) -> Attack:
    """Invert the classifier in the mode the settings ask for (init-aware, informed or data-free)."""
    settings, stop, dist = run.settings, run.stop, run.dist
    config = _planned_config(run, model.info, sets)
    callbacks = _InversionProgress(run.observer).callbacks()
    prior = (sets.prior.images, sets.prior.labels) if sets.prior is not None else None
    request = AttackRequest(config, prior, sets.informed, settings.init, resume_tag(settings))
    result = model.attack(request, callbacks, stop, settings.out / CHECKPOINT_DIR if dist.is_main else None)
    notes = list(result.notes)
    notes.extend(work_cap_notes(settings, len(sets.train), model.info))
    if result.resumed_from is not None:
        notes.append(f"This run resumed an interrupted run of the same command at its {result.resumed_from} phase "
                     "(the saved state of the phases before it).")
    incomplete = None if result.complete else incomplete_reason(result, settings)
    if incomplete:
        notes.append(f"Incomplete attack: {incomplete}")
    candidates = result.images.detach().float().cpu().clamp(0, 1)  # (N, C, H, W)
    return Attack(result, config, candidates, tuple(notes), incomplete)
