"""The inversion loop: train the conditioned generator, pick and refine candidates.

Phases (each reported through ``InversionCallbacks.on_phase``):
- data-free: "train" (the generator against the classifier), "refine";
- informed: "pretrain" (the generator on the prior images), "finetune"
  (against the classifier, still anchored to the prior), "refine".
"refine" draws ``pool_per_class`` samples per class, keeps the
``candidates_per_class`` the classifier is most sure of (largest logit margin)
and optimises their latents against the same objective; when the classifier's
first layer is fully connected with a low-rank learned span (rowspace.py), the
candidates are also pulled into that span and projected onto it.

The planned work (every phase's steps, the pool, the candidates) is fixed by
the settings alone, never by the clock. The wall-clock budget is only a
ceiling: when it runs out (or ``should_stop`` says so) the loop stops, still
returns candidates, and reports ``complete = False``; the caller must not
read an unfinished attack as a clean result. The engine never prints:
progress goes to callbacks.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

from leakaudit.distributed import DistContext
from leakaudit.errors import ConfigError
from leakaudit.inversion.config import InversionConfig
from leakaudit.inversion.generator import ConditionalGenerator, soft_conditioning
from leakaudit.inversion.informed import Encoder, LatentGaussian, fit_latents, prepare_prior, pretrain_step
from leakaudit.inversion.objective import Weights, objective, resolve_weights
from leakaudit.inversion.resume import clear_state, load_state, resume_key, save_state
from leakaudit.inversion.rowspace import RowSpace, first_layer_rowspace
from leakaudit.models import TargetModel
from leakaudit.numerics import flush_denormals

THREAT_MODELS = {
    "data-free": "An attacker holding only the model's weights, with no data from the training distribution.",
    "informed": (
        "An attacker holding the model's weights and public images from the training distribution "
        "(part of the non-member holdout), who is never shown the training images."
    ),
}

@dataclass
class InversionCallbacks:
    """Observers of a run; any may be None."""

    on_start: Callable[[int], None] | None = None  # planned steps
    on_step: Callable[[int, int, dict[str, float]], None] | None = None  # step, planned, losses
    on_phase: Callable[[str], None] | None = None


@dataclass
class InversionResult:
    """Candidates of one inversion run, in [0, 1] pixels."""

    images: torch.Tensor  # (N, C, H, W) float32 in [0, 1]
    targets: torch.Tensor  # (N,) int64
    confidence: torch.Tensor  # (N,) float32: softmax probability of the target
    mode: str  # "data-free" | "informed"
    threat_model: str
    steps: int
    planned_steps: int
    seconds: float
    completed_fraction: float
    notes: list[str] = field(default_factory=list)
    gallery: dict[int, list[int]] | None = None
    pretrained_images: torch.Tensor | None = None  # (N, C, H, W): informed generator before fine-tuning
    pretrained_targets: torch.Tensor | None = None  # (N,)
    losses: dict[str, float] = field(default_factory=dict)  # last reported loss terms
    complete: bool = True  # every planned step ran (no budget ceiling, no stop request)
    interrupted: bool = False  # stopped by should_stop (a signal), not by the budget
    resumed_from: str | None = None  # the phase an interrupted run was resumed at, if any
    phase_seconds: dict[str, float] = field(default_factory=dict)  # wall time of each phase


class _Clock:
    """Steps, the budget ceiling and stop requests of one run; the only place that calls the callbacks."""

    def __init__(self, config: InversionConfig, phases: list[tuple[str, int]], callbacks: InversionCallbacks,
                 should_stop: Callable[[], bool] | None, dist: DistContext) -> None:
        self.config = config
        self.dist = dist
        self.phases = dict(phases)
        self.planned = sum(n for _, n in phases)
        self.callbacks = callbacks
        self.should_stop = should_stop
        self.start = time.monotonic()
        self.steps = 0
        self.stopped = False
        self.interrupted = False  # stopped by should_stop (a signal), not by the budget
        self.last: dict[str, float] = {}
        self.phase_seconds: dict[str, float] = {}
        self._phase: tuple[str, float] | None = None

    def elapsed(self) -> float:
        return time.monotonic() - self.start

    def enter(self, name: str) -> None:
        """Start a phase (its time is recorded); the budget is one ceiling for the whole run."""
        self._close_phase()
        self._phase = (name, time.monotonic())
        if self.callbacks.on_phase:
            self.callbacks.on_phase(name)

    def _close_phase(self) -> None:
        if self._phase is not None:
            name, began = self._phase
            self.phase_seconds[name] = self.phase_seconds.get(name, 0.0) + time.monotonic() - began
            self._phase = None

    def finish(self) -> None:
        self._close_phase()

    def tick(self, losses: dict[str, float]) -> bool:
        """Count a step; False when the run must end (budget ceiling, stop request)."""
        self.steps += 1
        self.last = losses
        if self.callbacks.on_step:
            self.callbacks.on_step(self.steps, self.planned, losses)
        asked = self.should_stop is not None and self.should_stop()
        over = self.config.budget_s is not None and self.elapsed() >= self.config.budget_s
        # Ranks agree on the decision, so they always run the same number of collectives.
        self.interrupted, over = self.dist.any_flags(self.interrupted or asked, over)
        self.stopped = self.stopped or self.interrupted or over
        return not self.stopped


def invert(
    target: TargetModel,
    config: InversionConfig,
    *,
    prior: tuple[torch.Tensor, torch.Tensor] | None = None,
    callbacks: InversionCallbacks | None = None,
    checkpoint_dir: Path | None = None,
    should_stop: Callable[[], bool] | None = None,
    dist: DistContext | None = None,
    resume_tag: str = "",
) -> InversionResult:
    """Invert ``target`` into K candidates per class.

    ``prior``: non-member (uint8 images (M, C, H, W), labels (M,)) for informed
    mode. Deterministic on the CPU for a fixed seed, unless the budget or
    ``should_stop`` cut the run short. ``dist``: share each generator batch
    (and the refined candidates) over the ranks of a distributed run; every
    rank returns the same result. ``resume_tag``: what else must match for a
    saved state to be resumed (the audit passes its command line).
    """
    informed = _informed(config, prior)
    device = torch.device(config.device) if config.device else target.device
    with _run_context(config, device):
        dist = dist or DistContext.single(device)
        with dist.in_stage("inversion"):
            return _invert(target, config, informed, prior, callbacks or InversionCallbacks(), checkpoint_dir,
                           should_stop, device, dist, resume_tag)


def _informed(config: InversionConfig, prior: tuple[torch.Tensor, torch.Tensor] | None) -> bool:
    if config.prior == "holdout" and prior is None:
        raise ConfigError("prior = 'holdout' (informed inversion) needs non-member prior images")
    return prior is not None and config.prior in ("auto", "holdout")


@contextlib.contextmanager
def _run_context(config: InversionConfig, device: torch.device) -> Iterator[None]:
    """Seeded RNG forked from the caller's, flushed denormals, chosen thread count; all restored after."""
    threads = torch.get_num_threads()
    cuda = [device.index or 0] if device.type == "cuda" else []
    # near-zero-loss models produce denormals: ~9× slower steps without flushing
    with torch.random.fork_rng(devices=cuda), flush_denormals():
        torch.manual_seed(config.seed)
        if config.threads:
            torch.set_num_threads(config.threads)
        try:
            yield
        finally:
            torch.set_num_threads(threads)


