"""The inversion engine on real tiny classifiers trained on real digits."""

from __future__ import annotations

import dataclasses
import math
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from leakaudit.errors import ConfigError
from leakaudit.inversion import ConditionalGenerator, InversionCallbacks, InversionConfig, invert, split_prior
from leakaudit.inversion import losses
from leakaudit.inversion.generator import hot_patterns, soft_conditioning
from leakaudit.inversion.rowspace import first_layer_rowspace
from leakaudit.inversion.stationarity import Stationarity
from leakaudit.matching.ssim import ssim_matrix
from leakaudit.model.target import TargetModel
from leakaudit.zoo import ReferenceSpec, load_spec, split_members, train_classifier

# A short run: every phase runs, a few seconds each.
QUICK = InversionConfig(
    threads=1, steps=20, pretrain_steps=20, finetune_steps=10, refine_steps=10, kkt_steps=10, pool_per_class=4,
    candidates_per_class=2, batch_per_class=2, pretrain_batch=16, width=16, latent_dim=8, embed_dim=8,
)


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


# --- generator ---------------------------------------------------------------

@pytest.mark.parametrize("shape", [(1, 32, 32), (3, 32, 32), (1, 20, 28), (3, 9, 13), (1, 8, 8)])
@pytest.mark.parametrize("classes", [2, 10])
@pytest.mark.parametrize("conditioning", ["vector", "matrix", "both"])
def test_generator_output_shape_and_range(shape: tuple[int, int, int], classes: int, conditioning: str) -> None:
    torch.manual_seed(0)
    gen = ConditionalGenerator(shape, classes, conditioning=conditioning, width=16, latent_dim=8, embed_dim=8)
    targets = torch.arange(classes).repeat(3)
    with torch.no_grad():
        x = gen(torch.randn(len(targets), 8) * 5, F.one_hot(targets, classes).float())
    assert x.shape == (len(targets), *shape)
    assert x.dtype == torch.float32
    assert float(x.min()) >= 0.0 and float(x.max()) <= 1.0


@pytest.mark.parametrize("conditioning", ["vector", "matrix", "both"])
def test_each_conditioning_changes_the_image_with_the_label(conditioning: str) -> None:
    torch.manual_seed(0)
    gen = ConditionalGenerator((1, 16, 16), 4, conditioning=conditioning, width=16, latent_dim=8, embed_dim=8).eval()
    z = torch.randn(1, 8).expand(4, 8)
    x = gen(z, torch.eye(4))  # same noise, four labels
    assert (x[0] - x[1]).abs().max() > 1e-4
    assert (x[2] - x[3]).abs().max() > 1e-4


def test_soft_conditioning_argmax_is_target() -> None:
    targets = torch.tensor([0, 3, 9, 9, 1] * 20)
    p = soft_conditioning(targets, 10, 2.0, torch.Generator().manual_seed(1))
    assert torch.equal(p.argmax(1), targets)
    assert torch.allclose(p.sum(1), torch.ones(len(targets)))
    assert float(p.max(1).values.min()) < 0.999  # soft, not one-hot


def test_hot_patterns_mark_row_and_column() -> None:
    pat = hot_patterns(3)
    assert pat.shape == (3, 3, 3)
    assert torch.equal(pat[1], torch.tensor([[0.0, 1, 0], [1, 1, 1], [0, 1, 0]]))


# --- losses against hand-computed values ------------------------------------

def test_kl_against_hand_value() -> None:
    p = torch.tensor([[0.5, 0.5], [1.0, 0.0]])
    logits = torch.log(torch.tensor([[0.25, 0.75], [0.8, 0.2]]))
    expected = (0.5 * math.log(0.5 / 0.25) + 0.5 * math.log(0.5 / 0.75) + 1.0 * math.log(1 / 0.8)) / 2
    assert losses.kl_loss(p, logits).item() == pytest.approx(expected, abs=1e-6)


def test_ce_against_hand_value() -> None:
    logits = torch.log(torch.tensor([[0.25, 0.75], [0.8, 0.2]]))
    expected = -(math.log(0.75) + math.log(0.2)) / 2
    assert losses.ce_loss(logits, torch.tensor([1, 1])).item() == pytest.approx(expected, abs=1e-6)


def test_cosine_and_orthogonality_against_hand_values() -> None:
    phi = torch.tensor([[1.0, 0.0], [1.0, 1.0], [0.0, 2.0]])
    c = 1 / math.sqrt(2)  # cos(φ0, φ1) = cos(φ1, φ2); cos(φ0, φ2) = 0
    assert losses.cosine_loss(phi).item() == pytest.approx((2 * c + 2 * c + 0) / 6, abs=1e-6)
    # ‖Φ̂Φ̂ᵀ − I‖²_F / N²: the off-diagonal cosines squared, diagonal exactly 0
    assert losses.orthogonality_loss(phi).item() == pytest.approx(4 * c * c / 9, abs=1e-6)


def test_total_variation_against_hand_value() -> None:
    x = torch.tensor([[[[0.0, 1.0], [0.0, 0.0]]]])  # one bright pixel
    # vertical diffs: (0-0)², (0-1)² → mean 0.5; horizontal: (1-0)², (0-0)² → mean 0.5
    assert losses.total_variation(x).item() == pytest.approx(1.0)


