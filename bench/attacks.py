"""Reference attacks that the benchmarks run beside leakaudit's own inversion.

Each attack turns a classifier (or a folder of non-member images) into
candidate reconstructions, so that the tool's inversion can be measured against
known yardsticks on the same matching (SSIM) and the same member / non-member
split. Every function returns ``(images, targets)``: ``images`` (N, C, H, W)
float32 in [0, 1] and ``targets`` (N,) int64, the class each candidate stands
for. All are deterministic for a given seed (on CPU, when a time budget does
not cut the run short) and never print.

``class_mean_candidates(images_uint8, labels, num_classes)``
    The per-class mean image of the given images: the prototype null. Any
    attack that only recovers class prototypes scores like this.

``pixel_inversion(target, per_class, steps=400, seed=0, *, lr, tv_weight, init_std, budget_s)``
    The simple pixel inversion (model inversion in the manner of Fredrikson et
    al. 2015, "MIFace"): pixels parameterised through a sigmoid, cross-entropy
    to the target class plus total variation, Adam, ``per_class`` candidates
    per class from different random starts. The yardstick of the ladder.

``kkt_reconstruction(target, n_candidates, steps=3000, seed=0, *, competitors, lr_x, lr_lambda, lambda_min,
init_mean, init_std, prior_weight, cosine_decay, budget_s, trace)``
    Reconstruction from the implicit bias of gradient training (Haim et al.
    2022, "Reconstructing Training Data from Trained Neural Networks"), in its
    multiclass form (Buzaglo et al. 2023, "Deconstructing Data Reconstruction").
    A network trained long enough from small initialisation converges in
    direction to a KKT point of margin maximisation, where its parameters are a
    non-negative combination of the margin gradients of its training points:
    θ = Σ_i λ_i ∇_θ [Φ_{y_i}(θ; x_i) − max_{j≠y_i} Φ_j(θ; x_i)]. The attack
    learns candidates x_i (labels fixed, spread evenly over the classes) and
    λ_i ≥ λ_min that satisfy this identity as well as possible. It needs a
    double backward pass through the whole model, once per step. Measured on
    one CPU core with 200 candidates: 0.08 s per step on the reference MLPs
    (2.0M weights), 0.55 s on the reference CNN (1.1M weights: the second
    backward runs through every convolution at every pixel), so a CNN run of
    800 steps takes ~7 CPU-minutes and anything ImageNet-sized is out of reach
    on CPU; the benchmark runs it on the MLPs only (the CNNs are also trained
    with Adam, outside the regime below). It only works on models
    trained in that regime (small init, long training, homogeneous ReLU
    network, no or tiny biases); weight decay helps (Buzaglo et al.): it
    removes the part of the initial weights that gradients never touch, which
    otherwise keeps θ far from any combination of margin gradients.

Callers should enable ``torch.set_flush_denormal(True)``: the reference models
are trained to losses near 1e-4 and denormal floats slow CPU steps severalfold.
"""

from __future__ import annotations

import math
import time

import torch
import torch.nn.functional as F

from leakaudit.inversion.losses import logit_margins
from leakaudit.inversion.stationarity import common_scale, differentiable, fit_error
from leakaudit.model.target import TargetModel

__all__ = ["class_mean_candidates", "pixel_inversion", "kkt_reconstruction", "kkt_objective", "spread_targets"]


