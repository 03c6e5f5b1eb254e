"""The command line: the only place that prints or exits.

``main`` maps every outcome to an ``ExitStatus``: the gate's verdict (0 or 1),
any ``LeakAuditError`` or usage problem (2, one line, no traceback unless
``--debug``), Ctrl-C / SIGTERM (130).
"""

from __future__ import annotations

import json
import os
import signal
import sys
import traceback
import warnings
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from types import FrameType
from typing import Any

import click

from leakaudit import __version__
from leakaudit.cli_help import RUN_EXAMPLES, GroupedCommand, check_paths, click_message
from leakaudit.config import DEFAULT_BUDGET_S, EFFORTS, AuditSettings, read_config
from leakaudit.errors import AuditInterrupted, LeakAuditError, UsageError
from leakaudit.exit_codes import ExitStatus
from leakaudit.sanitize import terminal_text


# --- streams and progress -----------------------------------------------------

class Console:
    """stderr for people, stdout only for machine output; replaced in tests."""

    def __init__(self, quiet: bool = False) -> None:
        self.quiet = quiet
        self.err = sys.stderr
        self.out = sys.stdout
        self.interactive = self.err.isatty() and not os.environ.get("CI")

    # Messages carry strings from model files and folders: control characters are shown escaped, never sent raw.
    def say(self, message: str) -> None:
        if not self.quiet:
            print(terminal_text(message), file=self.err, flush=True)

    def warn(self, message: str) -> None:
        print(f"leakaudit: warning: {terminal_text(message)}", file=self.err, flush=True)

    def error(self, message: str) -> None:
        print(f"leakaudit: error: {terminal_text(message)}", file=self.err, flush=True)


def make_observer(console: Console) -> Any:
    """A live bar on a terminal, phase lines and a heartbeat in logs, nothing with --quiet."""
    from leakaudit.progress import SilentObserver
    from leakaudit.terminal import LineObserver, RichObserver

    if console.quiet:
        return SilentObserver()
    if console.interactive:
        return RichObserver(console.err)
    return LineObserver(console)


# --- interruption ---------------------------------------------------------------

class StopFlag:
    """Set by SIGINT/SIGTERM; the engine polls it and checkpoints before stopping."""

    def __init__(self) -> None:
        self.stopped = False
        self.signal_name = ""

    def __call__(self) -> bool:
        return self.stopped

    def install(self) -> Callable[[], None]:
        """Route SIGINT/SIGTERM here; returns a function that restores the previous handlers."""
        previous = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}

        def handler(signum: int, frame: FrameType | None) -> None:
            if self.stopped:  # a second Ctrl-C: stop at once
                raise KeyboardInterrupt
            self.stopped = True
            self.signal_name = signal.Signals(signum).name

        signal.signal(signal.SIGINT, handler)
        signal.signal(signal.SIGTERM, handler)

        def restore() -> None:
            for sig, old in previous.items():
                signal.signal(sig, old)

        return restore


# --- option types -----------------------------------------------------------------

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


def _unit_interval(ctx: click.Context, param: click.Parameter, value: float | None) -> float | None:
    if value is not None and not 0.0 <= value <= 1.0:
        raise click.BadParameter(f"must be between 0 and 1, got {value}")
    return value


def _load_config_into_context(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    """Eager callback: read the config file before other options are processed."""
    file_config = read_config(Path(value) if value else None)
    ctx.default_map = {**(ctx.default_map or {}), **file_config.defaults}
    ctx.meta["leakaudit.config"] = file_config
    return value


# --- commands -----------------------------------------------------------------------

@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="leakaudit")
def cli() -> None:
    """Audit an image classifier's weights for training-data leakage.

    leakaudit inverts the classifier, matches what it reconstructs against the
    training images (SSIM, LPIPS) and against non-member images (the null:
    how well any image of the kind is matched), writes an HTML report and
    exits 1 when leakage passes the gate.
    """


