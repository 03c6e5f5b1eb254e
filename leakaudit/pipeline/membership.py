"""The membership stage: reference models trained like the target, then LiRA and RMIA beside the loss threshold.

The stage draws the IN/OUT splits over the pool (the audit's members and
non-members), has the session train the reference models (the only call that
touches the model, confined where the audit is), and scores every image by
each attack. R = 0 is today's loss-threshold test, number for number.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from leakaudit.confine.operations import ReferenceRequest
from leakaudit.confine.session import ModelSession
from leakaudit.inversion import InversionCallbacks
from leakaudit.membership import attacks
from leakaudit.membership.evaluate import evaluate
from leakaudit.membership.recipe import DEFAULT_RECIPE, TrainingRecipe
from leakaudit.membership.references import ReferenceModel, ReferenceRun, TrainFn, assemble
from leakaudit.membership.signals import probability, signal
from leakaudit.membership.splits import Splits, draw_splits
from leakaudit.membership.store import ReferenceStore, store_key
from leakaudit.record.membership import AttackResult, strongest_attack
from leakaudit.runtime.distributed import DistContext
from leakaudit.runtime.progress import Observer, SilentObserver
from leakaudit.scoring import FPR_LEVELS, membership_test

# Reference models per effort: RMIA gains most from its first models and LiRA online needs about 8 (bench figures
# in docs/membership.md); the count depends on the effort only, never on measured speed.
EFFORT_REFERENCE_MODELS = {"quick": 0, "standard": 4, "thorough": 16}
GATE_FPR = 0.001
GAP_RATIO_WARN = 2.0  # the larger generalisation gap over the smaller one that makes the recipe check warn
GAP_FLOOR = 0.05  # loss gaps below this count as this much (so two near-zero gaps never warn)


@dataclass(frozen=True)
class MembershipSettings:
    """What the stage runs: R reference models trained by ``recipe`` (given by the owner, or guessed)."""

    reference_models: int = 0
    recipe: TrainingRecipe = DEFAULT_RECIPE
    recipe_given: bool = False
    seed: int = 0
    fpr_levels: tuple[float, ...] = FPR_LEVELS
    gate_fpr: float = GATE_FPR
    target_train_size: int | None = None  # the target's training-set size when known (else the members')
    init: Path | None = None
    train_fn: TrainFn | None = None  # the owner's own training loop, in place of the recipe's
    checkpoint_dir: Path | None = None  # where each finished model's signals are kept for a re-run (None: nowhere)


@dataclass(frozen=True)
class Fit:
    """Mean cross-entropy and accuracy on training images (IN) and unseen ones (OUT)."""

    in_loss: float
    in_accuracy: float
    out_loss: float
    out_accuracy: float

    @property
    def loss_gap(self) -> float:
        return self.out_loss - self.in_loss

    def to_dict(self) -> dict[str, float]:
        return {"in_loss": self.in_loss, "in_accuracy": self.in_accuracy, "out_loss": self.out_loss,
                "out_accuracy": self.out_accuracy, "loss_gap": self.loss_gap}


@dataclass(frozen=True)
class RecipeCheck:
    """The reference models' fit beside the target's: a mismatched recipe shows as different gaps."""

    target: Fit
    references: Fit  # means over the reference models
    warning: str | None

    def to_dict(self) -> dict[str, object]:
        return {"target": self.target.to_dict(), "references": self.references.to_dict(), "warning": self.warning}


@dataclass(frozen=True)
class MembershipResult:
    """Every attack's row, the strongest, and how the reference models were made."""

    rows: tuple[AttackResult, ...]
    strongest: AttackResult
    recipe: TrainingRecipe
    recipe_given: bool
    reference_models: int  # trained (fewer than asked when stopped)
    planned_models: int
    check: RecipeCheck | None
    splits: Splits | None
    seconds_per_model: float | None
    method: str  # "loss" | "full" | "head"
    complete: bool
    notes: tuple[str, ...] = field(default=())

    def to_dict(self) -> dict[str, object]:
        return {"attacks": [r.to_dict() for r in self.rows], "strongest": self.strongest.attack,
                "recipe": self.recipe.to_dict(), "recipe_given": self.recipe_given,
                "reference_models": self.reference_models, "planned_models": self.planned_models,
                "recipe_check": self.check.to_dict() if self.check else None,
                "splits": self.splits.to_dict() if self.splits else None, "seconds_per_model": self.seconds_per_model,
                "method": self.method, "complete": self.complete, "notes": list(self.notes)}


