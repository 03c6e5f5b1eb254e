"""The inversion loop: train the conditioned generator, pick and refine candidates.

Phases (each reported through ``InversionCallbacks.on_phase``):
- data-free: "train" (the generator against the classifier), "refine";
- informed: "pretrain" (the generator on the prior images), "finetune"
  (against the classifier, still anchored to the prior), "refine".
"refine" picks and refines the candidates (refine.py); the generator's
training loops are in training.py.

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
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

from leakaudit.runtime.distributed import DistContext
from leakaudit.errors import ConfigError
from leakaudit.inversion import stationarity
from leakaudit.inversion.config import InversionConfig
from leakaudit.inversion.engine import Checkpointer, Clock, InversionCallbacks, RunState
from leakaudit.inversion.generator import ConditionalGenerator
from leakaudit.inversion.informed import Encoder, LatentGaussian, fit_latents, prepare_prior
from leakaudit.inversion.objective import resolve_weights
from leakaudit.inversion.plan import budget_message
from leakaudit.inversion.refine import confidence, margins, sample, sample_diverse, select_and_refine
from leakaudit.inversion.resume import clear_state, load_state, resume_key, save_state
from leakaudit.inversion.rowspace import first_layer_rowspace
from leakaudit.inversion.scale import large_input
from leakaudit.inversion.training import Prior, pretrain, train_against
from leakaudit.inversion.warmstart import PretrainCache, Pretrained, pretrain_key
from leakaudit.model.target import TargetModel
from leakaudit.runtime.numerics import flush_denormals, without_jit_profiling
from leakaudit.runtime.threads import torch_threads

__all__ = ["THREAT_MODELS", "InversionCallbacks", "InversionResult", "invert"]

THREAT_MODELS = {
    "data-free": "An attacker holding only the model's weights, with no data from the training distribution.",
    "informed": (
        "An attacker holding the model's weights and public images from the training distribution "
        "(part of the non-member holdout), who is never shown the training images."
    ),
}


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


@dataclass(frozen=True)
class _Request:
    """One call of ``invert``, resolved: what to invert, with what, and where its state goes."""

    target: TargetModel
    config: InversionConfig
    prior: tuple[torch.Tensor, torch.Tensor] | None
    informed: bool
    callbacks: InversionCallbacks
    checkpoint_dir: Path | None
    should_stop: Callable[[], bool] | None
    dist: DistContext
    device: torch.device
    resume_tag: str
    pretrain_cache: PretrainCache | None


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
    pretrain_cache: PretrainCache | None = None,
) -> InversionResult:
    """Invert ``target`` into K candidates per class.

    ``prior``: non-member (uint8 images (M, C, H, W), labels (M,)) for informed
    mode. Deterministic on the CPU for a fixed seed, unless the budget or
    ``should_stop`` cut the run short. ``dist``: share each generator batch
    (and the refined candidates) over the ranks of a distributed run; every
    rank returns the same result. ``resume_tag``: what else must match for a
    saved state to be resumed (the audit passes its command line).
    ``pretrain_cache``: informed pre-training already run with the same inputs
    is started from there, and this run's is kept (single process only); the
    candidates are the same either way (``warmstart.py``).
    """
    informed = _informed(config, prior)
    device = torch.device(config.device) if config.device else target.device
    with _run_context(config, device), _interpreted(target):
        dist = dist or DistContext.single(device)
        with dist.in_stage("inversion"):
            return _invert(_Request(target, config, prior, informed, callbacks or InversionCallbacks(), checkpoint_dir,
                                    should_stop, dist, device, resume_tag, pretrain_cache))


def _informed(config: InversionConfig, prior: tuple[torch.Tensor, torch.Tensor] | None) -> bool:
    if config.prior == "holdout" and prior is None:
        raise ConfigError("prior = 'holdout' (informed inversion) needs non-member prior images")
    return prior is not None and config.prior in ("auto", "holdout")


@contextlib.contextmanager
def _run_context(config: InversionConfig, device: torch.device) -> Iterator[None]:
    """Seeded RNG forked from the caller's, flushed denormals, chosen thread count; all restored after."""
    cuda = [device.index or 0] if device.type == "cuda" else []
    threads = config.threads or torch.get_num_threads()
    # near-zero-loss models produce denormals: ~9× slower steps without flushing
    with torch.random.fork_rng(devices=cuda), flush_denormals(), torch_threads(threads):
        torch.manual_seed(config.seed)
        yield


