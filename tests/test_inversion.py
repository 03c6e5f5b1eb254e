"""The inversion engine on real tiny classifiers: the loop, its modes, stops and checkpoints, and its priors."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from leakaudit.errors import ConfigError
from leakaudit.inversion import ConditionalGenerator, InversionCallbacks, InversionConfig, invert, split_prior
from leakaudit.inversion.rowspace import first_layer_rowspace
from leakaudit.inversion.stationarity import Stationarity
from leakaudit.matching.ssim import ssim_matrix
from leakaudit.model.target import TargetModel
from leakaudit.zoo import ReferenceSpec, load_spec, split_members, train_classifier

from .conftest import QUICK


@dataclasses.dataclass
class Reference:
    target: TargetModel
    members: torch.Tensor  # (M, 1, 32, 32) uint8
    prior: tuple[torch.Tensor, torch.Tensor]
    evalset: torch.Tensor  # uint8 non-members not used by the inversion


def _reference(spec: ReferenceSpec) -> Reference:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny models train fastest on one thread of a shared machine
    try:
        data = split_members(spec)
        model, _ = train_classifier(spec, data)
    finally:
        torch.set_num_threads(threads)
    target = TargetModel.from_module(model, (1, spec.size, spec.size), len(data.classes), device="cpu")
    prior_idx, eval_idx = split_prior(data.holdout_labels, 0.5, seed=0)
    return Reference(target, data.train_images, (data.holdout_images[prior_idx], data.holdout_labels[prior_idx]),
                     data.holdout_images[eval_idx])


@pytest.fixture(scope="session")
def mlp_1pc() -> Reference:
    """The ladder's first rung as shipped: an MLP that memorised one digit per class."""
    spec, _ = load_spec("digits-mlp-1pc")
    return _reference(spec)


@pytest.fixture(scope="session")
def cnn_bn() -> Reference:
    """A small BatchNorm CNN, briefly trained (enough to classify, not to be good)."""
    spec = ReferenceSpec(name="t-cnn-bn", train_per_class=5, holdout_per_class=4, size=16, arch="cnn-bn", epochs=5,
                         batch_size=25)
    return _reference(spec)


# --- the loop ----------------------------------------------------------------

def test_reconstruction_raises_target_confidence(mlp_1pc: Reference) -> None:
    # the classification losses alone: in a run this short the row-space pull still outweighs them
    cfg = dataclasses.replace(QUICK, steps=120, refine_steps=30, rowspace=False)
    result = invert(mlp_1pc.target, cfg)
    torch.manual_seed(0)
    gen = ConditionalGenerator(mlp_1pc.target.input_shape, 10, width=16, latent_dim=8, embed_dim=8).eval()
    with torch.no_grad():
        fresh = gen(torch.randn(len(result.targets), 8), F.one_hot(result.targets, 10).float())
        before = torch.softmax(mlp_1pc.target.logits(fresh), 1)
    before_conf = before.gather(1, result.targets[:, None]).mean().item()
    assert result.mode == "data-free"
    assert result.confidence.mean().item() > max(0.6, before_conf + 0.4)
    # the refined candidates, then as many fitted to the stationarity identity, for the same classes
    assert result.images.shape == (40, 1, 32, 32)
    assert result.targets.tolist() == 2 * [c for c in range(10) for _ in range(2)]
    assert result.pretrained_images is None


def test_bn_prior_only_with_batchnorm(mlp_1pc: Reference, cnn_bn: Reference) -> None:
    seen: dict[str, set[str]] = {}
    for name, ref in (("mlp", mlp_1pc), ("cnn", cnn_bn)):
        keys: set[str] = set()
        cb = InversionCallbacks(on_step=lambda s, p, losses, keys=keys: keys.update(losses))
        invert(ref.target, dataclasses.replace(QUICK, steps=3, refine_steps=1), callbacks=cb)
        seen[name] = keys
    assert "bn" in seen["cnn"] and "bn" not in seen["mlp"]