def run_options(func: Any) -> Any:
    options = [
        click.argument("model", type=click.Path(dir_okay=False, path_type=Path)),
        click.option("--data", type=click.Path(path_type=Path), help="Training images (ImageFolder layout: DIR/<class>/<image>)."),
        click.option("--holdout", type=click.Path(path_type=Path), help="Non-member images of the same distribution: the null reference."),
        click.option("--arch", metavar="MODULE:CALLABLE", help="Builds the nn.Module for a state_dict or safetensors file (imported from the working directory)."),
        click.option("--unsafe-pickle", is_flag=True, help="Allow loading a fully pickled model. This runs code from the file: only for files you trust."),
        click.option("--input-size", type=(int, int), metavar="H W", help="Model input size (default: from the model file or the data)."),
        click.option("--mean", type=FloatList(), help="Per-channel mean the model expects, e.g. 0.485,0.456,0.406 (applied inside the pipeline)."),
        click.option("--std", type=FloatList(), help="Per-channel std the model expects."),
        click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=Path("leakaudit-out"), show_default=True, help="Output folder."),
        click.option("--fail-ssim", type=float, callback=_unit_interval, help="Fail when a training image is reconstructed at SSIM ≥ X (higher = more similar)."),
        click.option("--warn-ssim", type=float, callback=_unit_interval, help="Warn when a training image is reconstructed at SSIM ≥ X."),
        click.option("--fail-lpips", type=float, help="Fail when a reconstruction's LPIPS distance is ≤ X (lower = more similar)."),
        click.option("--fail-leak-score", type=float, callback=_unit_interval, help="Fail when the member-vs-non-member leak score (AUC) is ≥ X (needs --holdout)."),
        click.option("--fail-membership-auc", type=float, callback=_unit_interval, help="Fail when the model's loss-threshold membership AUC is ≥ X and significant (needs --holdout; it warns at 0.70 by default)."),
        click.option("--seed", type=int, default=0, show_default=True, help="Seed of the inversion and the statistics."),
        click.option("--effort", type=click.Choice(list(EFFORTS)), default="standard", show_default=True, help="How much attack to run: fixes every phase's steps and the candidate pool (never the clock)."),
        click.option("--budget", type=click.FloatRange(min=1.0), default=DEFAULT_BUDGET_S, show_default=True, help="Ceiling on the whole audit, in seconds. An attack it cuts short is incomplete (exit 2) unless what was done already fails the gate."),
        click.option("--prior", type=click.Choice(["auto", "holdout", "none"]), default="auto", show_default=True, help="Informed inversion from part of the holdout (auto: when --holdout is given)."),
        click.option("--conditioning", type=click.Choice(["vector", "matrix", "both"]), default="both", show_default=True, help="How the generator is told the class: soft vector, hot matrix channel, or both."),
        click.option("--init", type=click.Path(dir_okay=False, path_type=Path), help="The classifier's weights before training (state_dict or TorchScript): the init-aware mode, a stronger threat model."),
        click.option("--candidates-per-class", type=click.IntRange(min=1), help="Reconstructions per class (default: the inversion's)."),
        click.option("--top", type=click.IntRange(min=1), default=25, show_default=True, help="Findings listed in the report (the gate counts every member, whatever this is)."),
        click.option("--lpips-net", type=click.Choice(["alex", "vgg", "squeeze"]), default="alex", show_default=True, help="LPIPS backbone."),
        click.option("--lpips-weights", type=click.Path(dir_okay=False, path_type=Path), help="Backbone weights file for LPIPS (default: torchvision's cache under $TORCH_HOME)."),
        click.option("--redact", type=click.Choice(["none", "blur"]), default="none", show_default=True, help="Blur training images in the report."),
        click.option("--images/--no-images", default=True, show_default=True, help="Include images in the HTML report."),
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


@cli.command(cls=GroupedCommand, examples=RUN_EXAMPLES, context_settings={"show_default": True},
             short_help="Audit a model against its training images.")
