"""The membership phase as the pipeline runs it: the owner's training function, checkpoints a re-run reads back.

Real digits, real small models trained here; the whole audits use the quick inversion without the positive control.
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import leakaudit
from leakaudit import api
from leakaudit.confine import sandbox
from leakaudit.confine.operations import ReferenceRequest
from leakaudit.errors import ConfigError
from leakaudit.exit_codes import ExitStatus
from leakaudit.membership.recipe import TrainingRecipe
from leakaudit.membership.references import train_references
from leakaudit.membership.splits import draw_splits
from leakaudit.membership.training import train_module
from leakaudit.model.target import TargetModel

from .conftest import QUICK_INVERSION, Pool, digits_pool, references_confined_and_in_process

SIDE = 16
QUICK = tomllib.loads(QUICK_INVERSION)
FIT = TrainingRecipe(optimizer="adam", lr=1e-3, batch_size=64, epochs=60, until_train_accuracy=None)

pytestmark = pytest.mark.usefixtures("one_thread")  # both sides of every comparison: one thread


def sgd_loop(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, *, seed: int) -> nn.Module:
    """An owner's plain training loop: full-batch SGD with momentum, 80 steps."""
    optimiser = torch.optim.SGD(model.parameters(), lr=0.2, momentum=0.9)
    for _ in range(80):
        optimiser.zero_grad()
        F.cross_entropy(model(images), labels).backward()
        optimiser.step()
    return model


def mlp() -> nn.Module:
    return nn.Sequential(nn.Flatten(), nn.Linear(SIDE * SIDE, 128), nn.ReLU(), nn.Linear(128, 10))


@pytest.fixture(scope="module")
def pool() -> Pool:
    return digits_pool(SIDE)


@pytest.fixture(scope="module")
def fitted(pool: Pool) -> nn.Module:
    torch.manual_seed(0)
    module = mlp()
    train_module(module, *pool.members, FIT, 0, lambda x: x)
    return module


def test_a_train_fn_that_is_not_callable_is_one_config_error(fitted: nn.Module, pool: Pool) -> None:
    with pytest.raises(ConfigError, match=r"train_fn=: str 'my_loop' is not callable; pass a function "
                                          r"train_fn\(model, images, labels, \*, seed\) -> model"):
        api.build_settings(fitted, pool.members, pool.nonmembers, train_fn="my_loop")


def test_train_fn_is_a_keyword_of_the_api_only() -> None:
    from leakaudit.config import file_keys, options
    from leakaudit.config.keywords import keyword_names

    assert "train_fn" in keyword_names()
    assert "train_fn" not in {o.name for o in options()}  # no flag, no line of `run --help`
    assert "train_fn" not in file_keys()  # and no [tool.leakaudit] key


@pytest.mark.slow
def test_the_owners_training_function_trains_the_reference_models(fitted: nn.Module, pool: Pool) -> None:
    report = leakaudit.audit(fitted, pool.members, pool.nonmembers, effort="quick", prior="none", budget=900,
                             reference_models=2, train_fn=sgd_loop, **QUICK)
    attacks = report.to_dict()["membership_attacks"]
    assert attacks["recipe"]["function"] == "user function tests.test_membership_pipeline.sgd_loop"
    assert attacks["recipe_given"] is True and attacks["reference_models"] == 2 and attacks["complete"]
    assert attacks["splits"]["models"] == 2 and attacks["splits"]["pool"] == 200
    assert {a["attack"] for a in attacks["attacks"]} == {"loss", "lira-online", "lira-offline", "rmia-offline"}
    check = attacks["recipe_check"]["references"]
    assert check["in_accuracy"] == 1.0 and check["in_accuracy"] > check["out_accuracy"]  # the loop fitted each split
    assert not any("guessed" in note for note in attacks["notes"])


OWNER_MODULE = '''
import torch
import torch.nn.functional as F


def owner_loop(model, images, labels, *, seed):
    """Full-batch SGD, in place (returns None)."""
    optimiser = torch.optim.SGD(model.parameters(), lr=0.2)
    for _ in range(30):
        optimiser.zero_grad()
        F.cross_entropy(model(images), labels).backward()
        optimiser.step()
'''