def test_budget_stops_the_loop(mlp_1pc: Reference) -> None:
    cfg = dataclasses.replace(QUICK, steps=100_000, refine_steps=100_000, kkt_steps=100_000, budget_s=2.0)
    result = invert(mlp_1pc.target, cfg)
    assert result.completed_fraction < 0.1
    assert result.seconds < 10.0
    assert result.images.shape[0] == 20 and result.images.min() >= 0 and result.images.max() <= 1
    assert any("stopped early" in n for n in result.notes)


def test_should_stop_and_callbacks(mlp_1pc: Reference) -> None:
    events: list[tuple[str, object]] = []
    steps: list[int] = []
    cb = InversionCallbacks(on_start=lambda n: events.append(("start", n)),
                            on_step=lambda s, p, losses: steps.append(s),
                            on_phase=lambda name: events.append(("phase", name)))
    result = invert(mlp_1pc.target, QUICK, callbacks=cb, should_stop=lambda: len(steps) >= 5)
    assert events[0] == ("start", QUICK.steps + QUICK.refine_steps + QUICK.kkt_steps)
    assert ("phase", "train") in events
    assert result.steps == 5 and steps == [1, 2, 3, 4, 5]
    assert result.completed_fraction == pytest.approx(5 / 40)


def test_checkpoint_written(mlp_1pc: Reference, tmp_path: Path) -> None:
    invert(mlp_1pc.target, dataclasses.replace(QUICK, checkpoint_every=5), checkpoint_dir=tmp_path / "ckpt")
    state = torch.load(tmp_path / "ckpt" / "generator.pt", weights_only=False)
    assert state["step"] >= 5 and "generator" in state
    gen = ConditionalGenerator((1, 32, 32), 10, width=16, latent_dim=8, embed_dim=8)
    gen.load_state_dict(state["generator"])


def test_same_seed_same_candidates(mlp_1pc: Reference) -> None:
    a = invert(mlp_1pc.target, QUICK)
    b = invert(mlp_1pc.target, QUICK)
    c = invert(mlp_1pc.target, dataclasses.replace(QUICK, seed=1))
    assert torch.equal(a.images, b.images)
    assert not torch.equal(a.images, c.images)


def test_invalid_settings_are_refused(mlp_1pc: Reference) -> None:
    with pytest.raises(ConfigError):
        InversionConfig(conditioning="diagonal")
    with pytest.raises(ConfigError):
        invert(mlp_1pc.target, dataclasses.replace(QUICK, prior="holdout"))


def test_informed_mode_uses_the_prior_and_returns_pretrained(mlp_1pc: Reference) -> None:
    result = invert(mlp_1pc.target, QUICK, prior=mlp_1pc.prior)
    assert result.mode == "informed" and "public images" in result.threat_model
    assert result.pretrained_images is not None and result.pretrained_targets is not None
    assert result.pretrained_images.shape == (QUICK.candidates_per_class * 10, *result.images.shape[1:])
    data_free = invert(mlp_1pc.target, dataclasses.replace(QUICK, prior="none"), prior=mlp_1pc.prior)
    assert data_free.mode == "data-free" and data_free.pretrained_images is None


def test_diverse_mode_returns_galleries(mlp_1pc: Reference) -> None:
    result = invert(mlp_1pc.target, dataclasses.replace(QUICK, mode="diverse", steps=10))
    assert result.gallery is not None and sorted(result.gallery) == list(range(10))
    for c, idx in result.gallery.items():
        assert len(idx) == QUICK.candidates_per_class and all(int(result.targets[i]) == c for i in idx)


def test_split_prior_is_per_class_and_disjoint() -> None:
    labels = torch.tensor([0] * 10 + [1] * 3 + [2] * 2)
    prior, held = split_prior(labels, 0.5, seed=0)
    assert set(prior.tolist()).isdisjoint(held.tolist())
    assert sorted(prior.tolist() + held.tolist()) == list(range(15))
    for c in range(3):
        assert (labels[prior] == c).any() and (labels[held] == c).any()