@run_options
@click.pass_context
def run(ctx: click.Context, **opts: Any) -> None:
    """Audit MODEL against its training images (--data)."""
    if opts["data"] is None:
        raise UsageError("--data DIR is required (the training images, in ImageFolder layout)")
    file_config = ctx.meta.get("leakaudit.config")
    for warning in file_config.warnings if file_config is not None else ():
        Console().warn(warning)
    check_paths(opts)  # before torch is imported: a typo costs milliseconds, not seconds
    settings = _settings_from(ctx, opts)
    ctx.exit(_execute(ctx, settings, opts))


def _gate_from(ctx: click.Context, opts: dict[str, Any]) -> tuple[dict[str, Any], dict[str, str]]:
    """The gate table after file and flags, and where each value came from (for messages)."""
    from click.core import ParameterSource

    file_config = ctx.meta.get("leakaudit.config")
    gate = dict(file_config.gate) if file_config else {}
    sources = {key: file_config.where(key) for key in gate} if file_config else {}
    for key in ("fail_ssim", "warn_ssim", "fail_lpips", "fail_leak_score", "fail_membership_auc"):
        if opts.get(key) is not None:
            gate[key] = opts[key]
            from_file = ctx.get_parameter_source(key) == ParameterSource.DEFAULT_MAP and file_config is not None
            sources[key] = file_config.where(key) if from_file else "--" + key.replace("_", "-")
    for key in ("holdout_quantile", "warn_membership_auc"):  # file-only settings
        if key in (ctx.default_map or {}):
            gate[key] = ctx.default_map[key]
            sources[key] = file_config.where(key) if file_config else key
    return gate, sources


def _settings_from(ctx: click.Context, opts: dict[str, Any]) -> AuditSettings:
    file_config = ctx.meta.get("leakaudit.config")
    gate, sources = _gate_from(ctx, opts)
    if opts.get("prior") == "holdout" and opts.get("holdout") is None:
        raise UsageError("--prior holdout needs --holdout DIR")
    return AuditSettings(
        model=opts["model"], data=opts["data"], holdout=opts.get("holdout"), arch=opts.get("arch"),
        unsafe_pickle=bool(opts.get("unsafe_pickle")), input_size=opts.get("input_size"), mean=opts.get("mean"),
        std=opts.get("std"), out=opts["out"], seed=opts["seed"], budget=opts["budget"], prior=opts["prior"],
        effort=opts["effort"], allow_foreign_baseline=bool(opts.get("allow_foreign_baseline")), gate_sources=sources,
        conditioning=opts["conditioning"],
        candidates_per_class=opts.get("candidates_per_class"), init=opts.get("init"), top=opts["top"], lpips_net=opts["lpips_net"],
        lpips_weights=opts.get("lpips_weights"), strict_data=bool(opts.get("strict_data")), device=opts.get("device"),
        max_image_bytes=int(opts["max_image_mb"] * (1 << 20)),
        redact=opts["redact"], images=opts["images"], junit=opts.get("junit"), markdown=opts.get("markdown"),
        baseline=opts.get("baseline"), gate=gate, command=tuple(sys.argv),
        inversion=dict(file_config.inversion) if file_config else {},
    )


