"""Candidates from a trained generator: a confident pool per class, refined against the classifier.

"refine" draws ``pool_per_class`` samples per class, keeps the
``candidates_per_class`` the classifier is most sure of (largest logit margin)
and optimises their latents (and a small pixel residual) against the same
objective; with a row space (rowspace.py) the candidates are also pulled into
that span and projected onto it. Diverse mode samples soft-conditioned
galleries instead.
"""

from __future__ import annotations

import torch

from leakaudit.inversion.config import InversionConfig
from leakaudit.inversion.engine import RunState, cosine_lr
from leakaudit.inversion.generator import ConditionalGenerator, one_hot, soft_conditioning
from leakaudit.inversion.informed import LatentGaussian
from leakaudit.inversion.interrupt import StopPoll, interruptible
from leakaudit.inversion.losses import logit_margins
from leakaudit.inversion.objective import Batch, objective
from leakaudit.inversion.rowspace import RowSpace
from leakaudit.inversion.scale import pool_chunk
from leakaudit.model.target import TargetModel


@torch.no_grad()
def sample(gen: ConditionalGenerator, latents: LatentGaussian, k: int, per_class: int, rng: torch.Generator,
            device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Plain samples, per_class of each class (one-hot conditioning): (N, C, H, W), (N,)."""
    gen.eval()
    targets = torch.arange(k, device=device).repeat_interleave(per_class)
    z = latents.sample(targets.shape[0], rng)
    images = gen(z, one_hot(targets, k))
    gen.train()
    return images, targets


@torch.no_grad()
def sample_diverse(gen: ConditionalGenerator, latents: LatentGaussian, k: int, config: InversionConfig,
                   rng: torch.Generator, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Diverse mode: soft-conditioned samples, K per class, for the class galleries."""
    gen.eval()
    targets = torch.arange(k, device=device).repeat_interleave(config.candidates_per_class)
    z = latents.sample(targets.shape[0], rng)
    images = gen(z, soft_conditioning(targets, k, config.soft_temperature, rng).to(device))
    return images, targets


@torch.no_grad()
def margins(target: TargetModel, images: torch.Tensor, targets: torch.Tensor, chunk: int = 256,
            stop: StopPoll | None = None) -> torch.Tensor:
    """(N,) logit margin f_y − max_{k≠y} f_k of each image; after a ``stop``, the rest are −inf (not scored)."""
    chunk = min(chunk, pool_chunk(target.input_shape))
    out = []
    for i in range(0, images.shape[0], chunk):
        if stop is not None and stop.poll():
            out.append(torch.full((images[i : i + chunk].shape[0],), -float("inf"), device=images.device))
            continue
        out.append(logit_margins(target.logits(images[i : i + chunk]), targets[i : i + chunk]))
    return torch.cat(out)


@torch.no_grad()
def confidence(target: TargetModel, images: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    probs = torch.softmax(target.logits(images.to(target.device)), dim=1)
    return probs.gather(1, targets.to(target.device)[:, None]).squeeze(1).float()


@torch.no_grad()
def _confident_pool(run: RunState) -> tuple[torch.Tensor, torch.Tensor]:
    """Per class, the ``candidates_per_class`` latents of a pool the classifier is surest of: (N, latent), (N,)."""
    gen, config, k = run.gen, run.config, run.num_classes
    per = config.candidates_per_class
    gen.eval()
    chosen_z, chosen_t = [], []
    for c in range(k):
        t = torch.full((config.pool_per_class,), c, device=run.device, dtype=torch.long)
        z = run.latents.sample(config.pool_per_class, run.rng)  # (P, latent)
        if run.clock.stop.poll():  # an interrupted run's candidates are not read: no more classifier passes
            chosen_z.append(z[:per])
        else:
            m = margins(run.target, gen(z, one_hot(t, k)), t, stop=run.clock.stop)
            chosen_z.append(z[m.argsort(descending=True)[:per]])
        chosen_t.append(t[:per])
    return torch.cat(chosen_z), torch.cat(chosen_t)


def select_and_refine(run: RunState, space: RowSpace | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Keep the K most confident of a pool per class, then optimise their latents against the objective.

    With a row space, candidates are projected onto it in every step (and at the end).
    """
    gen, config, clock, k, device = run.gen, run.config, run.clock, run.num_classes, run.device
    pool_z, all_targets = _confident_pool(run)  # (N,): chosen alike on every rank
    clock.abandoned()  # a stop seen while scoring the pool ends the run here
    share = clock.dist.batch_share(all_targets)  # each rank refines its share of the candidates
    weight = share.shape[0] / all_targets.shape[0]  # gradients as in the full batch
    z = pool_z[share].clone().requires_grad_(True)  # (N_r, latent)
    targets = all_targets[share]  # (N_r,)
    cond = one_hot(targets, k)
    # a per-sample residual on the low-resolution pre-activations (zero: off)
    # (N, C, gh, gw)
    delta = torch.zeros(z.shape[0], gen.out_shape[0], *gen.gen_size, device=device, requires_grad=True)
    variables = [z, delta] if config.refine_pixels else [z]
    for p in gen.parameters():
        p.requires_grad_(False)
    opt = torch.optim.Adam([{"params": [z], "lr": config.refine_lr}] +
                           ([{"params": [delta], "lr": config.refine_pixel_lr}] if config.refine_pixels else []))
    for step in range(config.refine_steps if not clock.stopped else 0):
        cosine_lr(opt, step, config.refine_steps, config.lr_final_fraction)
        with interruptible(clock.stop):
            loss, report = _refine_loss(run, z, delta, cond, targets, space)
            opt.zero_grad(set_to_none=True)
            (loss * weight).backward(inputs=variables)
        if clock.abandoned():
            break
        opt.step()
        if not clock.tick(report):
            break
    for p in gen.parameters():
        p.requires_grad_(True)
    with torch.no_grad():
        images = projected(gen.upsample(gen.low_res(z, cond) + delta), space)
        return clock.dist.gather_rows(images, share, all_targets.shape[0]), all_targets


def _refine_loss(run: RunState, z: torch.Tensor, delta: torch.Tensor, cond: torch.Tensor, targets: torch.Tensor,
                 space: RowSpace | None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The refinement objective of the candidates' latents ``z`` and pixel residuals ``delta``."""
    gen, config = run.gen, run.config
    pre = gen.low_res(z, cond) + delta
    raw = gen.upsample(pre)
    x = projected(raw, space)
    loss, report = objective(run.target, run.weights, config, Batch(x, pre, cond, targets), run.rng)
    if space is not None and config.w_span:
        outside = space.outside_fraction(raw).mean()
        loss = loss + config.w_span * outside
        report["span"] = config.w_span * outside.detach()
    if config.w_refine_latent:
        prior = run.latents.standardise(z).pow(2).mean()
        loss = loss + config.w_refine_latent * prior
        report["latent"] = config.w_refine_latent * prior.detach()
    if config.refine_pixels and config.w_refine_pixel:
        shift = delta.pow(2).mean()
        loss = loss + config.w_refine_pixel * shift
        report["pixel_shift"] = config.w_refine_pixel * shift.detach()
    return loss, report


def projected(images: torch.Tensor, space: RowSpace | None) -> torch.Tensor:
    """Generator images in [0, 1], projected onto the row space if there is one (and clamped back into [0, 1])."""
    return images if space is None else space.project(images).clamp(0.0, 1.0)