def test_margin_and_range_and_bn_against_hand_values() -> None:
    logits = torch.tensor([[3.0, 1.0, 0.0], [0.0, 5.0, 4.5]])
    # margins 2 and 0.5 → hinge at 1: max(0, 1-2) = 0, max(0, 1-0.5) = 0.5
    assert losses.margin_loss(logits, torch.tensor([0, 1]), 1.0).item() == pytest.approx(0.25)
    assert losses.range_loss(torch.tensor([7.0, -8.0, 0.0, 1.0]), limit=6.0).item() == pytest.approx((1 + 4) / 4)
    stats = [(torch.tensor([1.0, 1.0]), torch.tensor([2.0, 1.0]), torch.tensor([1.0, 0.0]), torch.tensor([1.0, 1.0]))]
    assert losses.bn_stats_loss(stats).item() == pytest.approx(1.0 + 1.0)


def test_gradient_norm_against_hand_value() -> None:
    w = torch.tensor([[1.0, -1.0]], requires_grad=True)  # logits = [w·x, 0]
    x = torch.tensor([[2.0, 1.0]])
    logits = torch.cat([x @ w.T, torch.zeros(1, 1)], dim=1)
    ce = F.cross_entropy(logits, torch.tensor([0]))
    # dCE/dw = (σ(1) − 1) x
    expected = ((1 / (1 + math.exp(-1)) - 1) ** 2) * (4 + 1)
    assert losses.gradient_norm_loss(ce, [w]).item() == pytest.approx(expected, rel=1e-5)


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


# --- stop requests inside a step ----------------------------------------------

def test_a_stop_inside_a_long_step_ends_the_run_within_seconds() -> None:
    from torchvision.models import resnet18

    torch.manual_seed(0)
    model = resnet18(num_classes=10)
    target = TargetModel.from_module(model, (3, 224, 224), 10, device="cpu")
    raised: list[float] = []

    def arm(name: str) -> None:  # once the attack trains: the checks of the model at wrapping ran before
        if name == "train":
            model.layer2.register_forward_pre_hook(lambda mod, args: raised.append(time.monotonic()))

    result = invert(target, dataclasses.replace(QUICK, batch_per_class=4), callbacks=InversionCallbacks(on_phase=arm),
                    should_stop=lambda: bool(raised))
    ended = time.monotonic()
    assert raised, "the stop was never asked for"
    assert ended - raised[0] <= 5.0  # the stop came in the middle of the first step's forward pass
    assert result.interrupted and not result.complete
    assert result.steps == 0  # that step was dropped, not applied
    assert result.images.shape == (20, 3, 224, 224)


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


# --- the planned work and the budget ---------------------------------------------

def test_a_budget_that_cannot_hold_the_plan_is_announced_with_the_effort_that_would() -> None:
    from torchvision.models import resnet18

    from leakaudit.inversion.plan import budget_message, plan

    torch.manual_seed(0)
    target = TargetModel.from_module(resnet18(num_classes=10), (3, 224, 224), 10, device="cpu")
    standard = InversionConfig.for_effort("standard", budget_s=1200.0)
    quick = InversionConfig.for_effort("quick", budget_s=1200.0)
    # counted, not timed: ResNet-18 forward at 224×224 is 1.8 G multiply-adds (3.6 GFLOP), ×3 with the backward
    assert plan(target, standard, True, 0).flops_per_pass == pytest.approx(3 * 3.63e9, rel=0.01)
    assert plan(target, quick, True, 0).passes < plan(target, standard, True, 0).passes
    message = budget_message(target, standard, True, 0, threads=1)
    assert message is not None and "effort quick would" in message
    assert budget_message(target, quick, True, 0, threads=1) is None  # it fits: nothing to say
    assert budget_message(target, dataclasses.replace(standard, budget_s=None), True, 0, threads=1) is None
    data_free = budget_message(target, standard, False, 0, threads=1)
    assert data_free is not None and "no effort level would" in data_free


def test_an_informed_attack_on_a_large_input_runs_every_phase_on_the_cheap_path() -> None:
    from leakaudit.zoo import bundled_images

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, stride=4), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(4),
                                torch.nn.Flatten(), torch.nn.Linear(128, 10))
    target = TargetModel.from_module(model, (3, 96, 96), 10, device="cpu")
    images, labels, _ = bundled_images("digits", 32)  # gray 32×32: the engine brings them to 3×96×96
    keep = torch.cat([torch.nonzero(labels == c).flatten()[:4] for c in range(10)])
    result = invert(target, QUICK, prior=(images[keep], labels[keep]), should_stop=lambda: False)
    assert result.complete and result.mode == "informed"
    assert result.images.shape == (20, 3, 96, 96) and 0 <= float(result.images.min()) <= float(result.images.max()) <= 1
    assert result.pretrained_images is not None and result.pretrained_images.shape == (20, 3, 96, 96)
    assert set(result.phase_seconds) == {"pretrain", "finetune", "refine"}