def _execute(ctx: click.Context, settings: AuditSettings, opts: dict[str, Any]) -> int:
    from leakaudit.audit import run_audit
    from leakaudit.distributed import DistContext

    dist = DistContext.from_environment(device=settings.device)  # one process unless launched by torchrun
    if dist.is_distributed:
        settings = replace(settings, device=str(dist.device))
    console: Console = ctx.obj if isinstance(ctx.obj, Console) else Console(quiet=bool(opts.get("quiet")))
    console.quiet = bool(opts.get("quiet")) or not dist.is_main  # progress and summary from rank 0 only
    file_config = ctx.meta.get("leakaudit.config")
    if file_config is not None:
        for warning in file_config.warnings:
            console.warn(warning)
    if settings.unsafe_pickle:
        console.warn("--unsafe-pickle given: if the model file is a pickle, loading it runs code from the file "
                     "with your permissions; use it only for files you trust")
    stop = StopFlag()
    restore_signals = stop.install()
    observer = make_observer(console)
    try:
        outcome = run_audit(settings, observer=observer, should_stop=stop, dist=dist)
    finally:
        restore_signals()
        if hasattr(observer, "close"):
            observer.close()
        dist.close()
    if stop.stopped:
        raise AuditInterrupted(interrupt_message(stop.signal_name, outcome.written, settings.out))
    if not dist.is_main:  # the verdict and the outputs are rank 0's
        return int(ExitStatus.PASSED)
    for warning in outcome.warnings:
        console.warn(warning)
    if opts.get("output_format") == "json":
        print(json.dumps(outcome.document, indent=2), file=console.out, flush=True)
    for line in outcome.summary_lines:
        console.say(line)
    inversion = outcome.document.get("inversion") or {}
    if console.quiet and outcome.document.get("verdict") == "incomplete":  # exit 2 always comes with its line
        console.error(f"incomplete attack: {inversion.get('incomplete_reason') or 'cut short by the budget'}")
    return int(outcome.exit_status)


def interrupt_message(signal_name: str, written: Sequence[Path], out: Path) -> str:
    """Exactly what an interrupted audit left: which files (all complete), and whether it can resume."""
    if written:
        what = (f"only these outputs were complete before the stop: {', '.join(str(p) for p in written)}; "
                "the others were not written, so the set is partial")
    else:
        what = "no result was written"
    resume = out / "checkpoints" / "resume.pt"
    if resume.is_file():
        tail = f"the saved inversion state {resume} lets the same command resume from the last completed phase"
    else:
        tail = "there is no saved inversion state to resume from: the same command starts afresh"
    return f"stopped by {signal_name}; {what}. {tail}"


@cli.command(short_help="Build a bundled reference model on real digits and audit it.")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=Path("leakaudit-demo"), show_default=True, help="Where the reference data, model and report go.")
@click.option("--audit", "audit_name", default="digits-mlp-1pc", show_default=True, help="Which bundled reference to build (see --list).")
@click.option("--list", "list_only", is_flag=True, help="List the bundled references and exit.")
@click.option("--budget", type=click.FloatRange(min=1.0), default=DEFAULT_BUDGET_S, show_default=True, help="Ceiling on the audit, in seconds (see `run --help`).")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the training and of the audit.")
@click.option("--quiet", "-q", is_flag=True, help="Only errors on stderr.")
@click.option("--debug", is_flag=True, help="Show tracebacks.")
@click.pass_context
def demo(ctx: click.Context, out: Path, audit_name: str, list_only: bool, budget: float, seed: int, quiet: bool, debug: bool) -> None:
    """Build a bundled reference (real handwritten digits) and audit it.

    Trains a small classifier on a handful of real digits per class, saves it
    as TorchScript beside member and non-member image folders, then runs
    `leakaudit run` on it. Everything is built from data that ships with
    scikit-learn and scikit-image: nothing is downloaded.
    """
    from leakaudit.reference import build_reference, load_spec, shipped_audits

    console = Console(quiet=quiet)
    if list_only:
        for name in shipped_audits():
            print(name, file=console.out)
        ctx.exit(0)
    spec, _ = load_spec(audit_name)
    console.say(f"building reference {spec.name!r}: {spec.train_per_class} training image(s) per class, {spec.arch} classifier …")
    observer = make_observer(console)
    observer.phase(f"training the {spec.arch} classifier", spec.epochs)
    try:
        built = build_reference(spec, out / "reference", progress=lambda e, n: observer.advance(e + 1, n, "epochs"))
    finally:
        if hasattr(observer, "close"):
            observer.close()
    console.say(
        f"  model {built.model_path} (train accuracy {built.metrics['train_accuracy']:.2f}, "
        f"holdout accuracy {built.metrics['holdout_accuracy']:.2f})"
    )
    argv = [str(built.model_path), "--data", str(built.train_dir), "--holdout", str(built.holdout_dir),
            "--out", str(out / "audit"), "--budget", str(budget), "--seed", str(seed)]
    if quiet:
        argv.append("--quiet")
    if debug:
        argv.append("--debug")
    console.say("$ leakaudit run " + " ".join(argv))
    ctx.obj = console
    sub = run.make_context("run", argv, parent=ctx)
    with sub:
        ctx.exit(run.invoke(sub))


