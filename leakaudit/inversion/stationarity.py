"""The stationarity (KKT) condition of margin maximisation, as a loss on the candidates.

A homogeneous network trained long enough by gradient descent from a small
initialisation converges in direction to a KKT point of margin maximisation,
where its weights are a non-negative combination of its training points'
margin gradients: θ ≈ Σ_i λ_i ∇_θ [Φ_{y_i}(θ; x_i) − max_{j≠y_i} Φ_j(θ; x_i)]
(Haim et al. 2022; multiclass: Buzaglo et al. 2023). The loss measures how far
the candidates are from satisfying that identity, ‖θ − Σ λ ∇_θ m‖² / ‖θ‖², with
one λ_i ≥ 0 per candidate learned beside them. True training points fit it
better than anything else the attack starts from (on the 10-per-class MNIST
reference, relative residual 0.44 at the members with λ fitted; 0.89 at the
refined candidates, about 0.69 after the stage), so lowering it moves
candidates towards members. It needs every
candidate in one sum and a double backward pass through the whole model per
step, which is why it runs only in one process and below a weight count.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, cast

import torch
import torch.nn.functional as F
from torch.autograd.function import once_differentiable

from leakaudit.inversion.config import InversionConfig
from leakaudit.inversion.engine import RunState, cosine_lr
from leakaudit.inversion.interrupt import interruptible
from leakaudit.inversion.losses import logit_margins
from leakaudit.inversion.rowspace import first_layer_is_dense
from leakaudit.model.target import TargetModel


@contextmanager
def differentiable(params: list[torch.Tensor]) -> Iterator[None]:
    """Let autograd see the classifier's weights for the duration (they are frozen otherwise)."""
    flags = [p.requires_grad for p in params]
    for p in params:
        p.requires_grad_(True)
    try:
        yield
    finally:
        for p, flag in zip(params, flags):
            p.requires_grad_(flag)


def residual(target: TargetModel, x01: torch.Tensor, targets: torch.Tensor, lam: torch.Tensor,
             params: list[torch.Tensor], norm: torch.Tensor | None = None) -> torch.Tensor:
    """‖θ − Σ λ_i ∇_θ m_i‖² / ‖θ‖², differentiable in x01 and λ; call inside ``differentiable(params)``."""
    weighted = (lam * logit_margins(target.logits(x01), targets)).sum()
    return fit_error(params, torch.autograd.grad(weighted, params, create_graph=True), norm)


