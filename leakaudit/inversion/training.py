"""The generator's training loops: pre-training on the prior, and training against the classifier.

``pretrain`` fits the generator (the decoder of a conditional VAE or
autoencoder) to the prior images; ``train_against`` trains it against the
frozen classifier, still anchored to the prior in the informed mode's
fine-tuning. Both stop at the clock's ceiling and save checkpoints as they go.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from leakaudit.inversion.config import InversionConfig
from leakaudit.inversion.engine import RunState, cosine_lr
from leakaudit.inversion.generator import one_hot, soft_conditioning
from leakaudit.inversion.informed import Encoder, pretrain_step
from leakaudit.inversion.interrupt import interruptible
from leakaudit.inversion.objective import Batch, objective


@dataclass
class Prior:
    """Informed mode: the prior images on the device and the encoder the generator is pre-trained with."""

    images: torch.Tensor  # (P, C, H, W) float in [0, 1]; large inputs: at the generation size (gh, gw)
    labels: torch.Tensor  # (P,)
    encoder: Encoder
    variational: bool
    at_generation_size: bool = False  # large inputs (scale.py): the generator is fitted before its up-sampling


def pretrain(run: RunState, prior: Prior) -> None:
    """Fit the generator (as the decoder of a conditional VAE / autoencoder) to the prior images."""
    gen, enc, images, labels, variational = run.gen, prior.encoder, prior.images, prior.labels, prior.variational
    config, clock, ckpt, rng = run.config, run.clock, run.ckpt, run.rng
    params = list(gen.parameters()) + list(enc.parameters())
    opt = torch.optim.Adam(params, lr=config.pretrain_lr)
    gen.train()
    enc.train()
    batch = min(config.pretrain_batch, images.shape[0])
    for step in range(config.pretrain_steps if not clock.stopped else 0):
        cosine_lr(opt, step, config.pretrain_steps, config.lr_final_fraction)
        idx = torch.randperm(images.shape[0], generator=rng)[:batch].to(images.device)
        idx = idx[clock.dist.batch_share(labels[idx])]  # this rank's share of the batch
        with interruptible(clock.stop):
            loss = pretrain_step(gen, enc, images[idx], labels[idx], variational=variational, beta=config.vae_beta,
                                 rng=rng, at_generation_size=prior.at_generation_size)
            opt.zero_grad(set_to_none=True)
            loss.backward()
        if clock.abandoned():
            break
        clock.dist.average_gradients(params, idx.shape[0] / batch)
        opt.step()
        ckpt.save(gen, clock.steps + 1, "pretrain")
        if not clock.tick({"vae": loss.detach()}):
            break


def _conditioning(targets: torch.Tensor, k: int, config: InversionConfig, rng: torch.Generator) -> torch.Tensor:
    if config.diverse:
        return soft_conditioning(targets, k, config.soft_temperature, rng)
    return one_hot(targets, k)


def train_against(run: RunState, phase: str, steps: int, lr: float, anchor: Prior | None) -> None:
    """Train the generator against the frozen classifier (optionally still reconstructing the prior)."""
    if steps <= 0:
        return
    gen, config, clock = run.gen, run.config, run.clock
    ckpt, rng, latents = run.ckpt, run.rng, run.latents
    k = gen.num_classes
    device = latents.mean.device
    params = list(gen.parameters()) + (list(anchor.encoder.parameters()) if anchor is not None else [])
    opt = torch.optim.Adam(params, lr=lr)
    gen.train()
    host_targets = torch.arange(k).repeat(config.batch_per_class)  # (B,): the conditioning is drawn on the host
    targets = host_targets.to(device)
    share = clock.dist.batch_share(targets)  # this rank's positions of the batch (all of it in one process)
    for step in range(steps if not clock.stopped else 0):
        cosine_lr(opt, step, steps, config.lr_final_fraction)
        z = latents.sample(targets.shape[0], rng)[share]  # (B_r, latent): drawn in full, so streams stay in step
        cond = _conditioning(host_targets, k, config, rng).to(device)[share]  # (B_r, K)
        with interruptible(clock.stop):
            pre = gen.low_res(z, cond)  # (B_r, C, h, w)
            loss, report = _against_loss(run, Batch(gen.upsample(pre), pre, cond, targets[share]), anchor)
            opt.zero_grad(set_to_none=True)
            loss.backward(inputs=params)
        if clock.abandoned():
            break
        clock.dist.average_gradients(params, share.shape[0] / targets.shape[0])
        opt.step()
        ckpt.save(gen, clock.steps + 1, phase)
        if not clock.tick(report):
            break


def _against_loss(run: RunState, batch: Batch, anchor: Prior | None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The objective of one batch against the classifier, plus the prior's reconstruction when anchored."""
    config, rng = run.config, run.rng
    loss, report = objective(run.target, run.weights, config, batch, rng)
    if anchor is not None and config.w_anchor:
        enc, images, labels, variational = anchor.encoder, anchor.images, anchor.labels, anchor.variational
        idx = torch.randperm(images.shape[0], generator=rng)[: config.pretrain_batch].to(run.device)
        idx = idx[run.clock.dist.batch_share(labels[idx])]
        vae = pretrain_step(run.gen, enc, images[idx], labels[idx], variational=variational, beta=config.vae_beta,
                            rng=rng, at_generation_size=anchor.at_generation_size)
        vae = vae / images[0].numel()  # per pixel, comparable to the classifier terms
        loss = loss + config.w_anchor * vae
        report["anchor"] = config.w_anchor * vae.detach()
    return loss, report