@cli.command(context_settings={"ignore_unknown_options": True, "allow_interspersed_args": False,
                              "help_option_names": []}, short_help="Run one audit on several processes (torchrun).")
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
@click.pass_context
def launch(ctx: click.Context, args: tuple[str, ...]) -> None:
    """Run one audit on several processes or machines: torchrun's options, then `run …`.

    \b
    leakaudit launch --nproc-per-node 4 run model.pt --data ./train --holdout ./heldout
    \b
    The same as `torchrun --nproc-per-node 4 -m leakaudit run …`, except for
    the exit code: torchrun exits 1 when any process fails, this exits as
    `leakaudit run` does (0 passed, 1 gate failed, 2 error naming the rank that
    failed first, 130 interrupted).
    """
    from leakaudit.launcher import launch as launch_ranks, split_launch_args

    if not args or args[0] in ("-h", "--help"):
        click.echo(ctx.get_help())
        ctx.exit(0)
    torchrun_args, run_args = split_launch_args(args)
    outcome = launch_ranks(torchrun_args, run_args)
    if outcome.message:
        Console().error(outcome.message)
    ctx.exit(outcome.exit_code)


@cli.command(short_help="Re-render report.html from a leakaudit.json.")
@click.argument("result", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), help="HTML file to write (default: report.html beside RESULT).")
@click.option("--redact", type=click.Choice(["none", "blur"]), default="none", show_default=True, help="Blur training images in the report.")
@click.option("--images/--no-images", default=True, show_default=True, help="Include images in the report.")
@click.option("--debug", is_flag=True, help="Show tracebacks.")
def report(result: Path, out: Path | None, redact: str, images: bool, debug: bool) -> None:
    """Re-render the HTML report from RESULT (a leakaudit.json) without re-running the audit."""
    from leakaudit.report import load_outputs, render_report_file

    document, arrays = load_outputs(result)
    target = out or result.parent / "report.html"
    written, warnings = render_report_file(document, arrays, target, redact=redact, include_images=images)
    console = Console()
    for warning in warnings:
        console.warn(warning)
    console.say(f"report written: {written} ({written.stat().st_size / 1024:.0f} KiB)")


class ByteProgress:
    """Download progress on stderr: a rewritten line on a terminal, a line per tenth in logs."""

    def __init__(self, console: Console) -> None:
        self.console = console
        self._shown = -1

    def __call__(self, done: int, total: int | None) -> None:
        if self.console.quiet:
            return
        text = f"  {done / 1e6:.1f}" + (f" of {total / 1e6:.1f} MB ({100 * done / total:.0f}%)" if total else " MB")
        if self.console.interactive:
            print("\r" + text, end="", file=self.console.err, flush=True)
            return
        tenth = int(10 * done / total) if total else done // 10_000_000
        if tenth != self._shown:
            self._shown = tenth
            self.console.say(text)

    def finish(self) -> None:
        if self.console.interactive and not self.console.quiet:
            print(file=self.console.err, flush=True)


@cli.command("fetch-weights", short_help="Download an LPIPS backbone into torchvision's cache.")
@click.option("--net", type=click.Choice(["alex", "squeeze", "vgg"]), default="alex", show_default=True,
              help="LPIPS backbone: alex (233 MB, LPIPS's default), squeeze (5 MB), vgg (528 MB).")
