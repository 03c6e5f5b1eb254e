"""The audit's settings: one frozen dataclass whose fields say how each setting is offered.

Every field a user sets carries a ``Meta``: its help text, its ``run --help``
group, the kind of value it takes and its flag. From it the CLI builds its
click options, the ``[tool.leakaudit]`` keys follow from the flags, and
``leakaudit.audit()`` takes the same names as keywords; each default is the
field's default and written nowhere else. The gate's thresholds are offered
the same way (``GATE_OPTIONS``) with their defaults left to ``GateSettings``.
This module imports neither click nor torch: the library never sees the CLI.
"""

from __future__ import annotations

import functools
from dataclasses import MISSING, Field, dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

from leakaudit.config.kinds import Choice, Flag, Floats, Function, IntPair, Kind, Number, PathKind, Text
from leakaudit.gate.settings import GateSettings

if TYPE_CHECKING:
    from leakaudit.report.images import Redaction

GROUPS = ("Inputs", "Model", "Gate", "Outputs", "Inversion", "Run")  # the order of `run --help`'s sections
EFFORTS = ("quick", "standard", "thorough")  # the step counts of each: leakaudit.inversion.config.EFFORT_LEVELS
# [tool.leakaudit.inversion] keys the run level owns (engine field → run setting): one value for the whole run.
RUN_LEVEL_INVERSION_KEYS = {"seed": "seed", "budget_s": "budget", "conditioning": "conditioning",
                            "effort": "effort", "prior": "prior"}
PRINTS_ONLY = "it only changes what the CLI prints"


@dataclass(frozen=True)
class Meta:
    """How one setting is offered: the flag, the file key and the keyword all follow from this."""

    help: str
    group: str
    kind: Kind
    flag: str | None = None  # "--name" (dashes for underscores) unless given; "--x/--no-x" for a pair
    short: str | None = None
    in_file: bool = True  # a [tool.leakaudit] key
    not_a_keyword: str | None = None  # why audit() refuses it as a keyword (None: it takes it)
    on_cli: bool = True  # False: a Python-only setting (a keyword of audit(), no flag and no file key)

    def __post_init__(self) -> None:
        if not self.on_cli and self.in_file:
            raise TypeError("a setting without a flag has no [tool.leakaudit] key either: pass in_file=False")


def setting(default: Any = MISSING, *, help: str, group: str, kind: Kind, **meta: Any) -> Any:
    """A settings field with its default and how it is offered (see ``Meta``)."""
    metadata = {"option": Meta(help=help, group=group, kind=kind, **meta)}
    return field(metadata=metadata) if default is MISSING else field(default=default, metadata=metadata)


@dataclass(frozen=True)
class Option:
    """One setting as the front doors see it: an ``AuditSettings`` field, or a gate key (``to_gate``)."""

    name: str
    meta: Meta
    default: Any  # None: no default (a flag not given leaves the value unset)
    to_gate: bool = False

    @property
    def flags(self) -> tuple[str, ...]:
        """The option's long flag(s) and its short one, as click declares them."""
        long = self.meta.flag or "--" + self.name.replace("_", "-")
        return (long, self.meta.short) if self.meta.short else (long,)

    @property
    def key(self) -> str:
        """The ``[tool.leakaudit]`` key (and keyword): the long flag's name (``--format`` → ``format``)."""
        return self.flags[0].split("/")[0][2:].replace("-", "_")


def _threshold(help: str) -> Meta:
    return Meta(help=help, group="Gate", kind=Number())


# The gate's flags: each sets the [tool.leakaudit.gate] key of its name; GateSettings holds the defaults.
GATE_OPTIONS: tuple[tuple[str, Meta], ...] = (
    ("fail_ssim", _threshold("Fail when a training image is reconstructed at SSIM ≥ X (higher = more similar).")),
    ("warn_ssim", _threshold("Warn when a training image is reconstructed at SSIM ≥ X.")),
    ("fail_lpips", _threshold("Fail when a reconstruction's LPIPS distance is ≤ X (lower = more similar).")),
    ("fail_leak_score", _threshold("Fail when the member-vs-non-member leak score (AUC) is ≥ X (needs --holdout).")),
    ("fail_membership_auc", _threshold("Fail when the strongest membership attack's AUC is ≥ X and significant "
                                       "(needs --holdout; it warns at 0.70 by default).")),
    ("fail_membership_tpr", _threshold("Fail when the strongest reference-model attack (LiRA / RMIA) identifies "
                                       "members at N × the FPR, at 0.1 % FPR (or the lowest FPR the holdout "
                                       "resolves).")),
    ("require_power", Meta(help="A pass whose attack did not reconstruct a planted copy of the architecture (power "
                                "not shown), or whose membership test was the loss threshold alone (no reference "
                                "models), is incomplete (exit 2).", group="Gate", kind=Flag())),
)