def test_members_matched_better_than_non_members(mlp_1pc: Reference) -> None:
    """On the 1-digit-per-class MLP the informed inversion recovers members, not the population."""
    cfg = InversionConfig(threads=1, pretrain_steps=250, finetune_steps=20, refine_steps=40, pool_per_class=64,
                          candidates_per_class=1)
    result = invert(mlp_1pc.target, cfg, prior=mlp_1pc.prior)
    best_members = ssim_matrix(result.images, mlp_1pc.members.float() / 255).max(0).values.numpy()
    best_non = ssim_matrix(result.images, mlp_1pc.evalset.float() / 255).max(0).values.numpy()
    auc = float((best_members[:, None] > best_non[None, :]).mean())
    assert auc > 0.65, (auc, best_members.mean(), best_non.mean())
    assert np.mean(best_members) > np.mean(best_non) + 0.05


def test_a_run_stopped_inside_a_refine_step_resumes_there_and_completes(mlp_1pc: Reference, tmp_path: Path) -> None:
    module = mlp_1pc.target.module
    assert module is not None
    raised: list[float] = []
    hooks: list[torch.utils.hooks.RemovableHandle] = []

    def arm(name: str) -> None:
        if name == "refine":
            hooks.append(module.register_forward_pre_hook(lambda mod, args: raised.append(1.0)))

    try:
        first = invert(mlp_1pc.target, QUICK, callbacks=InversionCallbacks(on_phase=arm), checkpoint_dir=tmp_path,
                       should_stop=lambda: bool(raised))
    finally:
        for hook in hooks:
            hook.remove()
    assert first.interrupted and first.steps == QUICK.steps  # every training step, no refine step
    again = invert(mlp_1pc.target, QUICK, checkpoint_dir=tmp_path)
    assert again.resumed_from == "refine" and again.complete
    fresh = invert(mlp_1pc.target, QUICK)
    assert torch.equal(again.images, fresh.images)  # the dropped step left nothing behind


# --- the first layer's row space ----------------------------------------------

def test_rowspace_holds_the_members_of_the_small_init_mlp(mlp_1pc: Reference) -> None:
    """Ten training digits, ten learned directions: members lie inside the span, non-members do not."""
    space, note = first_layer_rowspace(mlp_1pc.target)
    assert space is not None, note
    assert space.rank == len(mlp_1pc.members) == 10
    inside_members = space.outside_fraction(mlp_1pc.members.float() / 255)
    inside_others = space.outside_fraction(mlp_1pc.evalset.float() / 255)
    assert inside_members.max() < 0.01
    assert inside_others.median() > 10 * inside_members.max()


def test_rowspace_projection_is_invisible_to_the_classifier(mlp_1pc: Reference) -> None:
    space, _ = first_layer_rowspace(mlp_1pc.target)
    assert space is not None
    x = mlp_1pc.evalset[:16].float() / 255
    projected = space.project(x)
    assert (projected - x).abs().max() > 0.1  # it does move the images ...
    logits, moved = mlp_1pc.target.logits(x), mlp_1pc.target.logits(projected)
    assert (moved - logits).abs().max() < 0.02 * logits.abs().max()  # ... but not their logits
    assert torch.allclose(space.project(projected), projected, atol=1e-5)  # a projection


def test_rowspace_skipped_without_a_low_rank_dense_first_layer(cnn_bn: Reference) -> None:
    space, note = first_layer_rowspace(cnn_bn.target)
    assert space is None and "not fully connected" in note
    torch.manual_seed(0)
    fresh = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(256, 64), torch.nn.ReLU(), torch.nn.Linear(64, 3))
    space, note = first_layer_rowspace(TargetModel.from_module(fresh, (1, 16, 16), 3, device="cpu"))
    assert space is None and "no low-rank learned span" in note


def test_rowspace_prior_is_used_and_reported(mlp_1pc: Reference) -> None:
    cfg = dataclasses.replace(QUICK, w_span=100.0)
    on = invert(mlp_1pc.target, cfg, prior=mlp_1pc.prior)
    off = invert(mlp_1pc.target, dataclasses.replace(cfg, rowspace=False), prior=mlp_1pc.prior)
    assert any("row-space prior: candidates projected onto the 10 learned directions" in n for n in on.notes)
    assert not any("row-space" in n for n in off.notes)
    space, _ = first_layer_rowspace(mlp_1pc.target)
    assert space is not None
    # pixels are clamped to [0, 1] after the projection, so a little energy may leave the span
    assert space.outside_fraction(on.images).mean() < 0.5 * space.outside_fraction(off.images).mean()