def _interpreted(target: TargetModel) -> contextlib.AbstractContextManager[None]:
    """Large inputs: TorchScript classifiers run without the graph executor's profiling and re-optimisation.

    Its passes re-specialise the graph for every new batch shape and differentiate it symbolically; on
    ResNet-18 at 224×224 that made refinement steps many times a plain forward+backward (the control's
    training turns them off for the same reason). Gated on the input size (scale.py): below it nothing changes.
    """
    if large_input(target.input_shape):
        return without_jit_profiling()
    return contextlib.nullcontext()


def _new_run(req: _Request, notes: list[str]) -> RunState:
    """The generator, the clock of the planned phases and the starting latents of one run."""
    config, target, device = req.config, req.target, req.device
    rng = torch.Generator().manual_seed(config.seed)
    weights = resolve_weights(config, target, notes)
    gen = ConditionalGenerator(
        target.input_shape, target.num_classes, latent_dim=config.latent_dim, embed_dim=config.embed_dim,
        width=config.width, conditioning=config.conditioning,
        dropout=config.diverse_dropout if config.diverse else config.dropout,
        gen_scale=config.gen_scale, min_gen_side=config.min_gen_side,
    ).to(device)
    refine = 0 if config.diverse else config.refine_steps
    reason = stationarity.skip_reason(target, config, req.dist.is_distributed)
    if reason is not None:
        notes.append(f"stationarity (KKT) stage skipped: {reason}")
    settle = [("stationarity", stationarity.planned_steps(target, config, req.dist.is_distributed))]
    if req.informed:
        phases = [("pretrain", config.pretrain_steps), ("finetune", config.finetune_steps), ("refine", refine)]
    else:
        phases = [("train", config.steps), ("refine", refine)]
    phases += settle
    clock = Clock(config, phases, req.callbacks, req.should_stop, req.dist)
    warning = budget_message(target, config, req.informed, dict(settle)["stationarity"], torch.get_num_threads())
    if warning is not None and req.callbacks.on_phase:  # before the first step (progress only, not the document)
        req.callbacks.on_phase(warning)
    if req.callbacks.on_start:
        req.callbacks.on_start(clock.planned)
    latents = LatentGaussian(torch.zeros(config.latent_dim, device=device),
                             torch.ones(config.latent_dim, device=device))
    return RunState(target, config, weights, gen, clock, Checkpointer(req.checkpoint_dir, config), rng, device, latents)


class _Resume:
    """The saved state of an interrupted run with the same inputs (single process), and saving the next one."""

    def __init__(self, req: _Request, run: RunState) -> None:
        self.folder = (Path(req.checkpoint_dir) if req.checkpoint_dir is not None and not req.dist.is_distributed
                       else None)
        self.key = resume_key(req.target, req.config, req.prior, req.resume_tag) if self.folder is not None else ""
        self.state = load_state(self.folder, self.key)
        self.run = run
        self.callbacks = req.callbacks
        self.pretrained: tuple[torch.Tensor, torch.Tensor] | None = None

    @property
    def next_phase(self) -> str | None:
        return None if self.state is None else str(self.state["next_phase"])

    def boundary(self, next_phase: str, enc: Encoder | None) -> None:
        run, pretrained = self.run, self.pretrained
        save_state(self.folder, self.key, next_phase, {
            "generator": run.gen.state_dict(), "encoder": enc.state_dict() if enc is not None else None,
            "rng": run.rng.get_state(), "torch_rng": torch.get_rng_state(), "steps": run.clock.steps,
            "latent_mean": run.latents.mean.cpu(), "latent_std": run.latents.std.cpu(),
            "pretrained": None if pretrained is None else (pretrained[0].cpu(), pretrained[1].cpu()),
        })

    def restore(self, enc: Encoder | None) -> None:
        run, state, device = self.run, self.state, self.run.device
        assert state is not None
        run.gen.load_state_dict(state["generator"])
        if enc is not None and state["encoder"] is not None:
            enc.load_state_dict(state["encoder"])
        run.rng.set_state(state["rng"])
        torch.set_rng_state(state["torch_rng"])
        run.clock.steps = int(state["steps"])
        run.latents = LatentGaussian(state["latent_mean"].to(device), state["latent_std"].to(device))
        if state["pretrained"] is not None:
            self.pretrained = (state["pretrained"][0].to(device), state["pretrained"][1].to(device))
        if self.callbacks.on_phase:
            self.callbacks.on_phase(f"resumed from the checkpoint, at {state['next_phase']}")