def _invert(target: TargetModel, config: InversionConfig, informed: bool, prior: tuple[torch.Tensor, torch.Tensor] | None,
            callbacks: InversionCallbacks, checkpoint_dir: Path | None, should_stop: Callable[[], bool] | None,
            device: torch.device, dist: DistContext, resume_tag: str = "") -> InversionResult:
    rng = torch.Generator().manual_seed(config.seed)
    notes: list[str] = []
    weights = resolve_weights(config, target, notes)
    shape, k = target.input_shape, target.num_classes
    gen = ConditionalGenerator(
        shape, k, latent_dim=config.latent_dim, embed_dim=config.embed_dim, width=config.width,
        conditioning=config.conditioning, dropout=config.diverse_dropout if config.diverse else config.dropout,
        gen_scale=config.gen_scale, min_gen_side=config.min_gen_side,
    ).to(device)
    refine = 0 if config.diverse else config.refine_steps
    if informed:
        phases = [("pretrain", config.pretrain_steps), ("finetune", config.finetune_steps), ("refine", refine)]
    else:
        phases = [("train", config.steps), ("refine", refine)]
    clock = _Clock(config, phases, callbacks, should_stop, dist)
    if callbacks.on_start:
        callbacks.on_start(clock.planned)
    ckpt = _Checkpointer(checkpoint_dir, config)
    pretrained: tuple[torch.Tensor, torch.Tensor] | None = None
    latents = LatentGaussian(torch.zeros(config.latent_dim, device=device), torch.ones(config.latent_dim, device=device))
    # Resume from the last completed phase of an interrupted run with the same inputs (single process).
    folder = Path(checkpoint_dir) if checkpoint_dir is not None and not dist.is_distributed else None
    key = resume_key(target, config, prior, resume_tag) if folder is not None else ""
    resumed = load_state(folder, key)
    enc: Encoder | None = None

    def boundary(next_phase: str) -> None:
        save_state(folder, key, next_phase, {
            "generator": gen.state_dict(), "encoder": enc.state_dict() if enc is not None else None,
            "rng": rng.get_state(), "torch_rng": torch.get_rng_state(), "steps": clock.steps,
            "latent_mean": latents.mean.cpu(), "latent_std": latents.std.cpu(),
            "pretrained": None if pretrained is None else (pretrained[0].cpu(), pretrained[1].cpu()),
        })

    def restore(state: dict) -> None:
        nonlocal latents, pretrained
        gen.load_state_dict(state["generator"])
        if enc is not None and state["encoder"] is not None:
            enc.load_state_dict(state["encoder"])
        rng.set_state(state["rng"])
        torch.set_rng_state(state["torch_rng"])
        clock.steps = int(state["steps"])
        latents = LatentGaussian(state["latent_mean"].to(device), state["latent_std"].to(device))
        if state["pretrained"] is not None:
            pretrained = (state["pretrained"][0].to(device), state["pretrained"][1].to(device))
        if callbacks.on_phase:
            callbacks.on_phase(f"resumed from the checkpoint, at {state['next_phase']}")

    def completed(phase_start: int, planned: int) -> bool:
        return not clock.stopped and clock.steps - phase_start >= planned

    if informed:
        assert prior is not None
        images, labels = prepare_prior(prior[0], prior[1], shape, k, device)
        missing = sorted(set(range(k)) - set(labels.unique().tolist()))
        if missing:
            notes.append(f"the prior has no images of class(es) {missing}: their candidates rest on the classifier alone")
        if config.prior_margin_quantile is not None and weights.margin:
            m_star = max(1.0, float(_margins(target, images, labels).quantile(config.prior_margin_quantile)))
            weights = dataclasses.replace(weights, target_margin=m_star)
            notes.append(f"margin target {m_star:.2f}: the {config.prior_margin_quantile:.0%} quantile of the prior images' margins")
        enc = Encoder(shape, k, config.latent_dim).to(device)
        variational = config.pretrain == "vae"
        if resumed is not None:
            restore(resumed)
        else:
            clock.enter("pretrain")
            start = clock.steps
            _pretrain(gen, enc, images, labels, config, clock, ckpt, rng, variational)
            dist.sync_buffers(gen)
            dist.sync_buffers(enc)
            latents = fit_latents(enc, images, labels, variational)
            pretrained = _sample(gen, latents, k, config.candidates_per_class, rng, device)
            if completed(start, config.pretrain_steps):
                boundary("finetune")
        if resumed is None or resumed["next_phase"] == "finetune":
            clock.enter("finetune")
            start = clock.steps
            _train_against(gen, target, weights, config, clock, ckpt, rng, latents, config.finetune_steps,
                           config.finetune_lr, anchor=(enc, images, labels, variational), phase="finetune")
            if completed(start, config.finetune_steps):
                boundary("refine")
    else:
        if resumed is not None:
            restore(resumed)
        else:
            clock.enter("train")
            start = clock.steps
            _train_against(gen, target, weights, config, clock, ckpt, rng, latents, config.steps, config.lr,
                           anchor=None, phase="train")
            if completed(start, config.steps):
                boundary("refine")
    dist.sync_buffers(gen)  # BatchNorm statistics tracked per rank: one generator for sampling
    ckpt.save(gen, clock.steps, "final", force=True)
    gallery = None
    if config.diverse:
        clock.enter("sample")
        images_out, targets = _sample_diverse(gen, latents, k, config, rng, device)
        gallery = {c: torch.nonzero(targets == c).flatten().tolist() for c in range(k)}
    else:
        clock.enter("refine")
        space = None
        if config.rowspace:
            space, note = first_layer_rowspace(target)
            notes.append(note)
        images_out, targets = _select_and_refine(gen, target, weights, config, clock, rng, latents, device, space)
    confidence = _confidence(target, images_out, targets)
    clock.finish()
    complete = not clock.stopped and clock.steps >= clock.planned
    if not clock.interrupted:
        clear_state(folder)  # only an interrupted run is resumed; a finished one (complete or not) starts afresh
    if not complete:
        notes.append(f"stopped early after {clock.steps} of {clock.planned} steps ({clock.elapsed():.1f} s)")
    mode = "informed" if informed else "data-free"
    return InversionResult(
        images=images_out.detach().float().cpu(), targets=targets.cpu(), confidence=confidence.cpu(), mode=mode,
        threat_model=THREAT_MODELS[mode], steps=clock.steps, planned_steps=clock.planned, seconds=clock.elapsed(),
        completed_fraction=min(1.0, clock.steps / max(1, clock.planned)), notes=notes, gallery=gallery,
        pretrained_images=None if pretrained is None else pretrained[0].cpu(),
        pretrained_targets=None if pretrained is None else pretrained[1].cpu(), losses=dict(clock.last),
        complete=complete, interrupted=clock.interrupted,
        resumed_from=None if resumed is None else str(resumed["next_phase"]),
        phase_seconds={k: round(v, 3) for k, v in clock.phase_seconds.items()},
    )


