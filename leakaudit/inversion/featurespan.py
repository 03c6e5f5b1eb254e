"""Init-aware inversion through any backbone: images whose features fall into a dense layer's update span.

A fully connected layer trained by (S)GD changes only by outer products δ φᵀ
of back-propagated errors and its inputs φ(x), so the rows of its update
W − W⁰ lie in the span of the features the training images gave it. That
holds behind a convolutional backbone as well as on raw pixels: for the
first linear layer of a CNN, φ is the backbone's feature map. When the
backbone did not move in training (fine-tuning the head of a pretrained
network) the span is exact; when it moved (fine-tuning all of it), the
members' final features still lie close to it.

Every member's features lie in that span and a public image's mostly do not
(the span has a few dimensions per member in thousands), so an image pushed
until its features enter the span is pushed towards a member. This stage
starts from public images and minimises the share of their features'
energy outside the span, through the frozen classifier.

Measured on a CNN pretrained on Fashion-MNIST and fine-tuned by gradient
descent on 2 real MNIST digits per class (scratch runs, 200 public starts,
1,000 steps): the members' mean best SSIM went from 0.45 (the public images
themselves) to 0.94 with a frozen backbone and to 0.89 with all layers
fine-tuned; every member had a candidate at SSIM ≥ 0.4.

Matching the whole update Δθ by a sum of candidates' gradients (Loo et al.
2024) was tried first on the same models and failed: free candidates fitted
Δθ better than the members themselves (cosine 0.93 against 0.87), so its
optimum is not the training set in this regime.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from leakaudit.errors import ModelError
from leakaudit.inversion.rowspace import _right_singular
from leakaudit.model.features import instrument
from leakaudit.model.target import TargetModel, copy_module

# Singular values of the update below this share of the largest are outside the learned span. Measured on the
# fine-tuned CNNs above: a frozen backbone leaves an exact rank of 20 (σ₂₁/σ₁ = 0, rounding); all layers
# fine-tuned leave no cliff, and this floor keeps 62 of 256 directions, enough to hold the members' features
# (0.3 % of their energy outside, public images' ≥ 0.9 %).
SPAN_FLOOR = 1e-5
# (S)GD concentrates the update's energy in a few directions per member; Adam's per-weight scaling spreads it over
# every live one. The test: the directions holding SPAN_ENERGY of the energy, as a share of the update's nonzero
# directions (above LIVE_FLOOR: dead units and never-lit inputs leave exact zeros). Measured on the fine-tuned
# CNNs: full-batch GD 0.08-0.33, minibatch SGD with momentum 0.42 (its floor rank is every live direction, 174 of
# 179, yet its members' features lie 0.3 % outside it and 17 of 20 come back), Adam 0.94 (members' features
# 18 % outside: nothing to push towards).
SPAN_ENERGY = 0.9999
LIVE_FLOOR = 1e-9
MAX_ENERGY_SHARE = 0.6
FeatureForward = Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


@dataclass(frozen=True)
class FeatureSpan:
    """Orthonormal basis (r, D) of the first linear layer's update, in the space of that layer's inputs."""

    basis: torch.Tensor
    rank: int

    def outside_fraction(self, features: torch.Tensor) -> torch.Tensor:
        """(N,) share of each feature vector's energy outside the span: ~0 for members."""
        inside = (features @ self.basis.T).pow(2).sum(1)
        total = features.pow(2).sum(1).clamp_min(1e-12)
        return (1.0 - inside / total).clamp_min(0.0)