def _completed(run: RunState, phase_start: int, planned: int) -> bool:
    return not run.clock.stopped and run.clock.steps - phase_start >= planned


def _load_prior(req: _Request, run: RunState, notes: list[str]) -> Prior:
    """The prior images on the device, the margin target they imply, and a fresh encoder."""
    assert req.prior is not None
    config, target, k = req.config, req.target, req.target.num_classes
    images, labels = prepare_prior(req.prior[0], req.prior[1], target.input_shape, k, req.device)
    missing = sorted(set(range(k)) - set(labels.unique().tolist()))
    if missing:
        notes.append(f"the prior has no images of class(es) {missing}: their candidates rest on the classifier alone")
    if config.prior_margin_quantile is not None and run.weights.margin:
        m_star = max(1.0, float(margins(target, images, labels).quantile(config.prior_margin_quantile)))
        run.weights = dataclasses.replace(run.weights, target_margin=m_star)
        notes.append(f"margin target {m_star:.2f}: the {config.prior_margin_quantile:.0%} quantile "
                     "of the prior images' margins")
    encoder = Encoder(target.input_shape, k, config.latent_dim).to(req.device)
    at_gen = large_input(target.input_shape)
    if at_gen:  # the generator makes its images at gen_size: fit it there, not through the up-sampling
        images = F.interpolate(images, size=run.gen.gen_size, mode="area")
    return Prior(images, labels, encoder, config.pretrain == "vae", at_gen)


def _informed_phases(req: _Request, run: RunState, resume: _Resume, notes: list[str]) -> None:
    """Pre-train the generator on the prior, then fine-tune it against the classifier."""
    config, dist = run.config, req.dist
    prior = _load_prior(req, run, notes)
    if resume.state is not None:
        resume.restore(prior.encoder)
    else:
        run.clock.enter("pretrain")
        start = run.clock.steps
        cache = req.pretrain_cache if not dist.is_distributed and req.prior is not None else None
        key = pretrain_key(config, run.target.input_shape, run.num_classes, req.prior, run.device) \
            if cache is not None and req.prior is not None else ""
        reused = cache.get(key) if cache is not None else None
        if reused is not None:
            _start_from(run, prior, reused)
        else:
            pretrain(run, prior)
            dist.sync_buffers(run.gen)
            dist.sync_buffers(prior.encoder)
            run.latents = fit_latents(prior.encoder, prior.images, prior.labels, prior.variational)
            if cache is not None and _completed(run, start, config.pretrain_steps):
                cache.put(Pretrained.capture(key, run.gen, prior.encoder, run.rng, run.latents.mean,
                                             run.latents.std, run.clock.steps - start, run.device))
        resume.pretrained = sample(run.gen, run.latents, run.num_classes, config.candidates_per_class, run.rng,
                                   run.device)
        if _completed(run, start, config.pretrain_steps):
            resume.boundary("finetune", prior.encoder)
    if resume.next_phase in (None, "finetune"):
        run.clock.enter("finetune")
        start = run.clock.steps
        train_against(run, "finetune", config.finetune_steps, config.finetune_lr, anchor=prior)
        if _completed(run, start, config.finetune_steps):
            resume.boundary("refine", prior.encoder)