class _Checkpointer:
    """Writes ``generator.pt`` into the checkpoint folder every N steps (atomically)."""

    def __init__(self, folder: Path | None, config: InversionConfig) -> None:
        self.folder = Path(folder) if folder is not None else None
        self.every = config.checkpoint_every
        self.config = asdict(config)

    def save(self, gen: ConditionalGenerator, step: int, phase: str, force: bool = False) -> None:
        if self.folder is None or (not force and (self.every <= 0 or step % self.every)):
            return
        self.folder.mkdir(parents=True, exist_ok=True)
        path = self.folder / "generator.pt"
        tmp = path.with_suffix(".pt.tmp")
        torch.save({"generator": gen.state_dict(), "step": step, "phase": phase, "config": self.config}, tmp)
        os.replace(tmp, path)


def _cosine_lr(opt: torch.optim.Optimizer, step: int, total: int, final_fraction: float) -> None:
    """Cosine decay of every parameter group's rate, from the rate it was created with to final_fraction of it."""
    t = min(1.0, step / max(1, total))
    factor = final_fraction + (1 - final_fraction) * 0.5 * (1 + math.cos(math.pi * t))
    for group in opt.param_groups:
        group["lr"] = group.setdefault("initial_lr", group["lr"]) * factor


def _pretrain(gen: ConditionalGenerator, enc: Encoder, images: torch.Tensor, labels: torch.Tensor, config: InversionConfig,
              clock: _Clock, ckpt: _Checkpointer, rng: torch.Generator, variational: bool) -> None:
    """Fit the generator (as the decoder of a conditional VAE / autoencoder) to the prior images."""
    params = list(gen.parameters()) + list(enc.parameters())
    opt = torch.optim.Adam(params, lr=config.pretrain_lr)
    gen.train()
    enc.train()
    batch = min(config.pretrain_batch, images.shape[0])
    for step in range(config.pretrain_steps if not clock.stopped else 0):
        _cosine_lr(opt, step, config.pretrain_steps, config.lr_final_fraction)
        idx = torch.randperm(images.shape[0], generator=rng)[:batch].to(images.device)
        idx = idx[clock.dist.batch_share(labels[idx])]  # this rank's share of the batch
        loss = pretrain_step(gen, enc, images[idx], labels[idx], variational=variational, beta=config.vae_beta, rng=rng)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        clock.dist.average_gradients(params, idx.shape[0] / batch)
        opt.step()
        ckpt.save(gen, clock.steps + 1, "pretrain")
        if not clock.tick({"vae": float(loss.detach())}):
            break