def class_mean_candidates(
    images_uint8: torch.Tensor, labels: torch.Tensor, num_classes: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """One candidate per class present: the mean image of that class.

    images_uint8 (M, C, H, W) uint8, labels (M,) int64 → images (K', C, H, W)
    float32 in [0, 1], targets (K',), K' = classes with at least one image,
    in increasing class order.
    """
    if images_uint8.ndim != 4:
        raise ValueError(f"images must be (M, C, H, W), got {tuple(images_uint8.shape)}")
    x = images_uint8.to(torch.float64) / 255.0 if images_uint8.dtype == torch.uint8 else images_uint8.double()
    labels = labels.long()
    means: list[torch.Tensor] = []
    targets: list[int] = []
    for c in range(num_classes):
        mask = labels == c
        if mask.any():
            means.append(x[mask].mean(0))  # (C, H, W)
            targets.append(c)
    if not means:
        return torch.empty(0, *x.shape[1:], dtype=torch.float32), torch.empty(0, dtype=torch.int64)
    return torch.stack(means).float().clamp(0, 1), torch.tensor(targets, dtype=torch.int64)


def spread_targets(n: int, num_classes: int) -> torch.Tensor:
    """n labels spread evenly over the classes: 0, 1, …, K−1, 0, 1, … (n,) int64."""
    return torch.arange(n, dtype=torch.int64) % num_classes


def total_variation(x: torch.Tensor) -> torch.Tensor:
    """Mean squared difference of neighbouring pixels, per image: (N, C, H, W) → (N,).

    Squared (not absolute) differences keep the gradient smooth near flat regions.
    """
    dh = (x[:, :, 1:, :] - x[:, :, :-1, :]).pow(2).flatten(1).mean(1)
    dw = (x[:, :, :, 1:] - x[:, :, :, :-1]).pow(2).flatten(1).mean(1)
    return dh + dw


def _deadline(budget_s: float | None) -> float:
    return float("inf") if budget_s is None else time.monotonic() + budget_s


def pixel_inversion(
    target: TargetModel,
    per_class: int,
    steps: int = 400,
    seed: int = 0,
    *,
    lr: float = 0.1,
    tv_weight: float = 3.0,
    init_std: float = 1.0,
    budget_s: float | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Invert the classifier pixel by pixel, ``per_class`` random starts per class.

    Each candidate is x = sigmoid(w) (so it stays in [0, 1] without clipping)
    and minimises CE(f(x), y) + tv_weight · TV(x) with Adam. All candidates run
    as one batch; they do not interact (the loss is a sum over candidates).
    Returns images (K·per_class, C, H, W) float32 in [0, 1], targets grouped by
    class: [0]*per_class + [1]*per_class + …
    """
    if per_class < 1:
        raise ValueError("per_class must be at least 1")
    k = target.num_classes
    c, h, w = target.input_shape
    targets = torch.arange(k, dtype=torch.int64).repeat_interleave(per_class)  # (N,)
    gen = torch.Generator().manual_seed(seed)
    logits_w = (init_std * torch.randn(len(targets), c, h, w, generator=gen)).to(target.device)  # (N, C, H, W)
    logits_w.requires_grad_(True)
    opt = torch.optim.Adam([logits_w], lr=lr)
    y = targets.to(target.device)
    deadline = _deadline(budget_s)
    for _step in range(steps):
        x = torch.sigmoid(logits_w)  # (N, C, H, W)
        ce = F.cross_entropy(target.logits(x), y, reduction="none")  # (N,)
        loss = (ce + tv_weight * total_variation(x)).sum()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if time.monotonic() > deadline:
            break
    with torch.no_grad():
        images = torch.sigmoid(logits_w).float().cpu()
    return images, targets


def pairwise_margins(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Φ_y − Φ_j for every class j, zero at j = y: (N, K), (N,) → (N, K)."""
    return logits.gather(1, y[:, None]) - logits


def _weighted_margins(logits: torch.Tensor, y: torch.Tensor, lam: torch.Tensor) -> torch.Tensor:
    """Σ_i λ_i m_i for λ (N,) (max competitor) or Σ_i Σ_j λ_ij (Φ_y − Φ_j) for λ (N, K)."""
    if lam.ndim == 1:
        return (lam * logit_margins(logits, y)).sum()
    return (lam * pairwise_margins(logits, y)).sum()  # the j = y column is zero


def kkt_objective(
    target: TargetModel, x01: torch.Tensor, y: torch.Tensor, lam: torch.Tensor, params: list[torch.Tensor]
) -> torch.Tensor:
    """‖θ − Σ λ ∇_θ margins‖² / ‖θ‖², differentiable in x01 and λ.

    x01 (N, C, H, W), y (N,); λ (N,) weighs each candidate's margin against its
    strongest competitor, λ (N, K) weighs its margin against every competitor
    j (column y ignored). ``params`` must require grad. The weighted sum of
    margins is differentiated once (its gradient is Σ λ ∇_θ m) with
    ``create_graph`` so that the result can be differentiated again with
    respect to the candidates; one double backward per call, whatever λ's shape.
    """
    return fit_error(params, torch.autograd.grad(_weighted_margins(target.logits(x01), y, lam), params,
                                                 create_graph=True))


def kkt_reconstruction(
    target: TargetModel,
    n_candidates: int,
    steps: int = 3000,
    seed: int = 0,
    *,
    competitors: str = "max",
    lr_x: float = 0.1,
    lr_lambda: float = 0.01,
    lambda_min: float = 0.5,
    init_mean: float = 0.0,
    init_std: float = 0.01,
    prior_weight: float = 1.0,
    cosine_decay: bool = True,
    budget_s: float | None = None,
    trace: list[float] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Reconstruct training points from the KKT identity of a margin-maximising network.

    ``competitors="max"`` is the form θ = Σ_i λ_i ∇_θ [Φ_{y_i} − max_{j≠y_i} Φ_j];
    ``"all"`` the full multiclass KKT condition of margin maximisation with one
    constraint per competitor, θ = Σ_i Σ_{j≠y_i} λ_ij ∇_θ [Φ_{y_i} − Φ_j]. With
    cross-entropy training every competitor keeps some weight, so the
    max-only form cannot fit θ even at the true training points (measured on
    the reference MLPs: relative residual 0.6–0.9 with the max form against
    0.07–0.3 with all competitors); the two cost the same per step. Yet the
    extra freedom of λ_ij also fits θ with candidates that are not digits:
    measured on the 1-per-class reference, "max" reached 3/10 members at
    SSIM ≥ 0.4 where "all" reached none, so "max" is the default.

    Candidates x_i (labels ``spread_targets``) start as small noise around
    ``init_mean``. λ starts at the common value s that best fits θ (least
    squares); ``lambda_min`` is relative to s, so it does not depend on the
    scale of the weights: each candidate's total weight Σ_j λ_ij stays at or
    above lambda_min · s, which keeps every candidate in play. Each step lowers
    ``kkt_objective + prior_weight · Σ (relu(x − 1)² + relu(−x)²)`` with Adam
    (λ's rate is relative to s too), then projects λ back onto the constraint.
    With ``cosine_decay`` both rates fall to zero along a cosine over the run,
    whose progress is the larger of step / steps and elapsed / budget_s: at a
    constant rate Adam keeps circling the minimum (the objective was measured
    rising again late in long runs), and a run cut by its budget should still
    have settled.
    ``trace``, if given, receives the KKT objective of every step. Returns
    images (n_candidates, C, H, W) float32 clipped to [0, 1] and their targets.
    """
    if n_candidates < 1:
        raise ValueError("n_candidates must be at least 1")
    if competitors not in ("all", "max"):
        raise ValueError("competitors must be 'all' or 'max'")
    c, h, w = target.input_shape
    k = target.num_classes
    y = spread_targets(n_candidates, k).to(target.device)  # (N,)
    gen = torch.Generator().manual_seed(seed)
    x = (init_mean + init_std * torch.randn(n_candidates, c, h, w, generator=gen)).to(target.device)
    x.requires_grad_(True)  # (N, C, H, W)
    params = list(target.parameters())
    # λ: (N,) for "max"; (N, K) for "all", with the own-class column held at zero.
    shape = (n_candidates,) if competitors == "max" else (n_candidates, k)
    mask = torch.ones(shape, device=target.device)
    if competitors == "all":
        mask.scatter_(1, y[:, None], 0.0)
    deadline = _deadline(budget_s)
    with differentiable(params):
        scale = _lambda_scale(target, x.detach(), y, mask, params)  # λ = scale · mask fits θ best
        floor = lambda_min * scale * (1 if competitors == "max" else k - 1)  # per-candidate total
        lam = (scale * mask).requires_grad_(True)
        opt = torch.optim.Adam([{"params": [x], "lr": lr_x}, {"params": [lam], "lr": lr_lambda * scale}])
        base_lrs = [group["lr"] for group in opt.param_groups]
        start = time.monotonic()
        for step in range(steps):
            kkt = kkt_objective(target, x, y, lam, params)
            prior = (F.relu(x - 1).pow(2) + F.relu(-x).pow(2)).sum()
            loss = kkt + prior_weight * prior
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if cosine_decay:
                progress = max((step + 1) / steps, (time.monotonic() - start) / budget_s if budget_s else 0.0)
                for group, base in zip(opt.param_groups, base_lrs):
                    group["lr"] = base * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))
            with torch.no_grad():
                _project(lam, mask, floor)
            if trace is not None:
                trace.append(float(kkt.detach()))
            if time.monotonic() > deadline:
                break
        for p in params:
            p.grad = None
    return x.detach().clamp(0, 1).float().cpu(), y.cpu()


def _project(lam: torch.Tensor, mask: torch.Tensor, floor: float) -> None:
    """In place: λ ≥ 0 on the competitors, 0 elsewhere, each candidate's total ≥ floor."""
    lam.mul_(mask).clamp_(min=0)
    rows = lam.view(lam.shape[0], -1)  # (N, K) or (N, 1)
    m = mask.view(lam.shape[0], -1)
    short = (floor - rows.sum(1, keepdim=True)).clamp(min=0)  # (N, 1)
    rows.add_(short * m / m.sum(1, keepdim=True))


def _lambda_scale(
    target: TargetModel, x01: torch.Tensor, y: torch.Tensor, mask: torch.Tensor, params: list[torch.Tensor]
) -> float:
    """argmin_s ‖θ − s Σ mask·∇_θ margins‖²: the common λ that best fits θ at the start.

    Near-blank candidates can have margin gradients almost orthogonal to θ (the
    best fit is then ~0 or negative); the scale is kept at least at the value
    where the weighted gradients have a tenth of θ's norm, so λ is never
    negligible at the start.
    """
    return common_scale(params, torch.autograd.grad(_weighted_margins(target.logits(x01), y, mask), params))