def test_the_training_function_runs_in_the_confined_worker_as_in_process(
        pool: Pool, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    reason = sandbox.unavailable_reason()
    if reason is not None:
        pytest.skip(f"no confinement here: {reason}")
    (tmp_path / "owner_training.py").write_text(OWNER_MODULE)
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    from owner_training import owner_loop  # type: ignore[import-not-found]

    torch.manual_seed(0)
    path = tmp_path / "model.pt"
    torch.jit.save(torch.jit.script(mlp()), str(path))
    images = torch.cat([pool.members[0][:40], pool.nonmembers[0][:40]])
    labels = torch.cat([pool.members[1][:40], pool.nonmembers[1][:40]])
    request = ReferenceRequest(images, labels, torch.from_numpy(draw_splits(80, 40, 2, seed=1).masks), FIT, seed=1,
                               train_fn=owner_loop)
    there, local = references_confined_and_in_process(path, request, (1, SIDE, SIDE), code_from_cwd=True)
    assert there.models_done == local.models_done == 2
    assert torch.equal(there.logits, local.logits)
    assert float(local.in_accuracy.min()) > float(local.out_accuracy.max())  # trained by the loop, not untouched


def test_a_training_function_without_an_importable_name_is_refused_for_a_model_file(pool: Pool,
                                                                                   tmp_path: Path) -> None:
    path = tmp_path / "model.pt"
    torch.jit.save(torch.jit.script(mlp()), str(path))
    settings = api.build_settings(path, pool.members, pool.nonmembers, train_fn=lambda m, x, y, seed: m)
    if sandbox.unavailable_reason() is not None:
        pytest.skip("no confinement here: the model runs in this process, where any function can")
    with pytest.raises(ConfigError, match="has no name the model's confined worker can import it by"):
        api.run(settings, write=False)


def test_a_share_of_the_plan_trains_the_same_models_as_the_whole(pool: Pool) -> None:
    """Model i is seeded by its number, so rank 1's share (or what a resumed run has left) is the same model."""
    torch.manual_seed(0)
    target = TargetModel.from_module(mlp(), (1, SIDE, SIDE), 10, device="cpu")
    images = torch.cat([pool.members[0][:40], pool.nonmembers[0][:40]])
    labels = torch.cat([pool.members[1][:40], pool.nonmembers[1][:40]])
    masks = torch.from_numpy(draw_splits(80, 40, 3, seed=4).masks)
    recipe = TrainingRecipe(epochs=3, until_train_accuracy=None)
    whole = train_references(target, images, labels, masks, recipe, seed=4)
    share = train_references(target, images, labels, masks[[2, 1]], recipe, seed=4, model_ids=[2, 1])
    assert torch.equal(share.logits[0], whole.logits[2]) and torch.equal(share.logits[1], whole.logits[1])
    assert [m.index for m in share.models([2, 1])] == [2, 1]


# --- checkpoints: a stopped membership phase resumes without retraining -------------------------------------

def _resumable(pool: Pool, model: Path, out: Path) -> Any:
    return api.build_settings(model, pool.members, pool.nonmembers, effort="quick", prior="none", budget=900,
                              reference_models=3, recipe={"epochs": 200, "until_train_accuracy": None},
                              out=out, seed=5, **QUICK)


@pytest.mark.slow
def test_a_stopped_membership_phase_resumes_from_its_finished_models(fitted: nn.Module, pool: Pool,
                                                                    tmp_path: Path) -> None:
    model = tmp_path / "model.pt"
    torch.jit.save(torch.jit.script(fitted), str(model))
    whole = api.run(_resumable(pool, model, tmp_path / "whole"), write=False)
    out = tmp_path / "stopped"
    first = out / "checkpoints" / "membership" / "reference-0.pt"
    stopped = api.run(_resumable(pool, model, out), should_stop=first.exists, write=False)
    assert stopped.exit_status == ExitStatus.INTERRUPTED
    assert first.is_file() and not (out / "checkpoints" / "membership" / "reference-2.pt").exists()
    resumed = api.run(_resumable(pool, model, out), write=False)
    assert resumed.exit_status == whole.exit_status
    again, once = resumed.to_dict()["membership_attacks"], whole.to_dict()["membership_attacks"]
    assert again["attacks"] == once["attacks"] and again["recipe_check"] == once["recipe_check"]
    assert again["splits"] == once["splits"] and again["complete"] and again["reference_models"] == 3
    read_back = [n for n in again["notes"] if "read back from the checkpoint" in n]  # not trained again
    assert read_back and read_back[0].startswith(("1 of the 3", "2 of the 3")), again["notes"]
    assert not (out / "checkpoints").exists()  # a finished audit leaves no checkpoint folder


def test_a_checkpoint_of_other_inputs_is_not_read_back(pool: Pool, tmp_path: Path) -> None:
    from leakaudit.membership.store import ReferenceStore, store_key

    images = torch.cat([pool.members[0][:20], pool.nonmembers[0][:20]])
    labels = torch.cat([pool.members[1][:20], pool.nonmembers[1][:20]])
    masks = draw_splits(40, 20, 2, seed=0).masks
    logits = torch.zeros(40, 10)
    key = store_key(0, masks, images, labels, FIT, logits, None)
    torch.manual_seed(0)
    target = TargetModel.from_module(mlp(), (1, SIDE, SIDE), 10, device="cpu")
    run = train_references(target, images, labels, torch.from_numpy(masks), TrainingRecipe(epochs=1), seed=0)
    store = ReferenceStore(tmp_path, key)
    for model in run.models([0, 1]):
        store.save(model)
    assert sorted(store.load(range(2), 40, 10, flips=False)) == [0, 1]
    other_seed = store_key(1, masks, images, labels, FIT, logits, None)
    other_target = store_key(0, masks, images, labels, FIT, logits + 1, None)
    other_splits = store_key(0, draw_splits(40, 20, 2, seed=9).masks, images, labels, FIT, logits, None)
    for key in (other_seed, other_target, other_splits):
        assert ReferenceStore(tmp_path, key).load(range(2), 40, 10, flips=False) == {}
    assert store.load(range(2), 40, 10, flips=True) == {}  # no mirrored logits: not this plan's models
    (tmp_path / "reference-1.pt").write_bytes(b"damaged")
    assert sorted(store.load(range(2), 40, 10, flips=False)) == [0]


def test_a_phase_the_budget_cut_short_keeps_its_finished_models_and_nothing_else(tmp_path: Path) -> None:
    from leakaudit.gate.verdict import GateSettings, apply_gate
    from leakaudit.pipeline.membership_run import clear_checkpoints
    from leakaudit.record import load

    from .scenarios import TODAY, scenario, with_references

    def folder() -> Path:
        root = tmp_path / "checkpoints"
        (root / "membership").mkdir(parents=True, exist_ok=True)
        (root / "membership" / "reference-0.pt").write_bytes(b"model 0")
        (root / "resume.pt").write_bytes(b"inversion state")
        (root / "generator.pt").write_bytes(b"generator")
        return root

    document = with_references(scenario(leaky=False), 8).document
    document["membership_attacks"].update(complete=False, reference_models=3)
    clear_checkpoints(folder(), load(apply_gate(document, GateSettings(), today=TODAY)))
    assert sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*")) == [
        "checkpoints", "checkpoints/membership", "checkpoints/membership/reference-0.pt"]
    document["membership_attacks"].update(complete=True, reference_models=8)
    clear_checkpoints(folder(), load(apply_gate(document, GateSettings(), today=TODAY)))
    assert not (tmp_path / "checkpoints").exists()
    # the worker's ceiling ended the reference models' training: no attacks' record, only the cut; kept alike
    del document["membership_attacks"]
    document["budget_cuts"] = [{"phase": "membership", "reason": "the budget ended the reference-model attacks"}]
    clear_checkpoints(folder(), load(apply_gate(document, GateSettings(), today=TODAY)))
    assert (tmp_path / "checkpoints" / "membership" / "reference-0.pt").read_bytes() == b"model 0"
    assert not (tmp_path / "checkpoints" / "resume.pt").exists()
    document["budget_cuts"] = [{"phase": "positive control", "reason": "the budget ended the control"}]
    clear_checkpoints(folder(), load(apply_gate(document, GateSettings(), today=TODAY)))
    assert not (tmp_path / "checkpoints").exists()  # membership never started: nothing of it to keep
    clear_checkpoints(folder(), None)  # an audit that ended in an error: nothing kept
    assert not (tmp_path / "checkpoints").exists()


def test_the_stopping_rules_early_check_decides_as_a_full_pass(fitted: nn.Module, pool: Pool) -> None:
    from leakaudit.membership.training import EVAL_CHUNK, reaches_accuracy

    images = torch.cat([pool.members[0], pool.nonmembers[0]]).repeat(4, 1, 1, 1).float() / 255.0  # 800: two chunks
    labels = torch.cat([pool.members[1], pool.nonmembers[1]]).repeat(4)
    assert len(images) > EVAL_CHUNK
    with torch.no_grad():
        accuracy = float((fitted(images).argmax(1) == labels).double().mean())
    assert 0.5 < accuracy < 1.0  # the members fitted, the non-members not all
    for threshold in (0.5, accuracy, accuracy + 1e-9, 0.99, 1.0):
        reached, read = reaches_accuracy(fitted, images, labels, threshold)
        assert reached == (accuracy >= threshold), threshold
        assert read == accuracy if reached else read != read  # NaN: stopped before the end