def first_linear_forward(target: TargetModel) -> tuple[FeatureForward | None, str | None]:
    """x01 → (logits, input of the first linear layer), or None and why it cannot be reached.

    Instrumented on a copy: hooks and graph edits never reach the audited module.
    """
    if target.module is None:
        return None, "the loaded model exposes no module to tap"
    module = target.module if isinstance(target.module, torch.jit.ScriptModule) else copy_module(target.module)
    forward, tap, note = instrument(module, target.input_shape, target.device, linear=0)
    if note is not None:
        return None, note.replace("penultimate features", "the first linear layer's input")

    def run(x01: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        tap.reset()
        tap.active = True
        try:
            logits = forward(target.normalise(x01))
        finally:
            tap.active = False
        features = tap.features
        tap.reset()
        assert features is not None  # verified by instrument()
        return logits, features

    return run, None


def linear_update(target: TargetModel, initial: dict[str, torch.Tensor], width: int) -> torch.Tensor:
    """W − W⁰ (out, width) of the first weight matrix that takes ``width`` inputs; ModelError when none does.

    Weight matrices keep their order in the parameters and in a state_dict
    (buffers are vectors or scalars), so the k-th of each is the same layer.
    """
    params = [p for p in target.parameters() if p.dim() >= 2]
    start = [t for t in initial.values() if t.dim() >= 2]
    index = next((k for k, p in enumerate(params) if p.dim() == 2 and p.shape[1] == width), None)
    if index is None:
        raise ModelError(f"--init: no weight matrix of the model takes the first linear layer's {width} inputs")
    weight = params[index].detach().cpu()
    if index >= len(start) or tuple(start[index].shape) != tuple(weight.shape):
        raise ModelError("--init: the initial state has no weight of the first linear layer's shape "
                         f"{tuple(weight.shape)}")
    return weight.double() - start[index].double()


def feature_span(delta: torch.Tensor, device: torch.device, classes: int) -> tuple[FeatureSpan | None, str]:
    """The update's row span above ``SPAN_FLOOR``, or None and the reason.

    ``classes``: the model's outputs; a layer with no more outputs than that is the head, whose update
    spans at most one direction per class, whatever the optimiser.
    """
    singular, vh = _right_singular(delta)
    if float(singular[0]) == 0.0:
        return None, "feature span: the first linear layer did not change in training"
    rank = int((singular > SPAN_FLOOR * singular[0]).sum())
    width = delta.shape[1]
    live = int((singular > LIVE_FLOOR * singular[0]).sum())
    energy = singular.double().pow(2).cumsum(0) / singular.double().pow(2).sum()
    holding = int((energy < SPAN_ENERGY).sum()) + 1
    if holding > MAX_ENERGY_SHARE * live:
        spread = (f"{SPAN_ENERGY:.2%} of the first linear layer's update is spread over {holding} of its {live} "
                  "nonzero directions")
        if delta.shape[0] <= classes:
            return None, (f"feature span: {spread}; the first linear layer is the {delta.shape[0]}-output head, "
                          "whose update cannot hold more members' features than it has outputs")
        return None, f"feature span: {spread} (no concentrated span; adaptive optimisers such as Adam spread it)"
    basis = vh[:rank].to(device=device, dtype=torch.float32)
    return FeatureSpan(basis, rank), (f"feature span: the first linear layer's update has rank {rank} in its "
                                      f"{width} inputs; public images are pushed until their features lie in it")


def push_into_span(forward: FeatureForward, span: FeatureSpan, starts: torch.Tensor, steps: int, lr: float,
                   keep_going: Callable[[int], bool]) -> tuple[torch.Tensor, int]:
    """Optimise images (N, C, H, W) in [0, 1] so that their features enter the span; returns them and the steps done.

    Pixels are a sigmoid of free logits, so they stay in range without a
    penalty. Stops before step i when ``keep_going(i)`` is False.
    """
    logits = torch.logit(starts.float().clamp(0.02, 0.98)).detach().requires_grad_(True)
    optimiser = torch.optim.Adam([logits], lr=lr)
    done = 0
    for step in range(steps):
        if not keep_going(step):
            break
        _, features = forward(torch.sigmoid(logits))
        loss = span.outside_fraction(features).sum()
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
        done += 1
    return torch.sigmoid(logits).detach(), done