def _start_from(run: RunState, prior: Prior, reused: Pretrained) -> None:
    """Take a cached pre-training's end state as this run's: its steps count as done."""
    reused.restore(run.gen, prior.encoder, run.rng, run.device)
    run.latents = LatentGaussian(reused.latent_mean.to(run.device), reused.latent_std.to(run.device))
    run.clock.steps += reused.steps
    if run.clock.callbacks.on_phase:
        run.clock.callbacks.on_phase("pretrain: the same as the attack's, reused")


def _data_free_phases(run: RunState, resume: _Resume) -> None:
    """Train the generator against the classifier alone."""
    if resume.state is not None:
        resume.restore(None)
        return
    run.clock.enter("train")
    start = run.clock.steps
    train_against(run, "train", run.config.steps, run.config.lr, anchor=None)
    if _completed(run, start, run.config.steps):
        resume.boundary("refine", None)


def _candidates(run: RunState, notes: list[str]) -> tuple[torch.Tensor, torch.Tensor, dict[int, list[int]] | None]:
    """The final candidates: refined (reconstruction) or soft-conditioned galleries (diverse)."""
    if run.config.diverse:
        run.clock.enter("sample")
        images, targets = sample_diverse(run.gen, run.latents, run.num_classes, run.config, run.rng, run.device)
        return images, targets, {c: torch.nonzero(targets == c).flatten().tolist() for c in range(run.num_classes)}
    run.clock.enter("refine")
    space = None
    if run.config.rowspace:
        space, note = first_layer_rowspace(run.target)
        notes.append(note)
    images, targets = select_and_refine(run, space)
    if run.clock.phases["stationarity"]:
        run.clock.enter("stationarity")
        settled = stationarity.fit(run, images, targets)
        # Both sets are candidates: the stage helps models trained into the KKT regime and
        # blurs members on the others (bench/README.md), and nothing here can tell which.
        if settled is not None:
            images, targets = torch.cat([images, settled]), torch.cat([targets, targets])
    return images, targets, None


def _invert(req: _Request) -> InversionResult:
    notes: list[str] = []
    run = _new_run(req, notes)
    resume = _Resume(req, run)
    resumed_from = resume.next_phase
    if req.informed:
        _informed_phases(req, run, resume, notes)
    else:
        _data_free_phases(run, resume)
    req.dist.sync_buffers(run.gen)  # BatchNorm statistics tracked per rank: one generator for sampling
    run.ckpt.save(run.gen, run.clock.steps, "final", force=True)
    images_out, targets, gallery = _candidates(run, notes)
    # an interrupted run is not read (the audit stops): no classifier pass to score it, not even at 224×224
    conf = torch.full(targets.shape, float("nan")) if run.clock.interrupted else confidence(req.target, images_out,
                                                                                             targets)
    clock = run.clock
    clock.finish()
    complete = not clock.stopped and clock.steps >= clock.planned
    if not clock.interrupted:
        clear_state(resume.folder)  # only an interrupted run is resumed; a finished one (complete or not) starts afresh
    if not complete:
        notes.append(f"stopped early after {clock.steps} of {clock.planned} steps ({clock.elapsed():.1f} s)")
    mode = "informed" if req.informed else "data-free"
    pretrained = resume.pretrained
    return InversionResult(
        images=images_out.detach().float().cpu(), targets=targets.cpu(), confidence=conf.cpu(), mode=mode,
        threat_model=THREAT_MODELS[mode], steps=clock.steps, planned_steps=clock.planned, seconds=clock.elapsed(),
        completed_fraction=min(1.0, clock.steps / max(1, clock.planned)), notes=notes, gallery=gallery,
        pretrained_images=None if pretrained is None else pretrained[0].cpu(),
        pretrained_targets=None if pretrained is None else pretrained[1].cpu(), losses=dict(clock.last),
        complete=complete, interrupted=clock.interrupted, resumed_from=resumed_from,
        phase_seconds={k: round(v, 3) for k, v in clock.phase_seconds.items()},
    )