def _conditioning(targets: torch.Tensor, k: int, config: InversionConfig, rng: torch.Generator) -> torch.Tensor:
    if config.diverse:
        return soft_conditioning(targets, k, config.soft_temperature, rng)
    return F.one_hot(targets, k).float()


def _train_against(gen: ConditionalGenerator, target: TargetModel, weights: Weights, config: InversionConfig, clock: _Clock,
                   ckpt: _Checkpointer, rng: torch.Generator, latents: LatentGaussian, steps: int, lr: float,
                   anchor: tuple[Encoder, torch.Tensor, torch.Tensor, bool] | None, phase: str) -> None:
    """Train the generator against the frozen classifier (optionally still reconstructing the prior)."""
    if steps <= 0:
        return
    k = gen.num_classes
    device = latents.mean.device
    params = list(gen.parameters()) + (list(anchor[0].parameters()) if anchor is not None else [])
    opt = torch.optim.Adam(params, lr=lr)
    gen.train()
    targets = torch.arange(k, device=device).repeat(config.batch_per_class)  # (B,)
    share = clock.dist.batch_share(targets)  # this rank's positions of the batch (all of it in one process)
    for step in range(steps if not clock.stopped else 0):
        _cosine_lr(opt, step, steps, config.lr_final_fraction)
        z = latents.sample(targets.shape[0], rng)[share]  # (B_r, latent): drawn in full, so streams stay in step
        cond = _conditioning(targets, k, config, rng).to(device)[share]  # (B_r, K)
        pre = gen.low_res(z, cond)  # (B_r, C, h, w)
        x = gen.upsample(pre)  # (B_r, C, H, W)
        loss, report = objective(target, weights, config, x, pre, cond, targets[share], rng)
        if anchor is not None and config.w_anchor:
            enc, images, labels, variational = anchor
            idx = torch.randperm(images.shape[0], generator=rng)[: config.pretrain_batch].to(device)
            idx = idx[clock.dist.batch_share(labels[idx])]
            vae = pretrain_step(gen, enc, images[idx], labels[idx], variational=variational, beta=config.vae_beta, rng=rng)
            vae = vae / images[0].numel()  # per pixel, comparable to the classifier terms
            loss = loss + config.w_anchor * vae
            report["anchor"] = float(config.w_anchor * vae.detach())
        opt.zero_grad(set_to_none=True)
        loss.backward(inputs=params)
        clock.dist.average_gradients(params, share.shape[0] / targets.shape[0])
        opt.step()
        ckpt.save(gen, clock.steps + 1, phase)
        if not clock.tick(report):
            break


