"""The `run` command's options, the config file fed into them, and how they become ``AuditSettings``.

The option list is the one source of the ``[tool.leakaudit]`` keys: a file
key is an option's flag name, fed into click's ``default_map`` so that a flag
on the command line wins through click's own code path (as psf/black does).
Gate thresholds are the exception: they go to the gate table, which the gate
validates once.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import click

from leakaudit.config import DEFAULT_BUDGET_S, EFFORTS, AuditSettings, FileKey, read_config
from leakaudit.errors import UsageError
from leakaudit.gate.settings import GATE_KEYS, THRESHOLD_KEYS, gate_settings_from_mapping


class FloatList(click.ParamType):
    """``0.485,0.456,0.406`` (or one value for every channel)."""

    name = "FLOATS"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> tuple[float, ...]:
        if isinstance(value, (list, tuple)):
            items = list(value)
        else:
            items = [v for v in str(value).replace(",", " ").split() if v]
        try:
            floats = tuple(float(v) for v in items)
        except (TypeError, ValueError):
            self.fail(f"{value!r} is not a comma-separated list of numbers", param, ctx)
        if not floats or len(floats) > 4:
            self.fail(f"{value!r}: give 1 to 4 values (one per channel)", param, ctx)
        return floats


# `run` parameters that a file cannot set: the model is an argument, the rest act on this one invocation.
NOT_IN_FILES = frozenset({"model", "config", "debug", "unsafe_pickle"})


def file_keys(command: click.Command) -> dict[str, FileKey]:
    """The ``[tool.leakaudit]`` keys of a command: one per option, named like its flag (``--format`` → ``format``).

    Thresholds are gate keys (the gate reads them), so they are left out here.
    """
    keys: dict[str, FileKey] = {}
    for param in command.params:
        if not isinstance(param, click.Option) or param.name is None or param.name in NOT_IN_FILES:
            continue
        if param.name in GATE_KEYS:
            continue
        is_path = isinstance(param.type, click.Path)
        for flag in param.opts:
            if flag.startswith("--"):
                keys[flag[2:].replace("-", "_")] = FileKey(param.name, is_path)
    return keys


def _load_config_into_context(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    """Eager callback: read the config file before other options are processed."""
    file_config = read_config(Path(value) if value else None, run_keys=file_keys(ctx.command))
    ctx.default_map = {**(ctx.default_map or {}), **file_config.defaults}
    ctx.meta["leakaudit.config"] = file_config
    return value


def run_options(func: Any) -> Any:
    """Decorate ``run`` with every option, in the order `run --help` groups them."""
    options = [
        click.argument("model", type=click.Path(dir_okay=False, path_type=Path)),
        click.option("--data", type=click.Path(path_type=Path), help="Training images: a folder (DIR/<class>/<image>), an .npz (images, labels[, classes]) or Parquet (Hugging Face layout: a file or a folder of shards)."),
        click.option("--holdout", type=click.Path(path_type=Path), help="Non-member images of the same distribution (same formats as --data): the null reference."),
        click.option("--arch", metavar="MODULE:CALLABLE", help="Builds the nn.Module for a state_dict or safetensors file (imported from the working directory)."),
        click.option("--unsafe-pickle", is_flag=True, help="Allow loading a fully pickled model. This runs code from the file: only for files you trust."),
        click.option("--require-confinement", is_flag=True, help="Refuse to run (exit 2) where the model cannot run in the confined worker (not Linux, an old kernel, LEAKAUDIT_CONFINEMENT=off)."),
        click.option("--input-size", type=(int, int), metavar="H W", help="Model input size (default: from the model file or the data)."),
        click.option("--mean", type=FloatList(), help="Per-channel mean the model expects, e.g. 0.485,0.456,0.406 (applied inside the pipeline)."),
        click.option("--std", type=FloatList(), help="Per-channel std the model expects."),
        click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=Path("leakaudit-out"), show_default=True, help="Output folder."),
        click.option("--fail-ssim", type=float, help="Fail when a training image is reconstructed at SSIM ≥ X (higher = more similar)."),
        click.option("--warn-ssim", type=float, help="Warn when a training image is reconstructed at SSIM ≥ X."),
        click.option("--fail-lpips", type=float, help="Fail when a reconstruction's LPIPS distance is ≤ X (lower = more similar)."),
        click.option("--fail-leak-score", type=float, help="Fail when the member-vs-non-member leak score (AUC) is ≥ X (needs --holdout)."),
        click.option("--fail-membership-auc", type=float, help="Fail when the model's loss-threshold membership AUC is ≥ X and significant (needs --holdout; it warns at 0.70 by default)."),
        click.option("--seed", type=int, default=0, show_default=True, help="Seed of the inversion and the statistics."),
        click.option("--effort", type=click.Choice(list(EFFORTS)), default="standard", show_default=True, help="How much attack to run: fixes every phase's steps and the candidate pool (never the clock)."),
        click.option("--budget", type=click.FloatRange(min=1.0), default=DEFAULT_BUDGET_S, show_default=True, help="Ceiling on the whole audit, in seconds. An attack it cuts short is incomplete (exit 2) unless what was done already fails the gate."),
        click.option("--prior", type=click.Choice(["auto", "holdout", "none"]), default="auto", show_default=True, help="Informed inversion from part of the holdout (auto: when --holdout is given)."),
        click.option("--conditioning", type=click.Choice(["vector", "matrix", "both"]), default="both", show_default=True, help="How the generator is told the class: soft vector, hot matrix channel, or both."),
        click.option("--init", type=click.Path(dir_okay=False, path_type=Path), help="The classifier's weights before training (any model format, vetted like the model): the init-aware mode, a stronger threat model."),
        click.option("--candidates-per-class", type=click.IntRange(min=1), help="Reconstructions per class (default: the inversion's)."),
        click.option("--top", type=click.IntRange(min=1), default=25, show_default=True, help="Findings listed in the report (the gate counts every member, whatever this is)."),
        click.option("--lpips-net", type=click.Choice(["alex", "vgg", "squeeze"]), default="alex", show_default=True, help="LPIPS backbone."),
        click.option("--lpips-weights", type=click.Path(dir_okay=False, path_type=Path), help="Backbone weights file for LPIPS (default: torchvision's cache under $TORCH_HOME)."),
        click.option("--redact", type=click.Choice(["none", "blur"]), default="none", show_default=True, help="Blur training images in the report."),
        click.option("--images/--no-images", default=True, show_default=True, help="Include images in the HTML report."),
        click.option("--require-power", is_flag=True, default=None, help="A pass whose attack did not reconstruct a planted copy of the architecture (power not shown) is incomplete (exit 2)."),
        click.option("--power-check/--no-power-check", default=True, show_default=True, help="Run the positive control: fresh copies of the architecture made to memorise K held-out images per class, attacked the same way."),
        click.option("--baseline", type=click.Path(dir_okay=False, path_type=Path), help="A previous leakaudit.json of this model and data: fail only on new or worse findings."),
        click.option("--allow-foreign-baseline", is_flag=True, help="Accept a --baseline made for another model or other training data (e.g. the previous release)."),
        click.option("--junit", type=click.Path(dir_okay=False, path_type=Path), help="Also write JUnit XML here."),
        click.option("--markdown", type=click.Path(dir_okay=False, path_type=Path), help="Also write a Markdown summary here."),
        click.option("--format", "output_format", type=click.Choice(["text", "json"]), default="text", show_default=True, help="json: print the result document on stdout."),
        click.option("--strict-data", is_flag=True, help="Fail on an unreadable image instead of skipping and recording it."),
        click.option("--max-image-mb", type=click.FloatRange(min=0.001), default=64.0, show_default=True, help="Image files larger than this are skipped and recorded (checked before opening)."),
        click.option("--device", help="torch device (default: cuda when available, else cpu)."),
        click.option("--quiet", "-q", is_flag=True, help="Only errors on stderr."),
        click.option("--debug", is_flag=True, help="Show tracebacks."),
        click.option("--config", type=click.Path(dir_okay=False, path_type=Path), is_eager=True, expose_value=False,
                     callback=_load_config_into_context, help="TOML settings (default: [tool.leakaudit] in ./pyproject.toml)."),
    ]
    for option in reversed(options):
        func = option(func)
    return func


def _gate_from(ctx: click.Context, opts: dict[str, Any]) -> tuple[dict[str, Any], dict[str, str]]:
    """The gate table after file and flags, and where each value came from (for messages)."""
    file_config = ctx.meta.get("leakaudit.config")
    gate = dict(file_config.gate) if file_config else {}
    sources = {key: file_config.where(key) for key in gate} if file_config else {}
    for key in THRESHOLD_KEYS:  # a threshold flag given on the command line wins over the file
        if opts.get(key) is not None:
            gate[key] = opts[key]
            sources[key] = "--" + key.replace("_", "-")
    if opts.get("require_power"):
        gate["require_power"] = True
        sources["require_power"] = "--require-power"
    return gate, sources


def settings_from(ctx: click.Context, opts: dict[str, Any]) -> AuditSettings:
    """The audit's settings after file and flags; the gate's thresholds are validated here, once."""
    file_config = ctx.meta.get("leakaudit.config")
    gate, sources = _gate_from(ctx, opts)
    baseline = opts.get("baseline")
    gate_settings = gate_settings_from_mapping(gate, str(baseline) if baseline else None, sources=sources)
    if opts.get("prior") == "holdout" and opts.get("holdout") is None:
        raise UsageError("--prior holdout needs --holdout DIR")
    return AuditSettings(
        model=opts["model"], data=opts["data"], holdout=opts.get("holdout"), arch=opts.get("arch"),
        unsafe_pickle=bool(opts.get("unsafe_pickle")), require_confinement=bool(opts.get("require_confinement")),
        input_size=opts.get("input_size"), mean=opts.get("mean"),
        std=opts.get("std"), out=opts["out"], seed=opts["seed"], budget=opts["budget"], prior=opts["prior"],
        effort=opts["effort"], allow_foreign_baseline=bool(opts.get("allow_foreign_baseline")),
        conditioning=opts["conditioning"],
        candidates_per_class=opts.get("candidates_per_class"), init=opts.get("init"), top=opts["top"], lpips_net=opts["lpips_net"],
        lpips_weights=opts.get("lpips_weights"), strict_data=bool(opts.get("strict_data")), device=opts.get("device"),
        max_image_bytes=int(opts["max_image_mb"] * (1 << 20)),
        redact=opts["redact"], images=opts["images"], junit=opts.get("junit"), markdown=opts.get("markdown"),
        baseline=baseline, gate=gate_settings, command=tuple(sys.argv), power_check=bool(opts.get("power_check", True)),
        inversion=dict(file_config.inversion) if file_config else {},
    )
