"""The weighted inversion objective: which terms apply, and their sum.

One function serves generator training, informed fine-tuning and per-sample
refinement, so a weight in ``InversionConfig`` means the same thing in every
phase.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from leakaudit.inversion import losses
from leakaudit.inversion.config import InversionConfig
from leakaudit.model.target import TargetModel


@dataclass(frozen=True)
class Weights:
    """The weights in force for one run (mode and model capabilities applied)."""

    kl: float
    ce: float
    cos: float
    orth: float
    perturbed: float
    gradnorm: float
    tv: float
    range: float
    l2: float
    bn: float
    margin: float
    target_margin: float  # m* of the margin hinge


def resolve_weights(config: InversionConfig, target: TargetModel, notes: list[str]) -> Weights:
    """Apply the mode and what the model offers; explain every term switched off in ``notes``."""
    cos = config.diverse_w_cos if config.diverse else config.w_cos
    orth = config.diverse_w_orth if config.diverse else config.w_orth
    if (cos or orth) and not target.has_features:
        notes.append(f"feature diversity losses skipped: {target.feature_note}")
        cos = orth = 0.0
    bn = config.w_bn if target.has_batchnorm else 0.0
    gradnorm = config.w_gradnorm
    if gradnorm:
        count = sum(p.numel() for p in target.parameters())
        if count > config.gradnorm_max_params:
            notes.append(
                f"gradient-norm prior skipped: the model has {count:,} weights, above the "
                f"double-backprop limit of {config.gradnorm_max_params:,}"
            )
            gradnorm = 0.0
    # Diverse mode asks for the conditioning distribution, not for maximal confidence.
    perturbed = 0.0 if config.diverse else config.w_perturbed
    margin = 0.0 if config.diverse else config.w_margin
    return Weights(
        kl=config.w_kl, ce=config.w_ce, cos=cos, orth=orth, perturbed=perturbed, gradnorm=gradnorm,
        tv=config.w_tv, range=config.w_range, l2=config.w_l2, bn=bn, margin=margin, target_margin=config.target_margin,
    )


@dataclass(frozen=True)
class Batch:
    """One batch of generated images and what they were generated for."""

    x: torch.Tensor  # (N, C, H, W) in [0, 1]
    pre: torch.Tensor | None  # (N, C, h, w) pre-sigmoid pixels, for the range prior
    cond: torch.Tensor  # (N, K) conditioning distributions
    targets: torch.Tensor  # (N,) int64


def objective(target: TargetModel, weights: Weights, config: InversionConfig, batch: Batch,
              rng: torch.Generator) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Σ_t w_t L_t over the terms with a non-zero weight; returns the total and each term's value.

    The values are detached scalar tensors where the batch is (never read here: a read would make a GPU
    wait in every step); the clock reads them for the progress line.

    Call ``total.backward(inputs=...)`` with the variables being optimised, so
    no gradient accumulates in the frozen classifier.
    """
    params = target.parameters()
    flags = [p.requires_grad for p in params]
    if weights.gradnorm:  # the forward pass must see the weights as variables
        for p in params:
            p.requires_grad_(True)
    try:
        total, report = _terms(target, weights, config, batch, rng)
    finally:
        for p, flag in zip(params, flags):
            p.requires_grad_(flag)
    return total, report


def _terms(target: TargetModel, weights: Weights, config: InversionConfig, batch: Batch,
           rng: torch.Generator) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    x, pre, cond, targets = batch.x, batch.pre, batch.cond, batch.targets
    terms: dict[str, torch.Tensor] = {}
    probe = target.probe(x)
    logits = probe.logits  # (N, K)
    if weights.kl:
        terms["kl"] = weights.kl * losses.kl_loss(cond, logits)
    ce = losses.ce_loss(logits, targets)
    if weights.ce:
        terms["ce"] = weights.ce * ce
    if weights.margin:
        terms["margin"] = weights.margin * losses.margin_loss(logits, targets, weights.target_margin)
    if probe.features is not None:
        if weights.cos:
            terms["cos"] = weights.cos * losses.cosine_loss(probe.features)
        if weights.orth:
            terms["orth"] = weights.orth * losses.orthogonality_loss(probe.features)
    if weights.bn and probe.bn_stats:
        terms["bn"] = weights.bn * losses.bn_stats_loss(probe.bn_stats)
    if weights.perturbed:
        moved = losses.perturb(x, config.perturb_sigma, config.perturb_shift, rng)
        logits_p = target.logits(moved)
        terms["perturbed"] = weights.perturbed * (losses.kl_loss(cond, logits_p) + losses.ce_loss(logits_p, targets))
    if weights.gradnorm:
        terms["gradnorm"] = weights.gradnorm * losses.gradient_norm_loss(ce, target.parameters())
    if weights.tv:
        terms["tv"] = weights.tv * losses.total_variation(x)
    if weights.range and pre is not None:
        terms["range"] = weights.range * losses.range_loss(pre)
    if weights.l2:
        terms["l2"] = weights.l2 * losses.l2_prior(target.normalise(x))
    total = sum(terms.values(), x.new_zeros(()))
    report = {name: value.detach() for name, value in terms.items()}
    report["confidence"] = torch.softmax(logits.detach(), 1).gather(1, targets[:, None]).mean()
    return total, report
