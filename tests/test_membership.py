"""Membership inference with reference models, on real digits and real small models trained here."""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from leakaudit.confine import operations, sandbox
from leakaudit.confine.operations import ReferenceRequest
from leakaudit.confine.session import InProcessSession
from leakaudit.errors import ConfigError
from leakaudit.inversion import InversionCallbacks
from leakaudit.record.membership import AttackRate, AttackResult
from leakaudit.membership.recipe import TrainingRecipe, load_recipe, recipe_from_mapping
from leakaudit.membership.references import train_references
from leakaudit.membership.splits import draw_splits
from leakaudit.membership.training import train_module
from leakaudit.model.target import TargetModel
from leakaudit.pipeline.membership import MembershipSets, MembershipSettings, membership_stage
from leakaudit.scoring import membership_test
from leakaudit.zoo import bundled_images

from .conftest import references_confined_and_in_process

SIDE = 16
MEMORISE = TrainingRecipe(optimizer="adam", lr=1e-3, batch_size=64, epochs=100, until_train_accuracy=None)
ROBUST = TrainingRecipe(optimizer="adamw", lr=1e-3, weight_decay=1.0, batch_size=64, epochs=4,
                        until_train_accuracy=None, augment=("shift:1",), label_smoothing=0.1)


def mlp() -> nn.Module:
    """A small dense classifier of 16×16 digits."""
    return nn.Sequential(nn.Flatten(), nn.Linear(SIDE * SIDE, 256), nn.ReLU(), nn.Linear(256, 10))


@dataclass(frozen=True)
class Digits:
    images: torch.Tensor
    labels: torch.Tensor
    members: torch.Tensor  # indices
    nonmembers: torch.Tensor


@pytest.fixture(scope="module")
def digits() -> Digits:
    images, labels, _ = bundled_images("digits", SIDE)
    order = torch.randperm(len(images), generator=torch.Generator().manual_seed(0))
    return Digits(images, labels, order[:400], order[400:800])


pytestmark = pytest.mark.usefixtures("one_thread")  # both sides of every comparison: one thread


def _target(d: Digits, recipe: TrainingRecipe) -> TargetModel:
    torch.manual_seed(0)
    module = mlp()
    train_module(module, d.images[d.members], d.labels[d.members], recipe, 0, lambda x: x)
    return TargetModel.from_module(module, (1, SIDE, SIDE), 10, device="cpu")


def _sets(d: Digits, target: TargetModel) -> MembershipSets:
    x, y = d.images, d.labels
    return MembershipSets(x[d.members], y[d.members], x[d.nonmembers], y[d.nonmembers],
                          operations.logits(target, x[d.members]), operations.logits(target, x[d.nonmembers]))