@dataclass(frozen=True)
class AuditSettings:
    """Everything one audit needs to know, after the file and the flags (or the keywords) are merged.

    Within a ``run --help`` group, options are listed in the order of these fields.
    """

    model: Path | Any  # a model file, or an in-memory torch.nn.Module (the Python API)
    # --- Inputs ---
    data: Path | Any = setting(  # a path, or a resolved source (leakaudit.data.sources: arrays, a Dataset)
        help="Training images: a folder (DIR/<class>/<image>), an .npz (images, labels[, classes]) or Parquet "
             "(Hugging Face layout: a file or a folder of shards).", group="Inputs", kind=PathKind(),
        not_a_keyword="pass train= / holdout=")
    holdout: Path | Any | None = setting(
        None, help="Non-member images of the same distribution (same formats as --data): the null reference.",
        group="Inputs", kind=PathKind(), not_a_keyword="pass train= / holdout=")
    init: Path | None = setting(  # the classifier's weights before training: the init-aware mode
        None, help="The classifier's weights before training (any model format, vetted like the model): the "
                   "init-aware mode, a stronger threat model.", group="Inputs", kind=PathKind(dir_okay=False))
    max_image_mb: float = setting(
        64.0, help="Image files larger than this are skipped and recorded (checked before opening).",
        group="Inputs", kind=Number(minimum=0.001))
    # --- Model ---
    arch: str | None = setting(
        None, help="Builds the nn.Module for a state_dict or safetensors file (imported from the working "
                   "directory).", group="Model", kind=Text(metavar="MODULE:CALLABLE"))
    unsafe_pickle: bool = setting(
        False, help="Allow loading a fully pickled model. This runs code from the file: only for files you trust.",
        group="Model", kind=Flag(), in_file=False,
        not_a_keyword="load the model yourself and pass the module: only the command line turns it on")
    require_confinement: bool = setting(  # an error (exit 2) where the model cannot run in the confined worker
        False, help="Refuse to run (exit 2) where the model cannot run in the confined worker (not Linux, an old "
                    "kernel, LEAKAUDIT_CONFINEMENT=off).", group="Model", kind=Flag())
    input_size: tuple[int, int] | None = setting(
        None, help="Model input size (default: from the model file or the data).", group="Model", kind=IntPair())
    mean: tuple[float, ...] | None = setting(
        None, help="Per-channel mean the model expects, e.g. 0.485,0.456,0.406 (applied inside the pipeline).",
        group="Model", kind=Floats())
    std: tuple[float, ...] | None = setting(
        None, help="Per-channel std the model expects.", group="Model", kind=Floats())
    device: str | None = setting(
        None, help="torch device (default: cuda when available, else cpu).", group="Model", kind=Text())
    # --- Gate (after GATE_OPTIONS) ---
    power_check: bool = setting(  # the positive control (leakaudit.power)
        True, help="Run the positive control: fresh copies of the architecture made to memorise K held-out images "
                   "per class, attacked the same way.", group="Gate", kind=Flag(negative="--no-power-check"),
        flag="--power-check/--no-power-check")
    baseline: Path | None = setting(
        None, help="A previous leakaudit.json of this model and data: fail only on new or worse findings.",
        group="Gate", kind=PathKind(dir_okay=False))
    allow_foreign_baseline: bool = setting(
        False, help="Accept a --baseline made for another model or other training data (e.g. the previous "
                    "release).", group="Gate", kind=Flag())
    # --- Outputs ---
    out: Path = setting(Path("leakaudit-out"), help="Output folder.", group="Outputs",
                        kind=PathKind(file_okay=False))
    top: int = setting(25, help="Findings listed in the report (the gate counts every member, whatever this is).",
                       group="Outputs", kind=Number(integer=True, minimum=1))
    redact: Redaction = setting("none", help="Blur training images in the report.", group="Outputs",
                          kind=Choice(("none", "blur")))
    images: bool = setting(True, help="Include images in the HTML report.", group="Outputs",
                           kind=Flag(negative="--no-images"), flag="--images/--no-images")
    junit: Path | None = setting(None, help="Also write JUnit XML here.", group="Outputs",
                                 kind=PathKind(dir_okay=False))
    markdown: Path | None = setting(None, help="Also write a Markdown summary here.", group="Outputs",
                                    kind=PathKind(dir_okay=False))
    output_format: str = setting("text", help="json: print the result document on stdout.", group="Outputs",
                                 kind=Choice(("text", "json")), flag="--format", not_a_keyword=PRINTS_ONLY)
    # --- Inversion ---
    seed: int = setting(0, help="Seed of the inversion and the statistics.", group="Inversion",
                        kind=Number(integer=True))
    effort: str = setting(  # fixes the attack's planned work: leakaudit.inversion.config.EFFORT_LEVELS
        "standard", help="How much attack to run: fixes every phase's steps and the candidate pool (never the "
                         "clock).", group="Inversion", kind=Choice(EFFORTS))
    prior: str = setting("auto", help="Informed inversion from part of the holdout (auto: when --holdout is given).",
                         group="Inversion", kind=Choice(("auto", "holdout", "none")))
    conditioning: str = setting(
        "both", help="How the generator is told the class: soft vector, hot matrix channel, or both.",
        group="Inversion", kind=Choice(("vector", "matrix", "both")))
    candidates_per_class: int | None = setting(  # None: grown with the data (leakaudit.inversion.candidates)
        None, help="Reconstructions per class (default: the inversion's).", group="Inversion",
        kind=Number(integer=True, minimum=1))
    reference_models: int | None = setting(  # None: by effort (leakaudit.pipeline.membership.EFFORT_REFERENCE_MODELS)
        None, help="Reference models trained like the target for the LiRA / RMIA membership tests (default: by "
                   "--effort: quick 0, standard 4, thorough 16; 0: the loss threshold only).", group="Inversion",
        kind=Number(integer=True, minimum=0))
    recipe: Path | Any | None = setting(  # a TOML file, a mapping (audit()) or a TrainingRecipe once built
        None, help="The target's training recipe (TOML: optimizer, lr, epochs, batch_size, augment, ...) that the "
                   "reference models repeat (default: a guessed one, and every output says so).", group="Inversion",
        kind=PathKind(dir_okay=False))
    train_fn: Any = setting(  # the owner's own training loop, trusted like --arch (it runs where the model runs)
        None, help="Your own training function for the reference models: train_fn(model, images, labels, *, seed) "
                   "-> model (images as the model takes them, trained in place or returned).", group="Inversion",
        kind=Function("train_fn(model, images, labels, *, seed) -> model"), on_cli=False, in_file=False)
    lpips_net: str = setting("alex", help="LPIPS backbone.", group="Inversion",
                             kind=Choice(("alex", "vgg", "squeeze")))
    lpips_weights: Path | None = setting(
        None, help="Backbone weights file for LPIPS (default: torchvision's cache under $TORCH_HOME).",
        group="Inversion", kind=PathKind(dir_okay=False))
    # --- Run ---
    budget: float | None = setting(  # a ceiling: an attack it cuts short is incomplete, never a pass
        900.0, help="Ceiling on the whole audit, in seconds. An attack it cuts short is incomplete (exit 2) unless "
                    "what was done already fails the gate.", group="Run", kind=Number(minimum=1.0))
    strict_data: bool = setting(False, help="Fail on an unreadable image instead of skipping and recording it.",
                                group="Run", kind=Flag())
    quiet: bool = setting(False, help="Only errors on stderr.", group="Run", kind=Flag(), short="-q",
                          not_a_keyword=PRINTS_ONLY)
    # --- not options: set by the library, or tables of their own ---
    threads: int | None = None  # torch CPU threads (None: the CPUs this process may use)
    gate: GateSettings = field(default_factory=GateSettings)  # thresholds and ignores, validated once
    inversion: dict[str, Any] = field(default_factory=dict)  # [tool.leakaudit.inversion]: InversionConfig fields
    command: tuple[str, ...] = ()

    @property
    def max_image_bytes(self) -> int:
        """Image files over this are skipped before being opened."""
        return int(self.max_image_mb * (1 << 20))