def target_fit(logits_in: torch.Tensor, labels_in: torch.Tensor, logits_out: torch.Tensor,
               labels_out: torch.Tensor) -> Fit:
    def pair(z: torch.Tensor, y: torch.Tensor) -> tuple[float, float]:
        return float(F.cross_entropy(z.double(), y)), float((z.argmax(1) == y).double().mean())

    return Fit(*pair(logits_in, labels_in), *pair(logits_out, labels_out))


def recipe_check(target: Fit, run: ReferenceRun) -> RecipeCheck:
    """The gaps side by side; a warning when one is more than ``GAP_RATIO_WARN`` times the other."""
    refs = Fit(float(np.nanmean(run.in_loss.numpy())), float(np.nanmean(run.in_accuracy.numpy())),
               float(np.nanmean(run.out_loss.numpy())), float(np.nanmean(run.out_accuracy.numpy())))
    a, b = max(target.loss_gap, GAP_FLOOR), max(refs.loss_gap, GAP_FLOOR)
    warning = None
    if max(a, b) / min(a, b) > GAP_RATIO_WARN:
        warning = (f"the reference models' generalisation gap (loss {refs.loss_gap:.3f}, accuracy "
                   f"{refs.in_accuracy:.3f} IN vs {refs.out_accuracy:.3f} OUT) differs from the target's (loss "
                   f"{target.loss_gap:.3f}, accuracy {target.in_accuracy:.3f} on members vs {target.out_accuracy:.3f}"
                   " on non-members): the recipe may not be the target's, which weakens the reference-model tests")
    return RecipeCheck(target, refs, warning)


@dataclass(frozen=True)
class MembershipSets:
    """The audit's members and non-members (uint8 images, labels) and the target's logits on them."""

    member_images: torch.Tensor
    member_labels: torch.Tensor
    nonmember_images: torch.Tensor
    nonmember_labels: torch.Tensor
    member_logits: torch.Tensor
    nonmember_logits: torch.Tensor


def loss_row(sets: MembershipSets, settings: MembershipSettings) -> AttackResult:
    """The loss threshold (R = 0): ``scoring.membership_test``'s AUC and interval, its scores −CE."""
    test = membership_test(sets.member_logits, sets.member_labels, sets.nonmember_logits, sets.nonmember_labels,
                           seed=settings.seed)
    pos = -F.cross_entropy(sets.member_logits.double(), sets.member_labels, reduction="none").numpy()
    neg = -F.cross_entropy(sets.nonmember_logits.double(), sets.nonmember_labels, reduction="none").numpy()
    return evaluate("loss", 0, pos, neg, settings.fpr_levels, settings.seed,
                    auc_interval=(test.auc, test.ci_low, test.ci_high))


def attack_rows(run: ReferenceRun, masks: np.ndarray, target_logits: torch.Tensor,
                target_mirrored: torch.Tensor | None, labels: torch.Tensor, n_members: int,
                settings: MembershipSettings) -> list[AttackResult]:
    """LiRA online, LiRA offline and RMIA offline from the reference models' logits; members come first."""
    models = run.models_done
    target_phi = signal(target_logits, labels, target_mirrored).numpy()
    ref_phi = signal(run.logits, labels, run.mirrored).numpy()
    target_p = probability(target_logits, labels, target_mirrored).numpy()
    ref_p = probability(run.logits, labels, run.mirrored).numpy()
    fit = attacks.fit_gaussians(ref_phi, masks)
    a = attacks.rmia_a(ref_p, masks)
    population = np.arange(len(labels))
    variance = "per-image variance" if fit.per_image_variance else "one global variance"
    online = f"LiRA online, {variance}"
    if not (masks.any(0) & (~masks).any(0)).any():
        online += "; no image has both IN and OUT models (R = 1), so every score ties: not a test"
    scores = {
        "lira-online": (attacks.lira_online(target_phi, fit), online),
        "lira-offline": (attacks.lira_offline(target_phi, fit), f"LiRA offline (OUT models only), {variance}"),
        "rmia-offline": (attacks.rmia_offline(target_p, ref_p, masks, a, population),
                         f"RMIA offline, a = {a:.3f}, gamma = {attacks.RMIA_GAMMA:g}, population = the pool"),
    }
    return [evaluate(name, models, s[:n_members], s[n_members:], settings.fpr_levels, settings.seed, note=note)
            for name, (s, note) in scores.items()]