def test_a_bad_recipe_is_one_error_listing_every_problem(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        recipe_from_mapping({"optimiser": "adam", "lr": -0.1, "epochs": "ten", "augment": ["hflip", "rotat:5"]})
    message = str(caught.value)
    assert "unknown key 'optimiser' (did you mean 'optimizer'?)" in message
    assert "lr must be positive" in message and "epochs must be a positive integer" in message
    assert "'rotat:5'" in message and "did you mean 'rotate'?" in message
    file = tmp_path / "pyproject.toml"
    file.write_text('[tool.leakaudit.recipe]\noptimizer = "sgd"\nlr = 0.1\nbatch_size = "full"\n'
                    'augment = ["hflip", "shift:4"]\ntrained_layers = ["fc"]\n')
    recipe = load_recipe(file)
    assert (recipe.optimizer, recipe.lr, recipe.batch_size, recipe.flips) == ("sgd", 0.1, "full", True)
    assert recipe.to_dict()["trained_layers"] == ["fc"]
    file.write_text('[tool.leakaudit.recipe]\nweight_decay = "lots"\n')
    with pytest.raises(ConfigError, match="weight_decay must be a number"):
        load_recipe(file)


def test_a_reference_model_reaches_the_recipes_train_accuracy(digits: Digits) -> None:
    recipe = TrainingRecipe(epochs=200, until_train_accuracy=1.0)
    target = TargetModel.from_module(mlp(), (1, SIDE, SIDE), 10, device="cpu")
    splits = draw_splits(200, 100, 1, seed=3)
    pool = digits.members[:200]
    run = train_references(target, digits.images[pool], digits.labels[pool], torch.from_numpy(splits.masks),
                           recipe, seed=3)
    assert run.models_done == 1 and run.method == "full"
    assert float(run.in_accuracy[0]) == 1.0  # what the recipe asked for, on the model's own split
    assert float(run.out_accuracy[0]) < 1.0


def test_in_out_masks_are_balanced_seeded_and_recorded() -> None:
    splits = draw_splits(400, 200, 8, seed=5)
    assert splits.masks.shape == (8, 400) and (splits.masks.sum(1) == 200).all()
    assert (splits.in_counts() == 4).all()  # every image IN for exactly half of the models
    recorded = splits.to_dict()["in_indices"]
    assert [sorted(i) for i in recorded] == [np.flatnonzero(m).tolist() for m in splits.masks]
    assert (draw_splits(400, 200, 8, seed=5).masks == splits.masks).all()
    assert not (draw_splits(400, 200, 8, seed=6).masks == splits.masks).all()
    small = draw_splits(100, 500, 4, seed=0)  # the pool cannot give the target's size: half the pool
    assert (small.masks.sum(1) == 50).all()


def test_no_reference_models_is_todays_loss_test(digits: Digits) -> None:
    target = _target(digits, TrainingRecipe(epochs=20, until_train_accuracy=None))
    sets = _sets(digits, target)
    result = membership_stage(InProcessSession("test", target), sets, MembershipSettings(reference_models=0, seed=4))
    today = membership_test(sets.member_logits, sets.member_labels, sets.nonmember_logits, sets.nonmember_labels,
                            seed=4)
    (row,) = result.rows
    assert result.strongest is row and row.attack == "loss"
    assert (row.auc, row.ci_low, row.ci_high) == (today.auc, today.ci_low, today.ci_high)
    assert {f"{r.fpr:g}": r.tpr for r in row.rates} == today.tpr_at_fpr
    assert row.fpr_resolution == 1 / 400 and any("weakest" in n for n in result.notes)


@pytest.mark.slow
def test_lira_beats_the_loss_threshold_on_a_memorising_model(digits: Digits) -> None:
    target = _target(digits, MEMORISE)
    settings = MembershipSettings(reference_models=4, recipe=MEMORISE, recipe_given=True, seed=0)
    result = membership_stage(InProcessSession("test", target), _sets(digits, target), settings)
    rows = {r.attack: r for r in result.rows}
    loss, lira = rows["loss"], rows["lira-online"]
    assert lira.tpr(0.01) >= 3 * max(loss.tpr(0.01), 1 / 400)  # at least 3× more members found at 1 % FPR
    assert result.strongest.auc >= loss.auc + 0.05
    assert result.check is not None and result.check.warning is None  # the recipe given is the target's
    assert result.complete and result.splits is not None and result.reference_models == 4
    assert len(lira.member_scores) == 400 and lira.roc_fpr[0] <= 1 / 400 + 1e-12


@pytest.mark.slow
def test_a_heavily_regularised_model_stays_near_chance(digits: Digits) -> None:
    target = _target(digits, ROBUST)
    settings = MembershipSettings(reference_models=4, recipe=ROBUST, recipe_given=True, seed=0)
    result = membership_stage(InProcessSession("test", target), _sets(digits, target), settings)
    for row in result.rows:
        assert row.auc < 0.65, row
        assert row.tpr(0.01) < 0.05, row


def test_the_same_seed_gives_the_same_result(digits: Digits) -> None:
    recipe = TrainingRecipe(epochs=5, until_train_accuracy=None, augment=("hflip", "shift:1"))
    target = _target(digits, recipe)
    settings = MembershipSettings(reference_models=2, recipe=recipe, seed=1)
    first = membership_stage(InProcessSession("test", target), _sets(digits, target), settings)
    second = membership_stage(InProcessSession("test", target), _sets(digits, target), settings)
    assert [r.to_dict() for r in first.rows] == [r.to_dict() for r in second.rows]
    assert first.to_dict()["splits"] == second.to_dict()["splits"]
    assert any("default (guessed)" in n for n in first.notes)


def test_confined_and_in_process_reference_models_agree(digits: Digits, tmp_path: Path) -> None:
    reason = sandbox.unavailable_reason()
    if reason is not None:
        pytest.skip(f"no confinement here: {reason}")
    recipe = TrainingRecipe(epochs=3, until_train_accuracy=None, augment=("hflip",))
    torch.manual_seed(0)
    path = tmp_path / "model.pt"
    torch.jit.save(torch.jit.script(mlp()), str(path))
    pool = torch.cat([digits.members[:100], digits.nonmembers[:100]])
    request = ReferenceRequest(digits.images[pool], digits.labels[pool],
                               torch.from_numpy(draw_splits(200, 100, 2, seed=2).masks), recipe, seed=2)
    steps: list[int] = []
    there, local = references_confined_and_in_process(
        path, request, (1, SIDE, SIDE), callbacks=InversionCallbacks(on_step=lambda s, p, _: steps.append(s)))
    assert steps == [1, 2]  # progress per model
    assert there.models_done == local.models_done == 2 and there.mirrored is not None
    assert torch.equal(there.logits, local.logits) and torch.equal(there.mirrored, local.mirrored)
    assert torch.equal(there.in_accuracy, local.in_accuracy)


@pytest.mark.slow
def test_a_fine_tuned_head_retrains_only_the_head_on_features_computed_once(digits: Digits, tmp_path: Path) -> None:
    torch.manual_seed(0)
    module = mlp()
    public = digits.nonmembers[200:]  # pre-training on other images, then a fresh head fine-tuned on the members
    train_module(module, digits.images[public], digits.labels[public], TrainingRecipe(epochs=5), 0, lambda x: x)
    module[3].reset_parameters()
    init = tmp_path / "init.pt"
    torch.save(module.state_dict(), init)
    tuned = TrainingRecipe(lr=1e-2, batch_size="full", epochs=100, until_train_accuracy=None, start="init")
    train_module(module, digits.images[digits.members], digits.labels[digits.members],
                 replace(tuned, trained_layers="head"), 0, lambda x: x)
    target = TargetModel.from_module(module, (1, SIDE, SIDE), 10, device="cpu")
    settings = MembershipSettings(reference_models=16, recipe=tuned, recipe_given=True, seed=0, init=init)
    result = membership_stage(InProcessSession("test", target), _sets(digits, target), settings)
    assert result.method == "head"  # the --init weights show that only the last layer changed
    assert result.reference_models == 16 and result.check is not None
    assert result.check.references.in_accuracy > result.check.references.out_accuracy  # each head fitted its split
    assert max(r.auc for r in result.rows) > 0.5


def test_a_malformed_reference_reply_is_refused() -> None:
    from leakaudit.confine import results

    good = {"logits": torch.zeros(2, 5, 10), "mirrored": None, "models_done": 2, "method": "full",
            "unsupported": None, **{k: torch.zeros(2, dtype=torch.float64)
                                    for k in ("in_loss", "in_accuracy", "out_loss", "out_accuracy", "seconds")}}
    run = results.reference_run(good, 2, 5, 10, flips=False)
    assert run.models_done == 2 and tuple(run.logits.shape) == (2, 5, 10)
    for bad in ({"logits": torch.zeros(2, 5, 9)}, {"models_done": 3}, {"in_loss": torch.zeros(1, dtype=torch.float64)},
                {"seconds": "fast"}):
        with pytest.raises(results.ReplyError):
            results.reference_run({**good, **bad}, 2, 5, 10, flips=False)
    with pytest.raises(results.ReplyError, match="mirrored"):
        results.reference_run(good, 2, 5, 10, flips=True)


def _row(attack: str, auc: float, rates: list[tuple[float, float, bool]]) -> AttackResult:
    return AttackResult(attack, 4, auc, auc - 0.05, auc + 0.05,
                        tuple(AttackRate(f, t, 0.0, 1.0, ok) for f, t, ok in rates), 1 / 600, (), (), 10, 600)


def test_a_tpr_the_non_members_cannot_resolve_never_picks_the_strongest_attack() -> None:
    """600 non-members resolve 1 % FPR but not 0.1 %: the attack that finds more members at 1 % is the strongest."""
    from leakaudit.record.membership import strongest_attack as strongest

    loss = _row("loss", 0.99, [(0.01, 0.8, True), (0.001, 0.0, False)])
    lira = _row("lira-offline", 0.95, [(0.01, 0.3, True), (0.001, 0.2, False)])
    assert strongest([loss, lira], 0.001).attack == "loss"
    assert strongest([loss, lira], 0.01).attack == "loss"
    many = [_row(r.attack, r.auc, [(f, t, True) for f, t, _ in ((x.fpr, x.tpr, x.resolvable) for x in r.rates)])
            for r in (loss, lira)]  # with enough non-members to resolve 0.1 %, that FPR decides
    assert strongest(many, 0.001).attack == "lira-offline"
    loaded = [AttackResult.from_dict(r.to_dict()) for r in (loss, lira)]  # the document's rows are the engine's
    assert loaded == [loss, lira] and strongest(loaded, 0.001).attack == "loss"