@click.option("--url", envvar="LEAKAUDIT_WEIGHTS_URL", show_envvar=True,
              help="Download from this address instead of download.pytorch.org (a mirror).")
@click.option("--sha256", "sha256", metavar="HEX", help="Full sha256 the file must have (default: the hash prefix in torchvision's file name).")
@click.option("--force", is_flag=True, help="Download again even if the file is already in the cache.")
@click.option("--quiet", "-q", is_flag=True, help="Only errors on stderr.")
@click.option("--debug", is_flag=True, help="Show tracebacks.")
def fetch_weights(net: str, url: str | None, sha256: str | None, force: bool, quiet: bool, debug: bool) -> None:
    """Download an LPIPS backbone into torchvision's cache ($TORCH_HOME/hub/checkpoints).

    Audits never use the network; this is the one command that does, and only
    when you run it. The file gets the name torchvision gives it, so LPIPS
    (and torchvision) find it offline afterwards.
    """
    from leakaudit import weights

    console = Console(quiet=quiet)
    b = weights.backbone(net)
    target = weights.cache_path(net)
    if target.is_file() and not force:
        console.say(f"already there: {target} (--force downloads it again)")
        return
    console.say(f"downloading the {b.label} backbone (about {b.size_mb:.0f} MB) from "
                f"{url or b.url}\n  into {target}")
    bar = ByteProgress(console)
    try:
        path, _ = weights.fetch(net, url=url, sha256=sha256, force=force, progress=bar)
    finally:
        bar.finish()
    console.say(f"saved {path} (sha256 checked); LPIPS with --lpips-net {net} is now available")


def _rank_prefix() -> str:
    if os.environ.get("WORLD_SIZE", "1") in ("", "1"):
        return ""  # one process: no torch import just for this
    from leakaudit.distributed import rank_prefix

    return rank_prefix()


def _record_rank_failure(exc: BaseException) -> None:
    """Under torchrun: leave the failure where the launcher finds the rank that failed first."""
    if os.environ.get("WORLD_SIZE", "1") not in ("", "1"):
        from leakaudit.launcher import record_failure

        record_failure(exc)


def _show_warning(message: Warning | str, category: type[Warning], filename: str, lineno: int,
                  file: Any = None, line: str | None = None) -> None:
    """Python warnings (a TorchScript model's ``warn`` among them) on one escaped line."""
    print(f"leakaudit: warning: {terminal_text(f'{category.__name__}: {message}')}", file=file or sys.stderr,
          flush=True)


def main(argv: Sequence[str] | None = None) -> None:
    """Entry point: run the CLI and turn every outcome into an exit code."""
    args = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in args
    console = Console()
    warnings.showwarning = _show_warning
    where = _rank_prefix()  # under torchrun: which rank says this
    try:
        code = cli.main(args=args, prog_name="leakaudit", standalone_mode=False)
    except click.exceptions.Exit as exc:
        code = exc.exit_code
    except click.ClickException as exc:
        console.error(click_message(exc))
        code = ExitStatus.ERROR
    except click.exceptions.Abort:
        console.error("interrupted")
        code = ExitStatus.INTERRUPTED
    except AuditInterrupted as exc:
        console.error(f"{where}{exc}")
        _record_rank_failure(exc)
        code = ExitStatus.INTERRUPTED
    except KeyboardInterrupt:
        console.error("interrupted")
        code = ExitStatus.INTERRUPTED
    except LeakAuditError as exc:
        if debug:
            traceback.print_exc()
        console.error(f"{where}{exc}")
        _record_rank_failure(exc)
        code = ExitStatus.ERROR
    except Exception as exc:  # a bug: still exit 2, never 0 or 1
        if debug:
            traceback.print_exc()
        console.error(f"{where}internal error: {type(exc).__name__}: {exc} (re-run with --debug for the traceback)")
        _record_rank_failure(exc)
        code = ExitStatus.ERROR
    sys.exit(int(code or 0))


if __name__ == "__main__":
    main()