def _progress(observer: Observer, offset: int, planned: int) -> InversionCallbacks:
    """The models done so far (``offset``: those read back from a checkpoint) of the ``planned``."""
    return InversionCallbacks(on_step=lambda done, _, __: observer.advance(offset + done, planned,
                                                                           "reference models"))


@dataclass(frozen=True)
class Plan:
    """The pool (members first, then non-members) and its IN/OUT splits: the same on every rank."""

    images: torch.Tensor  # (N, C, H, W) uint8
    labels: torch.Tensor  # (N,) int64
    splits: Splits


def plan_of(member_images: torch.Tensor, member_labels: torch.Tensor, nonmember_images: torch.Tensor,
            nonmember_labels: torch.Tensor, settings: MembershipSettings) -> Plan:
    images = torch.cat([member_images, nonmember_images])
    labels = torch.cat([member_labels, nonmember_labels]).long()
    size = settings.target_train_size or len(member_images)
    return Plan(images, labels, draw_splits(len(images), size, settings.reference_models, settings.seed))


@dataclass(frozen=True)
class Share:
    """Reference models trained by this rank (on rank 0 of several: every rank's, gathered) and how."""

    models: dict[int, ReferenceModel]
    method: str
    unsupported: str | None


def train_share(session: ModelSession, plan: Plan, settings: MembershipSettings, todo: list[int] | None,
                dist: DistContext, callbacks: InversionCallbacks, should_stop: Callable[[], bool],
                budget_s: float | None = None, on_model: Callable[[ReferenceModel, int, int], None] | None = None,
                ) -> Share:
    """Train this rank's share of the models ``todo`` (model i on rank i % world) and gather them on rank 0.

    ``todo`` is rank 0's (the models no checkpoint holds); the other ranks pass None and receive it. Every rank
    calls this exactly once per membership phase: its two collectives pair with the other ranks'.
    """
    if dist.is_distributed:
        todo = dist.all_gather_object(todo if dist.is_main else None)[0]
    mine = [i for i in (todo or []) if i % dist.world_size == dist.rank]
    request = ReferenceRequest(plan.images, plan.labels, torch.from_numpy(plan.splits.masks[mine]), settings.recipe,
                               settings.seed, settings.init, budget_s, tuple(mine), settings.train_fn)
    run = session.train_references(request, callbacks, should_stop, on_model)
    share = Share({m.index: m for m in run.models(mine)}, run.method, run.unsupported)
    if not dist.is_distributed:
        return share
    with dist.in_stage("the reference models"):
        parts = [p for p in dist.all_gather_object(share) if p is not None]  # None: rank 0 stopped before its share
    models = {i: m for part in parts for i, m in part.models.items()}
    return Share(models, share.method, next((p.unsupported for p in parts if p.unsupported), None))


