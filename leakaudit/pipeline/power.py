"""The power stage: plant non-members in fresh copies of the architecture, attack them, judge the result.

After the audit's own attack, each rung of the ladder (``ladder.py``) trains a
copy on K null images per class and inverts it with the audit's settings and
effort, the candidate count grown with the control's own training set
(``run_control``, the only call that touches the model); the candidates are
matched against the control's members and its own null and judged with the
audit's gate (``verdict.py``).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace

import numpy as np
import torch

from leakaudit.config import AuditSettings
from leakaudit.pipeline.attack import Attack, resolve_inversion
from leakaudit.pipeline.budget import budget_words
from leakaudit.confine.operations import ControlRequest, ModelInfo
from leakaudit.pipeline.inputs import AuditInputs, AuditSets, prior_split
from leakaudit.inversion import InversionCallbacks, InversionConfig
from leakaudit.power.control import ControlRun, recipe_for
from leakaudit.power.ladder import SPLIT_SEED_OFFSET, Rung, ladder, rungs
from leakaudit.power.verdict import Power, RungResult, RungScore, decide, not_measured, score_rung
from leakaudit.runtime.progress import Observer
from leakaudit.pipeline.run_context import RunContext


@dataclass(frozen=True)
class PowerStage:
    """The stage's verdict, and the control candidates beside their members (for the report's images)."""

    power: Power
    candidates: dict[int, torch.Tensor]  # K → (N, C, H, W) float32 candidates of that rung
    members: dict[int, torch.Tensor]  # K → (K · classes,) indices into the null set
    cut: str | None = None  # how far the control got when the budget ended it; None when the budget did not


def _null_in_holdout(inputs: AuditInputs, sets: AuditSets, seed: int) -> torch.Tensor:
    """Indices into the holdout of each image of the audit's null (the split ``inputs`` made)."""
    assert inputs.holdout is not None
    if sets.prior is None:
        return torch.arange(len(inputs.holdout))
    return prior_split(inputs.holdout.labels, seed)[1]


def rung_config(settings: AuditSettings, attack: Attack, n_members: int, info: ModelInfo) -> InversionConfig:
    """The audit's engine settings, the candidates grown with the control's own members by the audit's rule.

    The count never exceeds the audit's own: at the same effort a rung then
    costs at most what the audit's attack cost, which bounds the stage. The
    copy has the audited architecture, so the same planned-work cap applies,
    and its refinement takes the audit's own steps: the same attack.
    """
    config = resolve_inversion(settings, n_members, info.num_classes,
                               most_candidates=attack.config.candidates_per_class, model=info)
    return replace(config, prior=attack.config.prior, refine_steps=attack.config.refine_steps)


SPENT = "--budget was spent before the control could run"
NOT_RUN = "was spent before the positive control could run: it did not run"


class _Progress:
    """The control's inversion reported as the ``power`` phase."""

    def __init__(self, observer: Observer, k: int) -> None:
        self.observer, self.k = observer, k

    def callbacks(self) -> InversionCallbacks:
        label = f"power: control K={self.k}"
        return InversionCallbacks(
            on_start=lambda planned: self.observer.phase(f"{label}: inverting the copy", planned),
            on_step=lambda step, planned, losses: self.observer.advance(step, planned, ""),
            on_phase=lambda name: self.observer.phase(f"{label}: inversion: {name}"))


def skipped(run: RunContext, inputs: AuditInputs, sets: AuditSets) -> Power | None:
    """Why power is not measured for this audit, or None when the stage should run."""
    per_class = len(sets.train) / max(inputs.model.info.num_classes, 1)
    if not run.settings.power_check:
        return not_measured("the positive control was skipped (--no-power-check)", per_class)
    if sets.null is None or inputs.holdout is None:
        return not_measured("no holdout, so no non-members to plant in a control", per_class)
    return None