@pytest.mark.parametrize("hidden", [32, 128])  # narrower and wider than the 64-pixel input: both decompositions
def test_rowspace_recovers_a_planted_span(hidden: int) -> None:
    gen = torch.Generator().manual_seed(0)
    images = torch.rand(5, 64, generator=gen)  # five "training images" of 8×8 pixels
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, hidden), torch.nn.ReLU(),
                                torch.nn.Linear(hidden, 3))
    with torch.no_grad():
        model[1].weight.copy_(torch.randn(hidden, 5, generator=gen) @ images
                              + 1e-4 * torch.randn(hidden, 64, generator=gen))
    space, note = first_layer_rowspace(TargetModel.from_module(model, (1, 8, 8), 3, device="cpu"))
    assert space is not None and space.rank == 5, note
    planted = images.view(5, 1, 8, 8)
    assert torch.allclose(space.project(planted), planted, atol=1e-4)
    assert space.outside_fraction(planted).max() < 1e-6
    assert space.outside_fraction(torch.rand(4, 1, 8, 8, generator=gen)).min() > 0.01


# --- the stationarity (KKT) stage ----------------------------------------------

def _fitted_residual(ref: Reference, images: torch.Tensor, targets: torch.Tensor, steps: int = 150) -> float:
    """The KKT residual of fixed images with only their multipliers λ fitted."""
    kkt = Stationarity(ref.target, images, targets, floor=0.0)
    opt = torch.optim.Adam([kkt.lam], lr=0.05 * kkt.scale)
    for _ in range(steps):
        residual = kkt(images)
        opt.zero_grad()
        residual.backward(inputs=[kkt.lam])
        opt.step()
        kkt.project()
    return float(kkt(images).detach())


def test_members_satisfy_the_stationarity_identity_better_than_other_digits(mlp_1pc: Reference) -> None:
    """The premise of the stage: the weights are a combination of the members' margin gradients, not of others'."""
    labels = torch.arange(10)  # split_members takes the members class by class: one of each, in order
    members = _fitted_residual(mlp_1pc, mlp_1pc.members.float() / 255, labels)
    prior_images, prior_labels = mlp_1pc.prior
    first_of_each = torch.stack([torch.nonzero(prior_labels == c)[0, 0] for c in range(10)])
    others = _fitted_residual(mlp_1pc, prior_images[first_of_each].float() / 255, labels)
    assert members < 0.8 * others, (members, others)


def test_stationarity_stage_lowers_the_residual_and_keeps_pixels_in_range(mlp_1pc: Reference) -> None:
    seen: list[dict[str, float]] = []
    cb = InversionCallbacks(on_step=lambda s, p, losses: seen.append(losses))
    cfg = dataclasses.replace(QUICK, kkt_steps=40)
    result = invert(mlp_1pc.target, cfg, callbacks=cb)
    kkt = [losses["kkt"] for losses in seen if "kkt" in losses]
    assert len(kkt) == 40 and result.steps == cfg.steps + cfg.refine_steps + 40
    assert min(kkt[-5:]) < 0.97 * kkt[0], kkt
    assert result.images.min() >= 0 and result.images.max() <= 1
    before = invert(mlp_1pc.target, dataclasses.replace(cfg, kkt_steps=0))
    assert (_fitted_residual(mlp_1pc, result.images, result.targets)
            < _fitted_residual(mlp_1pc, before.images, before.targets))


def test_stationarity_stage_skipped_for_convolutions_or_too_many_weights(mlp_1pc: Reference, cnn_bn: Reference) -> None:
    bn = invert(cnn_bn.target, QUICK)
    assert any("stationarity (KKT) stage skipped: the first layer is convolutional" in n for n in bn.notes)
    assert bn.planned_steps == QUICK.steps + QUICK.refine_steps
    big = invert(mlp_1pc.target, dataclasses.replace(QUICK, kkt_max_params=1000))
    assert any("above the double-backprop limit of 1,000" in n for n in big.notes)
    assert big.planned_steps == QUICK.steps + QUICK.refine_steps
