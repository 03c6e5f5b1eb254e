"""The positive control: fresh copies of each format, a copy that memorises, the ladder's splits, the gate's use."""

from __future__ import annotations

import json
import math
from dataclasses import replace
from datetime import date
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from leakaudit.gate.verdict import apply_gate
from leakaudit.gate.settings import GateSettings, gate_settings_from_mapping
from leakaudit.data.folders import load_image_folder
from leakaudit.errors import ConfigError
from leakaudit.inversion import InversionCallbacks, InversionConfig, invert
from leakaudit.inversion.warmstart import PretrainCache
from leakaudit.loading import import_arch
from leakaudit.model.target import TargetModel, load_model
from leakaudit.power.control import LOSS_BOUND, run_control
from leakaudit.power.ladder import cap, ladder, rungs
from leakaudit.power.reinit import UnknownLayer, fresh_copy, kaiming_bound
from leakaudit.power.verdict import decide, not_measured
from leakaudit.report.junit import render_junit
from leakaudit.report.markdown import render_markdown
from leakaudit.report.summary import headline_line, summarise
from tests.conftest import TinyReference
from tests.scenarios import scenario
from tests.test_formats import residual_net

ARCH = "tests.test_formats:residual_net"


@pytest.fixture(scope="module")
def formats(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Trained-looking weights of one conv-BN-residual net in every format leakaudit reads."""
    root = tmp_path_factory.mktemp("power-formats")
    torch.manual_seed(3)
    net = residual_net()
    net.train()
    with torch.no_grad():
        for p in net.parameters():
            p.mul_(3.0).add_(0.1)  # far from any default initialisation
        for _ in range(3):
            net(torch.rand(8, 1, 32, 32))
    net.eval()
    paths = {"torchscript": root / "model.pt", "export": root / "model.pt2", "state_dict": root / "weights.pth",
             "safetensors": root / "weights.safetensors"}
    torch.jit.save(torch.jit.script(net), str(paths["torchscript"]))
    torch.export.save(torch.export.export(net, (torch.rand(2, 1, 32, 32),)), paths["export"])
    torch.save(net.state_dict(), paths["state_dict"])
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(paths["safetensors"]))
    return paths


def _target(paths: dict[str, Path], fmt: str) -> TargetModel:
    arch = ARCH if fmt in ("state_dict", "safetensors") else None
    return load_model(paths[fmt], arch=arch, shape_hint=(1, 32, 32), device="cpu")


def _state(module: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


@pytest.mark.parametrize("fmt", ["torchscript", "export", "state_dict", "safetensors"])
def test_a_copy_of_each_format_has_fresh_weights_and_the_same_shapes_and_forward(formats: dict[str, Path],
                                                                                 fmt: str) -> None:
    target = _target(formats, fmt)
    assert target.module is not None
    before = _state(target.module)
    arch = import_arch(target.arch) if target.arch else None
    fresh = fresh_copy(target.module, seed=5, arch=arch)
    assert fresh.method == ("arch" if arch else "reset")
    after = _state(fresh.module)
    assert _state(target.module).keys() == before.keys()
    for name, tensor in before.items():  # the audited model itself is untouched
        assert torch.equal(_state(target.module)[name], tensor), name
    shapes = {k.replace("_orig_mod.", ""): v.shape for k, v in after.items()}
    assert {k: v.shape for k, v in before.items()} == shapes
    weights = [k for k in before if k.endswith("weight") and before[k].dim() > 1]
    assert weights and all(not torch.equal(before[k], after[k]) for k in weights)
    x = torch.rand(2, 1, 32, 32)  # the exported program was traced at batch 2
    with torch.no_grad():
        out_old, out_new = target.module(x), fresh.module(x)
    assert out_old.shape == out_new.shape == (2, 10)
    assert not torch.allclose(out_old, out_new)


@pytest.mark.parametrize("fmt", ["torchscript", "export", "state_dict"])
def test_reset_draws_torch_default_initialisation(formats: dict[str, Path], fmt: str) -> None:
    """Kaiming-uniform within torch's bound, biases within 1/√fan_in, norms ones and zeros with fresh statistics."""
    target = _target(formats, fmt)
    fresh = fresh_copy(target.module, seed=0).module  # no arch: every tensor re-drawn in place, whatever the format
    state = _state(fresh)
    hidden_w, hidden_b = state["hidden.weight"], state["hidden.bias"]
    assert hidden_w.abs().max() <= kaiming_bound(hidden_w) + 1e-7
    assert math.isclose(kaiming_bound(hidden_w), 1 / math.sqrt(8))
    assert hidden_b.abs().max() <= 1 / math.sqrt(8) + 1e-7
    conv = state["stem.0.weight"]  # 1 input channel, 3×3: fan-in 9
    assert conv.abs().max() <= 1 / 3 + 1e-7 and conv.std() > 0.1
    assert torch.equal(state["stem.1.weight"], torch.ones(8)) and torch.equal(state["stem.1.bias"], torch.zeros(8))
    assert torch.equal(state["stem.1.running_mean"], torch.zeros(8))
    assert torch.equal(state["stem.1.running_var"], torch.ones(8))
    again = _state(fresh_copy(target.module, seed=0).module)
    assert all(torch.equal(again[k], v) for k, v in state.items())  # seeded


def test_a_layer_without_a_known_default_is_refused() -> None:
    class Scaled(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.scale = nn.Parameter(torch.ones(10))
            self.fc = nn.Linear(4, 10)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.fc(x.flatten(1)) * self.scale

    with pytest.raises(UnknownLayer, match="scale"):
        fresh_copy(Scaled(), seed=0)


def _small_config(**changes: object) -> InversionConfig:
    values = dict(width=8, batch_per_class=1, steps=5, pool_per_class=2, candidates_per_class=2, refine_steps=2,
                  kkt_steps=0, pretrain_steps=5, finetune_steps=0)
    values.update(changes)
    return InversionConfig.for_effort("quick", **values)  # type: ignore[arg-type]


def test_the_control_memorises_its_members(tiny: TinyReference) -> None:
    torch.set_num_threads(1)  # a tiny model on shared cores: more threads only wait (conftest restores the count)
    target = load_model(tiny.torchscript, device="cpu")
    holdout = load_image_folder(tiny.holdout_dir, channels=1, size=target.input_shape[1:])
    first = torch.stack([torch.nonzero(holdout.labels == c).flatten()[0] for c in range(10)])
    images, labels = holdout.images[first], holdout.labels[first]
    control = run_control(target, images, labels, _small_config(), seed=1)
    assert control.unsupported is None and control.method == "reset"
    assert control.accuracy == 1.0 and control.final_loss <= LOSS_BOUND and control.memorised
    assert 0 < control.steps < 3000
    assert control.candidates.shape[1:] == target.input_shape and len(control.candidates) >= 20 and control.complete
    again = run_control(target, images, labels, _small_config(), seed=1)
    assert torch.equal(again.candidates, control.candidates) and again.steps == control.steps


def test_a_control_starts_from_the_attacks_pretraining_and_ends_where_it_would_have(tiny: TinyReference) -> None:
    torch.set_num_threads(1)
    target = load_model(tiny.torchscript, device="cpu")
    holdout = load_image_folder(tiny.holdout_dir, channels=1, size=target.input_shape[1:])
    first = torch.stack([torch.nonzero(holdout.labels == c).flatten()[0] for c in range(10)])
    prior = (holdout.images[1::2], holdout.labels[1::2])
    config = _small_config(pretrain_steps=25, finetune_steps=4)
    cache = PretrainCache()
    invert(target, config, prior=prior, pretrain_cache=cache)  # the audit's own attack keeps its pre-training
    rung = replace(config, candidates_per_class=3, pool_per_class=4, budget_s=600.0)  # other counts, a budget
    phases: list[str] = []
    reused = run_control(target, holdout.images[first], holdout.labels[first], rung, seed=1, prior=prior,
                         callbacks=InversionCallbacks(on_phase=phases.append), pretrain_cache=cache)
    assert cache.hits == 1 and any("reused" in phase for phase in phases)
    fresh = run_control(target, holdout.images[first], holdout.labels[first], rung, seed=1, prior=prior)
    assert torch.equal(reused.candidates, fresh.candidates) and reused.complete and fresh.complete
    other_prior = (prior[0][1:], prior[1][1:])
    run_control(target, holdout.images[first], holdout.labels[first], rung, seed=1, prior=other_prior,
                pretrain_cache=cache)
    other_seed = replace(rung, seed=rung.seed + 1)
    run_control(target, holdout.images[first], holdout.labels[first], other_seed, seed=1, prior=prior,
                pretrain_cache=cache)
    assert cache.hits == 1  # another prior or seed is another pre-training: never taken from the cache


def test_the_ladder_plants_nested_members_that_never_sit_in_their_own_null() -> None:
    labels = torch.arange(10).repeat_interleave(12)[torch.randperm(120, generator=torch.Generator().manual_seed(0))]
    assert cap(labels, 10) == 6
    assert ladder("quick", labels, 10) == (1,) and ladder("standard", labels, 10) == (1, 5)
    assert ladder("thorough", labels, 10) == (1, 5, 6)  # 20 is more than the null can give: the cap is the top rung
    planted = rungs(labels, 10, (1, 5, 6), seed=0)
    for rung in planted:
        members, null = set(rung.members.tolist()), set(rung.null.tolist())
        assert not members & null and len(members | null) == 120
        assert torch.equal(torch.bincount(labels[rung.members], minlength=10), torch.full((10,), rung.k))
    assert set(planted[0].members.tolist()) < set(planted[1].members.tolist()) < set(planted[2].members.tolist())
    assert torch.equal(rungs(labels, 10, (1, 5), seed=0)[1].members, planted[1].members)  # seeded
    assert ladder("standard", torch.arange(10), 10) == ()  # one image per class: nothing to plant and keep


def _with_power(document: dict, status: str) -> dict:
    doc = json.loads(json.dumps(document))
    if status == "shown":
        return doc  # the scenario's control shows power at K = 1
    if status == "not measured":
        doc["power"] = not_measured("the positive control was skipped (--no-power-check)", 2.0).to_dict()
        return doc
    rung = doc["power"]["rungs"][0]
    from leakaudit.power.verdict import RungResult
    from leakaudit.record import LeakScore
    doc["power"] = decide([RungResult(
        k=1, n_members=10, n_null=30, leak=LeakScore.from_dict(rung["leak_score"]), above_quantile=0,
        quantile_value=0.6, at_seen=1,
        shown=False, reason="Would pass the gate", memorised=True, steps=20, final_loss=1e-4, accuracy=1.0,
        complete=True, seconds=1.0, members=rung["splits"]["members"], null=rung["splits"]["null"],
        member_best_ssim=[0.3] * 10, member_best_index=list(range(10)))], 2.0, "reset", None, 1.0).to_dict()
    return doc


@pytest.mark.parametrize(("status", "required", "verdict", "code"), [
    ("shown", True, "pass", 0), ("not shown", True, "incomplete", 2), ("not measured", True, "incomplete", 2),
    ("not shown", False, "pass", 0), ("not measured", False, "pass", 0)])
def test_require_power_turns_only_a_pass_without_shown_power_into_incomplete(status: str, required: bool,
                                                                             verdict: str, code: int) -> None:
    clean = scenario(leaky=False).document
    gated = apply_gate(_with_power(clean, status), GateSettings(require_power=required), today=date(2026, 12, 1))
    assert (gated["verdict"], gated["exit_code"]) == (verdict, code)
    plain = summarise(gated)
    assert plain.power == status
    if status != "shown":  # never reads like a clean pass
        assert "No leakage found" not in plain.headline or "but" in plain.headline or "not measured" in plain.headline
        assert "does not show that the model is safe" in (gated["power"]["statement"])
    if verdict == "incomplete":
        assert "require_power" in plain.headline and "require_power" in " ".join(gated["summary"]["notes"])
        power_case = render_junit(gated).split('name="leakaudit.gate.power"')[1].split("</testcase>")[0]
        assert '<failure message="' in power_case
    assert f"**Power {status}**" in render_markdown(gated)


def test_require_power_leaves_a_failing_audit_failing() -> None:
    leaky = scenario(leaky=True).document
    gated = apply_gate(_with_power(leaky, "not shown"), GateSettings(require_power=True), today=date(2026, 12, 1))
    assert (gated["verdict"], gated["exit_code"]) == ("fail", 1)
    assert headline_line(gated).startswith("✖ FAIL")


def test_require_power_is_a_gate_key_that_must_be_a_boolean() -> None:
    assert gate_settings_from_mapping({"require_power": True}).require_power
    with pytest.raises(ConfigError, match="require_power must be true or false"):
        gate_settings_from_mapping({"require_power": "yes"})


def test_the_statement_names_k_against_the_models_images_per_class() -> None:
    doc = scenario(leaky=False, train_per_class=6).document
    power = replace(decide([], 6.0, None, None, 0.0))
    assert power.status == "not measured"
    assert "memorising up to 1 image per class; this model was trained on 2 per class" in (
        scenario(leaky=False).document["power"]["statement"])
    assert doc["power"]["model_images_per_class"] == 6