def _meta(f: Field[Any]) -> Meta | None:
    meta = f.metadata.get("option")
    return meta if isinstance(meta, Meta) else None


@functools.cache
def options() -> tuple[Option, ...]:
    """Every setting the command line offers, in ``run --help`` order: the fields, the gate's flags before the
    Gate fields. Python-only settings (``on_cli=False``) are left out: ``all_options`` has them."""
    return tuple(option for option in all_options() if option.meta.on_cli)


@functools.cache
def all_options() -> tuple[Option, ...]:
    """Every setting a user sets, the Python-only ones among them, in ``run --help`` order."""
    gate_defaults = GateSettings()
    gate = [Option(name, meta, getattr(gate_defaults, name), to_gate=True) for name, meta in GATE_OPTIONS]
    found: list[Option] = []
    for f in fields(AuditSettings):
        meta = _meta(f)
        if meta is None:
            continue
        if meta.group == "Gate" and gate:
            found.extend(gate)
            gate = []
        found.append(Option(f.name, meta, None if f.default is MISSING else f.default))
    return tuple(found + gate)


@functools.cache
def option_by_key() -> dict[str, Option]:
    """The options by ``[tool.leakaudit]`` key (= keyword of ``audit()``), file, flag or neither."""
    return {option.key: option for option in all_options()}


def defaults() -> dict[str, Any]:
    """Every field's default, by field name (those without one left out)."""
    return {f.name: f.default for f in fields(AuditSettings) if f.default is not MISSING}