def _references(session: ModelSession, plan: Plan, sets: MembershipSets, settings: MembershipSettings,
                observer: Observer, should_stop: Callable[[], bool], budget_s: float | None,
                dist: DistContext) -> tuple[ReferenceRun, int]:
    """Every reference model: those a checkpoint holds read back, the rest trained (and each saved as it finishes);
    also how many were read back."""
    planned = settings.reference_models
    target_logits = torch.cat([sets.member_logits, sets.nonmember_logits])
    key = store_key(settings.seed, plan.splits.masks, plan.images, plan.labels, settings.recipe, target_logits,
                    settings.init)
    store = ReferenceStore(settings.checkpoint_dir, key)
    n, k = len(plan.images), target_logits.shape[1]
    saved = store.load(range(planned), n, k, settings.recipe.flips)
    todo = [i for i in range(planned) if i not in saved]
    observer.phase("membership: training reference models", planned)
    delivered: dict[int, ReferenceModel] = {}  # as each finishes (a worker ended by a stop may not reply)

    def keep(model: ReferenceModel, _: int, __: int) -> None:
        delivered[model.index] = model
        store.save(model)

    share = train_share(session, plan, settings, todo, dist, _progress(observer, len(saved), planned), should_stop,
                        budget_s, keep)
    for index, model in share.models.items():
        if index not in delivered:  # another rank's: kept here, where the checkpoints are
            store.save(model)
    run = assemble({**saved, **delivered, **share.models}, n, k, share.method)
    return replace(run, unsupported=share.unsupported), len(saved)


def membership_stage(session: ModelSession, sets: MembershipSets, settings: MembershipSettings,
                     observer: Observer | None = None,
                     should_stop: Callable[[], bool] = lambda: False,
                     budget_s: float | None = None, dist: DistContext | None = None) -> MembershipResult:
    """Every membership attack the settings ask for, evaluated on the audit's members vs non-members.

    ``budget_s``: what the audit's budget leaves this phase, the ceiling of the confined training call.
    ``dist``: rank 0 of several, whose other ranks train their share (``train_share``) meanwhile.
    """
    observer = observer or SilentObserver()
    dist = dist or DistContext.single()
    loss = loss_row(sets, settings)
    planned = settings.reference_models
    if planned <= 0:
        note = "membership tested by the loss threshold only, the weakest known test (no reference models)"
        return MembershipResult((loss,), loss, settings.recipe, settings.recipe_given, 0, 0, None, None, None,
                                "loss", True, (note,))
    plan = plan_of(sets.member_images, sets.member_labels, sets.nonmember_images, sets.nonmember_labels, settings)
    images, labels, splits = plan.images, plan.labels, plan.splits
    n_members = len(sets.member_images)
    run, resumed = _references(session, plan, sets, settings, observer, should_stop, budget_s, dist)
    notes: list[str] = []
    if run.unsupported is not None or run.models_done == 0:
        why = run.unsupported or "stopped before the first reference model was trained"
        notes.append(f"no reference models: {why}; membership tested by the loss threshold only")
        return MembershipResult((loss,), loss, settings.recipe, settings.recipe_given, 0, planned, None, splits,
                                None, "loss", run.unsupported is not None, tuple(notes))
    masks = splits.masks[: run.models_done]
    mirrored = session.logits(images.flip(3)) if settings.recipe.flips else None
    target_logits = torch.cat([sets.member_logits, sets.nonmember_logits])
    rows = [loss, *attack_rows(run, masks, target_logits, mirrored, labels, n_members, settings)]
    fit = target_fit(sets.member_logits, sets.member_labels, sets.nonmember_logits, sets.nonmember_labels)
    check = recipe_check(fit, run)
    if settings.train_fn is not None:
        notes.append(f"the reference models were trained by the given training function {settings.recipe.function}")
    elif not settings.recipe_given:
        notes.append("the training recipe was not given: the reference models used the default (guessed) recipe")
    if resumed:
        notes.append(f"{resumed} of the {planned} reference models were read back from the checkpoint of an "
                     "interrupted run of this audit (their signals, not retrained)")
    if run.models_done < planned:
        notes.append(f"stopped after {run.models_done} of {planned} reference models: the membership phase is "
                     "incomplete")
    return MembershipResult(tuple(rows), strongest_attack(rows, settings.gate_fpr), settings.recipe,
                            settings.recipe_given, run.models_done, planned, check, splits,
                            float(run.seconds.mean()), run.method, run.models_done == planned, tuple(notes))