class _SquaredDistance(torch.autograd.Function):
    """‖θ − g‖² of one weight tensor, differentiable in g only.

    The same value and gradient as autograd's ``((θ − g) ** 2).sum()``, bit for bit
    (−2·grad·(θ − g) is one exact scaling away from autograd's −(grad · 2(θ − g))),
    in one weight-sized multiply instead of four weight-sized passes: beside a
    small classifier those passes were a third of the stage's step.
    """

    @staticmethod
    def forward(ctx: Any, theta: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
        diff = theta.detach() - g
        ctx.save_for_backward(diff)
        return (diff**2).sum()

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[None, torch.Tensor]:
        (diff,) = ctx.saved_tensors
        return None, diff * (-2.0 * grad)


def squared_norm(params: Sequence[torch.Tensor]) -> torch.Tensor:
    """‖θ‖² of the weights (a constant of the stage: computed once)."""
    return _total((p.detach() ** 2).sum() for p in params)


def _total(terms: Iterable[torch.Tensor]) -> torch.Tensor:
    """Python's ``sum`` of the weights' terms (0 + t₁ + t₂ + …): a tensor, the weights never being empty."""
    return cast(torch.Tensor, sum(terms))


def fit_error(params: list[torch.Tensor], grads: Sequence[torch.Tensor],
              norm: torch.Tensor | None = None) -> torch.Tensor:
    """‖θ − g‖² / ‖θ‖² for weights θ and a combination g of their margin gradients (differentiable in g).

    ``norm``: ‖θ‖² when the caller holds it (``squared_norm``), saving its weight-sized passes every step.
    """
    diff = _total(_SquaredDistance.apply(p, g) for p, g in zip(params, grads))
    return diff / (squared_norm(params) if norm is None else norm)


def initial_scale(target: TargetModel, x01: torch.Tensor, targets: torch.Tensor, params: list[torch.Tensor]) -> float:
    """The common λ that best fits θ at the start: argmin_s ‖θ − s Σ ∇_θ m_i‖².

    Kept at least where the summed gradients have a tenth of θ's norm, so λ is
    never negligible when the candidates' gradients are nearly orthogonal to θ.
    """
    return common_scale(params, torch.autograd.grad(logit_margins(target.logits(x01), targets).sum(), params))


def common_scale(params: list[torch.Tensor], grads: Sequence[torch.Tensor]) -> float:
    """argmin_s ‖θ − s g‖² for summed margin gradients g, kept at least where ‖s g‖ = ‖θ‖ / 10."""
    dot = sum((p.detach() * g).sum() for p, g in zip(params, grads))
    sq = sum((g * g).sum() for g in grads)
    if float(sq) == 0.0:
        return 1.0
    return max(float(dot / sq), 0.1 * float((squared_norm(params) / sq).sqrt()))


class Stationarity:
    """The KKT residual of a fixed set of candidates, with their multipliers λ as a variable."""

    def __init__(self, target: TargetModel, x01: torch.Tensor, targets: torch.Tensor, floor: float) -> None:
        self.target = target
        self.targets = targets
        self.params = list(target.parameters())
        self.norm = squared_norm(self.params)
        with differentiable(self.params):
            self.scale = initial_scale(target, x01.detach(), targets, self.params)
        self.floor = floor * self.scale
        self.lam = torch.full((x01.shape[0],), self.scale, device=x01.device, requires_grad=True)

    def __call__(self, x01: torch.Tensor) -> torch.Tensor:
        with differentiable(self.params):
            return residual(self.target, x01, self.targets, self.lam, self.params, self.norm)

    @torch.no_grad()
    def project(self) -> None:
        """λ back onto its constraint: every candidate keeps at least ``floor`` of the starting scale."""
        self.lam.clamp_(min=self.floor)


def skip_reason(target: TargetModel, config: InversionConfig, distributed: bool) -> str | None:
    """Why the stationarity stage cannot run on this model and run, or None when it runs."""
    if config.diverse or not config.kkt_steps:
        return None
    if distributed:
        return "it sums over every candidate at once, which one process must hold"
    if not first_layer_is_dense(target):
        return ("the first layer is convolutional: a second backward pass through every convolution at every "
                "pixel costs several times the rest of the attack")
    if target.has_batchnorm:
        return ("the model normalises its activations (BatchNorm), so its weights are no combination of margin "
                "gradients")
    count = sum(p.numel() for p in target.parameters())
    if count > config.kkt_max_params:
        return f"the model has {count:,} weights, above the double-backprop limit of {config.kkt_max_params:,}"
    return None


def planned_steps(target: TargetModel, config: InversionConfig, distributed: bool) -> int:
    """The stage's steps in this run: 0 when it is off or cannot run."""
    if config.diverse or skip_reason(target, config, distributed) is not None:
        return 0
    return config.kkt_steps


def fit(run: RunState, images: torch.Tensor, targets: torch.Tensor) -> torch.Tensor | None:
    """Copies of the refined candidates with their pixels moved to lower the KKT residual, in [0, 1].

    None when the run was already stopped: no step, no copies.

    The pixels are free (no generator, no projection): members need more
    directions than the first layer's visible span offers. A penalty keeps them
    near [0, 1]; both rates decay along a cosine to zero over the planned steps,
    since at a constant rate Adam keeps circling the minimum.
    """
    config, clock = run.config, run.clock
    steps = config.kkt_steps if not clock.stopped else 0
    if not steps:
        return None
    kkt = Stationarity(run.target, images, targets, config.kkt_lambda_min)
    x = images.detach().clone().requires_grad_(True)  # (N, C, H, W)
    opt = torch.optim.Adam([{"params": [x], "lr": config.kkt_lr},
                            {"params": [kkt.lam], "lr": config.kkt_lambda_lr * kkt.scale}])
    for step in range(steps):
        cosine_lr(opt, step, steps, 0.0)
        with interruptible(clock.stop):
            residual = kkt(x)
            outside = (F.relu(x - 1).pow(2) + F.relu(-x).pow(2)).sum()
            opt.zero_grad(set_to_none=True)
            (residual + outside).backward(inputs=[x, kkt.lam])
        if clock.abandoned():
            break
        opt.step()
        kkt.project()
        if not clock.tick({"kkt": residual.detach(), "range": outside.detach()}):
            break
    return x.detach().clamp(0.0, 1.0)