def power_stage(run: RunContext, inputs: AuditInputs, sets: AuditSets, attack: Attack,
                budget_spent: bool = False) -> PowerStage | None:
    """Every rung of the ladder, attacked and judged; None when a stop was asked for.

    ``budget_spent``: an earlier phase used up ``--budget``, so no rung runs (and the stage says so).
    """
    info, settings = inputs.model.info, run.settings
    per_class = len(sets.train) / max(info.num_classes, 1)
    reason = skipped(run, inputs, sets)
    if reason is not None:
        return PowerStage(reason, {}, {})
    if budget_spent:
        return PowerStage(not_measured(SPENT, per_class), {}, {}, f"{budget_words(settings)} {NOT_RUN}")
    assert sets.null is not None
    null = sets.null
    null_idx = _null_in_holdout(inputs, sets, settings.seed)
    ks = ladder(settings.effort, null.labels, info.num_classes)
    if not ks:
        return PowerStage(not_measured("the null holds too few non-members per class to plant any and keep as many",
                                       per_class), {}, {})
    prior = (sets.prior.images, sets.prior.labels) if sets.informed and sets.prior is not None else None
    control_seed = settings.seed + SPLIT_SEED_OFFSET
    # The control repeats the attack that ran: init-aware copies only when the init-aware mode found its span
    # (on an Adam-trained model it falls back to the ordinary inversion, and so does its control).
    init = settings.init if attack.result.mode == "init-aware" else None
    started = time.monotonic()
    results: list[RungResult] = []
    candidates: dict[int, torch.Tensor] = {}
    members: dict[int, torch.Tensor] = {}
    method: str | None = None
    cut: str | None = None
    for rung in rungs(null.labels, info.num_classes, ks, settings.seed):
        run.observer.phase(f"power: control K={rung.k}: training a copy")
        config = rung_config(settings, attack, len(rung.members), info)
        left = run.budget_left_s()
        if left is not None and left <= 0:  # --budget bounds the whole audit, the controls included
            cut = cut or f"{budget_words(settings)} ended the positive control after {len(results)} of {len(ks)} rungs"
            break  # the rungs run so far decide; none at all: not measured
        config = config if left is None else replace(config, budget_s=left)
        rung_started = time.monotonic()
        request = ControlRequest(null.images[rung.members], null.labels[rung.members], config, control_seed, prior,
                                 init)
        control = inputs.model.run_control(request, _Progress(run.observer, rung.k).callbacks(), run.stop)
        if run.stop():
            return None
        if control.unsupported is not None:
            return PowerStage(not_measured(control.unsupported, per_class), {}, {})
        method = control.method
        if not control.complete and control.candidates.shape[0] == 0:  # the budget ended it before its attack
            cut = f"{budget_words(settings)} ended the positive control's training at K={rung.k}"
            break
        if not control.complete:
            cut = f"{budget_words(settings)} ended the control's attack at K={rung.k} (not counted)"
        score = score_rung(control.candidates, null.images[rung.members], null.images[rung.null], settings.gate,
                           settings.seed)
        results.append(_rung_result(rung, control, score, null_idx, rung_started))
        candidates[rung.k] = control.candidates
        members[rung.k] = rung.members
    if not results:
        return PowerStage(not_measured(SPENT, per_class), {}, {}, cut)
    power = decide(results, per_class, method, recipe_for(init).to_dict(), time.monotonic() - started)
    return PowerStage(power, candidates, members, cut)


def _rung_result(rung: Rung, control: ControlRun, score: RungScore, null_idx: torch.Tensor,
                 rung_started: float) -> RungResult:
    """One control's numbers for the verdict; a control whose attack did not finish is not counted."""
    shown, why, notes = score.shown, score.reason, list(control.notes)
    if not control.complete:
        shown, why = False, "The control's attack did not finish within the budget: not counted. " + why
        notes.append("The control's inversion was cut short by the budget.")
    return RungResult(
        k=rung.k, n_members=len(rung.members), n_null=len(rung.null), leak=score.leak,
        above_quantile=score.above_quantile, quantile_value=score.quantile_value, at_seen=score.at_seen,
        shown=shown, reason=why, memorised=control.memorised, steps=control.steps, final_loss=control.final_loss,
        accuracy=control.accuracy, complete=control.complete, seconds=time.monotonic() - rung_started,
        members=null_idx[rung.members].tolist(), null=null_idx[rung.null].tolist(),
        member_best_ssim=[float(s) for s in score.member_best_ssim.tolist()],
        member_best_index=[int(i) for i in score.member_best_index.tolist()], notes=notes)


SHOWN_PAIRS = 20  # control members shown beside their best reconstruction in the report


def report_arrays(stage: PowerStage | None, null_images: torch.Tensor | None) -> dict[str, np.ndarray]:
    """The displayed rung's members (uint8, holdout images: the owner's data) and their best reconstructions."""
    if stage is None or null_images is None:
        return {}
    k = stage.power.display_k
    rung = next((r for r in stage.power.rungs if r.k == k), None)
    if rung is None or k not in stage.candidates:
        return {}
    order = sorted(range(len(rung.member_best_ssim)), key=lambda i: -rung.member_best_ssim[i])[:SHOWN_PAIRS]
    members = stage.members[k][order]
    best = torch.tensor([rung.member_best_index[i] for i in order], dtype=torch.long)
    return {"power_member_images": null_images[members].numpy(),
            "power_reconstructions": stage.candidates[k][best].numpy().astype(np.float32),
            "power_pair_order": np.asarray(order, dtype=np.int64)}
