"""Every weight and schedule of the inversion engine, in one frozen dataclass.

The defaults are engine choices, not contracts: each was chosen by
``bench/bench_inversion.py`` on the reference models in ``audits/``, and
``bench/README.md`` keeps the dated measurement behind each one. Change a
default only with a new row there.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from leakaudit.config import EFFORTS, AuditSettings
from leakaudit.errors import ConfigError

# What each effort level changes from the defaults below ("standard"). The
# planned work of an attack is a function of the inputs and the effort level
# alone: steps of every phase, the refinement pool, the candidates.
EFFORT_LEVELS: dict[str, dict[str, int]] = {
    "quick": {"steps": 200, "pretrain_steps": 250, "refine_steps": 40, "pool_per_class": 64, "kkt_steps": 100,
              "span_steps": 250, "span_starts": 64},
    "standard": {},
    "thorough": {"steps": 1500, "pretrain_steps": 2000, "refine_steps": 250, "pool_per_class": 512, "kkt_steps": 800,
                 "span_steps": 2500, "span_starts": 1000},
}
assert tuple(EFFORT_LEVELS) == EFFORTS
OBJECTIVES = ("reconstruction", "diverse")
PRIORS = ("auto", "none", "holdout")
CONDITIONINGS = ("vector", "matrix", "both")
PRETRAINS = ("vae", "ae")


@dataclass(frozen=True)
class InversionConfig:
    """Settings of one inversion run.

    ``mode`` is the objective: "reconstruction" (audits: one-hot conditioning,
    confidence, priors that single out training points) or "diverse" (the
    paper's interpretability use: soft conditioning, diversity losses, class
    galleries). ``prior`` selects the threat model: "holdout" pre-trains the
    generator on non-member images (informed), "none" uses the classifier
    alone (data-free), "auto" is informed exactly when prior images are given.
    """

    # --- run ---
    # effort, prior, seed, conditioning: an audit's run-level settings (RUN_LEVEL_INVERSION_KEYS), defaults and all
    effort: str = AuditSettings.effort  # the level the step counts came from (EFFORT_LEVELS); part of the resume key
    mode: str = "reconstruction"
    prior: str = AuditSettings.prior
    seed: int = AuditSettings.seed
    budget_s: float | None = None  # wall-clock ceiling of the whole inversion: cut short, it is incomplete
    device: str | None = None  # None: the target model's device
    threads: int | None = None  # torch CPU threads during the run (None: leave as is)
    candidates_per_class: int = 2
    checkpoint_every: int = 200  # generator checkpoint every N steps (with checkpoint_dir)

    # --- generator ---
    conditioning: str = AuditSettings.conditioning
    latent_dim: int = 32
    embed_dim: int = 32
    width: int = 64  # channels of the first (lowest-resolution) stage
    gen_scale: float = 0.25  # generation resolution relative to the model input (then bilinear up-sampling)
    min_gen_side: int = 8
    dropout: float = 0.1  # channel dropout in the low-resolution up-convolutions (diverse mode: diverse_dropout)
    diverse_dropout: float = 0.5
    soft_temperature: float = 1.0  # spread of the random soft conditioning vector (diverse mode)

    # --- data-free generator training ---
    steps: int = 600
    batch_per_class: int = 8
    lr: float = 2e-3
    lr_final_fraction: float = 0.1  # cosine decay to lr · this
    w_kl: float = 1.0
    w_ce: float = 1.0
    w_cos: float = 0.0  # diverse mode: diverse_w_cos
    w_orth: float = 0.0  # diverse mode: diverse_w_orth
    diverse_w_cos: float = 1.0
    diverse_w_orth: float = 1.0
    w_perturbed: float = 1.0  # KL + CE on perturbed copies x + ε
    perturb_sigma: float = 0.05
    perturb_shift: int = 1  # random shifts of up to this many pixels
    w_gradnorm: float = 0.0
    gradnorm_max_params: int = 3_000_000  # above this, the double-backprop prior is skipped with a note
    w_tv: float = 0.02
    w_range: float = 1.0  # out-of-range penalty of pre-activation pixels
    w_l2: float = 20.0  # norm in the classifier's normalised input space (minimum-norm prior)
    w_bn: float = 0.05
    w_margin: float = 1.0
    target_margin: float = 20.0
    # informed mode: m* = this quantile of the classifier's margins on the prior images (None: target_margin)
    prior_margin_quantile: float | None = None

    # --- candidate selection and per-sample refinement ---
    pool_per_class: int = 256  # samples drawn per class; the most confident K are kept
    refine_steps: int = 100
    refine_lr: float = 0.05
    w_refine_latent: float = 0.01  # ‖z‖² keeps refined latents where the generator was trained
    refine_pixels: bool = True  # also optimise a per-sample residual on the low-resolution pre-activations
    refine_pixel_lr: float = 0.05
    w_refine_pixel: float = 0.01  # mean squared residual
    rowspace: bool = True  # project candidates onto a fully connected first layer's learned span (rowspace.py)
    w_span: float = 300.0  # refinement: pull candidates into that span (share of energy outside it)

    # --- stationarity: the refined pixels fitted to the KKT identity of margin maximisation (stationarity.py) ---
    kkt_steps: int = 300  # 0: off
    kkt_lr: float = 0.005  # Adam rate of the pixels
    kkt_lambda_lr: float = 0.1  # Adam rate of the multipliers λ, relative to their starting scale
    kkt_lambda_min: float = 0.05  # every λ_i stays at least this share of the starting scale
    kkt_max_params: int = 3_000_000  # above this the double-backprop stage is skipped, with a note

    # --- init-aware mode: public images pushed into the first linear layer's update span (featurespan.py) ---
    span_steps: int = 400  # 0: off
    span_starts: int = 256  # the most public images to start from (8 per member, at least 64: candidates.py)
    span_lr: float = 0.05  # Adam rate of the pixels' logits

    # --- informed mode ---
    pretrain: str = "vae"
    pretrain_steps: int = 800
    pretrain_lr: float = 2e-3
    pretrain_batch: int = 64
    vae_beta: float = 1.0
    finetune_steps: int = 0  # generator fine-tuning against the classifier (measured: 0 is best, bench/README.md)
    finetune_lr: float = 5e-4
    w_anchor: float = 1.0  # keep reconstructing the prior images while fine-tuning

    def __post_init__(self) -> None:
        problems: list[str] = []
        if self.effort not in EFFORT_LEVELS:
            problems.append(f"effort must be one of {EFFORTS}, not {self.effort!r}")
        if self.mode not in OBJECTIVES:
            problems.append(f"mode must be one of {OBJECTIVES}, not {self.mode!r}")
        if self.prior not in PRIORS:
            problems.append(f"prior must be one of {PRIORS}, not {self.prior!r}")
        if self.conditioning not in CONDITIONINGS:
            problems.append(f"conditioning must be one of {CONDITIONINGS}, not {self.conditioning!r}")
        if self.pretrain not in PRETRAINS:
            problems.append(f"pretrain must be one of {PRETRAINS}, not {self.pretrain!r}")
        if self.candidates_per_class < 1:
            problems.append("candidates_per_class must be at least 1")
        if self.pool_per_class < self.candidates_per_class:
            problems.append("pool_per_class must be at least candidates_per_class")
        if self.budget_s is not None and self.budget_s <= 0:
            problems.append("budget_s must be positive")
        if not 0.0 <= self.dropout < 1.0 or not 0.0 <= self.diverse_dropout < 1.0:
            problems.append("dropout rates must lie in [0, 1)")
        if self.prior_margin_quantile is not None and not 0.0 <= self.prior_margin_quantile <= 1.0:
            problems.append("prior_margin_quantile must lie in [0, 1]")
        if not 0.0 < self.gen_scale <= 1.0:
            problems.append("gen_scale must lie in (0, 1]")
        for name in ("steps", "refine_steps", "kkt_steps", "pretrain_steps", "finetune_steps", "checkpoint_every",
                     "batch_per_class", "span_steps", "span_starts"):
            if getattr(self, name) < 0:
                problems.append(f"{name} must not be negative")
        if problems:
            raise ConfigError("invalid inversion settings: " + "; ".join(problems))

    @property
    def diverse(self) -> bool:
        return self.mode == "diverse"

    @classmethod
    def for_effort(cls, effort: str = AuditSettings.effort, **overrides: object) -> "InversionConfig":
        """The settings of an effort level, with explicit overrides on top."""
        if effort not in EFFORT_LEVELS:
            raise ConfigError(f"effort must be one of {', '.join(EFFORTS)}, not {effort!r}")
        # any field by name, each value checked by __post_init__
        values: dict[str, Any] = {**EFFORT_LEVELS[effort], **overrides, "effort": effort}
        return cls(**values)