@torch.no_grad()
def _sample(gen: ConditionalGenerator, latents: LatentGaussian, k: int, per_class: int, rng: torch.Generator,
            device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Plain samples, per_class of each class (one-hot conditioning): (N, C, H, W), (N,)."""
    gen.eval()
    targets = torch.arange(k, device=device).repeat_interleave(per_class)
    z = latents.sample(targets.shape[0], rng)
    images = gen(z, F.one_hot(targets, k).float())
    gen.train()
    return images, targets


@torch.no_grad()
def _sample_diverse(gen: ConditionalGenerator, latents: LatentGaussian, k: int, config: InversionConfig, rng: torch.Generator,
                    device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Diverse mode: soft-conditioned samples, K per class, for the class galleries."""
    gen.eval()
    targets = torch.arange(k, device=device).repeat_interleave(config.candidates_per_class)
    z = latents.sample(targets.shape[0], rng)
    images = gen(z, soft_conditioning(targets, k, config.soft_temperature, rng).to(device))
    return images, targets


@torch.no_grad()
def _margins(target: TargetModel, images: torch.Tensor, targets: torch.Tensor, chunk: int = 256) -> torch.Tensor:
    """(N,) logit margin f_y − max_{k≠y} f_k of each image."""
    out = []
    for i in range(0, images.shape[0], chunk):
        logits = target.logits(images[i : i + chunk])
        t = targets[i : i + chunk, None]
        own = logits.gather(1, t).squeeze(1)
        out.append(own - logits.scatter(1, t, float("-inf")).max(1).values)
    return torch.cat(out)


@torch.no_grad()
def _confidence(target: TargetModel, images: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    probs = torch.softmax(target.logits(images.to(target.device)), dim=1)
    return probs.gather(1, targets.to(target.device)[:, None]).squeeze(1).float()


def _select_and_refine(gen: ConditionalGenerator, target: TargetModel, weights: Weights, config: InversionConfig, clock: _Clock,
                       rng: torch.Generator, latents: LatentGaussian, device: torch.device,
                       space: RowSpace | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Keep the K most confident of a pool per class, then optimise their latents against the objective.

    With a row space, candidates are projected onto it in every step (and at the end).
    """
    k, per = gen.num_classes, config.candidates_per_class
    gen.eval()
    chosen_z, chosen_t = [], []
    with torch.no_grad():
        for c in range(k):
            t = torch.full((config.pool_per_class,), c, device=device, dtype=torch.long)
            z = latents.sample(config.pool_per_class, rng)  # (P, latent)
            margins = _margins(target, gen(z, F.one_hot(t, k).float()), t)
            chosen_z.append(z[margins.argsort(descending=True)[:per]])
            chosen_t.append(t[:per])
    all_targets = torch.cat(chosen_t)  # (N,): chosen alike on every rank
    share = clock.dist.batch_share(all_targets)  # each rank refines its share of the candidates
    weight = share.shape[0] / all_targets.shape[0]  # gradients as in the full batch
    z = torch.cat(chosen_z)[share].clone().requires_grad_(True)  # (N_r, latent)
    targets = all_targets[share]  # (N_r,)
    cond = F.one_hot(targets, k).float()
    # a per-sample residual on the low-resolution pre-activations (zero: off)
    delta = torch.zeros(z.shape[0], gen.out_shape[0], *gen.gen_size, device=device, requires_grad=True)  # (N, C, gh, gw)
    variables = [z, delta] if config.refine_pixels else [z]
    for p in gen.parameters():
        p.requires_grad_(False)
    opt = torch.optim.Adam([{"params": [z], "lr": config.refine_lr}] +
                           ([{"params": [delta], "lr": config.refine_pixel_lr}] if config.refine_pixels else []))
    for step in range(config.refine_steps if not clock.stopped else 0):
        _cosine_lr(opt, step, config.refine_steps, config.lr_final_fraction)
        pre = gen.low_res(z, cond) + delta
        raw = gen.upsample(pre)
        x = _projected(raw, space)
        loss, report = objective(target, weights, config, x, pre, cond, targets, rng)
        if space is not None and config.w_span:
            outside = space.outside_fraction(raw).mean()
            loss = loss + config.w_span * outside
            report["span"] = float(config.w_span * outside.detach())
        if config.w_refine_latent:
            prior = latents.standardise(z).pow(2).mean()
            loss = loss + config.w_refine_latent * prior
            report["latent"] = float(config.w_refine_latent * prior.detach())
        if config.refine_pixels and config.w_refine_pixel:
            shift = delta.pow(2).mean()
            loss = loss + config.w_refine_pixel * shift
            report["pixel_shift"] = float(config.w_refine_pixel * shift.detach())
        opt.zero_grad(set_to_none=True)
        (loss * weight).backward(inputs=variables)
        opt.step()
        if not clock.tick(report):
            break
    for p in gen.parameters():
        p.requires_grad_(True)
    with torch.no_grad():
        images = _projected(gen.upsample(gen.low_res(z, cond) + delta), space)
        return clock.dist.gather_rows(images, share, all_targets.shape[0]), all_targets


def _projected(images: torch.Tensor, space: RowSpace | None) -> torch.Tensor:
    """Generator images in [0, 1], projected onto the row space if there is one (and clamped back into [0, 1])."""
    return images if space is None else space.project(images).clamp(0.0, 1.0)
