"""The command line: the only place that prints or exits.

``main`` maps every outcome to an ``ExitStatus``: the gate's verdict (0 or 1),
any ``LeakAuditError`` or usage problem (2, one line, no traceback unless
``--debug``), Ctrl-C / SIGTERM (130).
"""

from __future__ import annotations

import json
import os
import sys
import traceback
import warnings
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from leakaudit.version import __version__
from leakaudit.cli.help import RUN_EXAMPLES, GroupedCommand, check_paths, click_message
from leakaudit.cli.console import (ByteProgress, Console, StopFlag, interrupt_message, make_observer, python_warnings,
                               summary_lines)
from leakaudit.cli.options import run_options, settings_from
from leakaudit.config import AuditSettings
from leakaudit.errors import AuditInterrupted, LeakAuditError, UsageError
from leakaudit.exit_codes import ExitStatus
from leakaudit.sanitize import terminal_text

if TYPE_CHECKING:
    from leakaudit.report.images import Redaction  # the report's modules import numpy: only for the checker


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


@cli.command(cls=GroupedCommand, examples=RUN_EXAMPLES, context_settings={"show_default": True},
             short_help="Audit a model against its training images.")
@run_options
@click.pass_context
def run(ctx: click.Context, /, **opts: Any) -> None:
    """Audit MODEL against its training images (--data)."""
    if opts["data"] is None:
        raise UsageError("--data DIR is required (the training images: an image folder, an .npz file or Parquet)")
    file_config = ctx.meta.get("leakaudit.config")
    for warning in file_config.warnings if file_config is not None else ():
        Console().warn(warning)
    settings = settings_from(ctx, opts)  # the gate's thresholds are checked here, once
    check_paths(opts)  # before torch is imported: a typo costs milliseconds, not seconds
    ctx.exit(_execute(ctx, settings))


def _execute(ctx: click.Context, settings: AuditSettings) -> int:
    from leakaudit.confine import sandbox, spawn

    # the worker confines itself and imports torch while this process does the same
    spawn.prestart(sandbox.confine_request(settings))
    from leakaudit.api import run  # imported when the command runs: torch stays out of --help and the path checks
    from leakaudit.runtime.distributed import DistContext  # (the same: torch)

    dist = DistContext.from_environment(device=settings.device)  # one process unless launched by torchrun
    if dist.is_distributed:
        settings = replace(settings, device=str(dist.device))
    console: Console = ctx.obj if isinstance(ctx.obj, Console) else Console(quiet=settings.quiet)
    console.quiet = settings.quiet or not dist.is_main  # progress and summary from rank 0 only
    if settings.unsafe_pickle:
        console.warn("--unsafe-pickle given: if the model file is a pickle, loading it runs code from the file "
                     "with your permissions; use it only for files you trust")
    stop = StopFlag()
    restore_signals = stop.install()
    observer = make_observer(console)
    finished = False
    try:
        with python_warnings(console):  # a model's warnings: none with --quiet, else each distinct one once
            outcome = run(settings, observer=observer, should_stop=stop, dist=dist)  # the path leakaudit.audit() takes
        finished = True
    finally:
        restore_signals()
        if hasattr(observer, "close"):
            observer.close()
        dist.close(synchronise=finished and not stop.stopped)
    if stop.stopped:
        raise AuditInterrupted(interrupt_message(stop.signal_name, outcome.written, settings.out))
    if not dist.is_main:  # the verdict and the outputs are rank 0's
        return int(ExitStatus.PASSED)
    if not outcome.has_result:  # another rank was stopped: this one stopped with it
        raise AuditInterrupted(interrupt_message(stop.signal_name or "a stop on another rank", outcome.written,
                                                 settings.out))
    for warning in outcome.warnings:
        console.warn(warning)
    if settings.output_format == "json":
        print(json.dumps(outcome.document, indent=2), file=console.out, flush=True)
    for line in summary_lines(outcome.document, outcome.written):
        console.say(line)
    inversion = outcome.document.get("inversion") or {}
    if console.quiet and outcome.document.get("verdict") == "incomplete":  # exit 2 always comes with its line
        console.error(f"incomplete attack: {inversion.get('incomplete_reason') or 'cut short by the budget'}")
    return int(outcome.exit_status)


@cli.command(short_help="Build a bundled reference model on real digits and audit it.")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=Path("leakaudit-demo"),
              show_default=True, help="Where the reference data, model and report go.")
@click.option("--audit", "audit_name", default="digits-mlp-1pc", show_default=True,
              help="Which bundled reference to build (see --list).")
@click.option("--list", "list_only", is_flag=True, help="List the bundled references and exit.")
@click.option("--budget", type=click.FloatRange(min=1.0), default=AuditSettings.budget, show_default=True,
              help="Ceiling on the audit, in seconds (see `run --help`).")
@click.option("--seed", type=int, default=AuditSettings.seed, show_default=True,
              help="Seed of the training and of the audit.")
@click.option("--quiet", "-q", is_flag=True, help="Only errors on stderr.")
@click.option("--debug", is_flag=True, help="Show tracebacks.")
@click.pass_context
def demo(ctx: click.Context, out: Path, audit_name: str, list_only: bool, budget: float, seed: int, quiet: bool,
         debug: bool) -> None:
    """Build a bundled reference (real handwritten digits) and audit it.

    Trains a small classifier on a handful of real digits per class, saves it
    as TorchScript beside member and non-member image folders, then runs
    `leakaudit run` on it. Everything is built from data that ships with
    scikit-learn and scikit-image: nothing is downloaded.
    """
    # imported when the command runs: torch stays out of --help and the path checks
    from leakaudit.zoo import build_reference, load_spec

    console = Console(quiet=quiet)
    if list_only:
        for line in _reference_lines():
            print(line, file=console.out)
        ctx.exit(0)
    spec, _ = load_spec(audit_name)
    console.say(f"building reference {spec.name!r}: {spec.train_per_class} training image(s) per class, "
                f"{spec.arch} classifier …")
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


def _reference_lines() -> list[str]:
    """One line per shipped reference: name, architecture, data, members per class, what auditing it shows."""
    from leakaudit.zoo import describe, shipped_audits

    audits = [(name, describe(name)) for name in shipped_audits()]
    rows = [(name, a.spec.arch, a.data, a.members, a.description) for name, a in audits]
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    return ["  ".join(cell.ljust(width) for cell, width in zip(row[:4], widths)) + "  " + row[4] for row in rows]


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
    # imported when the command runs: torch stays out of --help and the path checks
    from leakaudit.cli.launcher import launch as launch_ranks, split_launch_args

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
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path),
              help="HTML file to write (default: report.html beside RESULT).")
@click.option("--redact", type=click.Choice(["none", "blur"]), default=AuditSettings.redact, show_default=True,
              help="Blur training images in the report.")
@click.option("--images/--no-images", default=AuditSettings.images, show_default=True,
              help="Include images in the report.")
@click.option("--debug", is_flag=True, help="Show tracebacks.")
def report(result: Path, out: Path | None, redact: Redaction, images: bool, debug: bool) -> None:
    """Re-render the HTML report from RESULT (a leakaudit.json) without re-running the audit."""
    from leakaudit.report import load_outputs, render_report_file  # numpy and jinja2 only for this command

    document, arrays = load_outputs(result)
    target = out or result.parent / "report.html"
    written, warnings = render_report_file(document, arrays, target, redact=redact, include_images=images)
    console = Console()
    for warning in warnings:
        console.warn(warning)
    console.say(f"report written: {written} ({written.stat().st_size / 1024:.0f} KiB)")


@cli.command("fetch-weights", short_help="Download an LPIPS backbone into torchvision's cache.")
@click.option("--net", type=click.Choice(["alex", "squeeze", "vgg"]), default="alex", show_default=True,
              help="LPIPS backbone: alex (233 MB, LPIPS's default), squeeze (5 MB), vgg (528 MB).")
@click.option("--url", envvar="LEAKAUDIT_WEIGHTS_URL", show_envvar=True,
              help="Download from this address instead of download.pytorch.org (a mirror).")
@click.option("--sha256", "sha256", metavar="HEX",
              help="Full sha256 the file must have (default: the hash prefix in torchvision's file name).")
@click.option("--force", is_flag=True, help="Download again even if the file is already in the cache.")
@click.option("--quiet", "-q", is_flag=True, help="Only errors on stderr.")
@click.option("--debug", is_flag=True, help="Show tracebacks.")
def fetch_weights(net: str, url: str | None, sha256: str | None, force: bool, quiet: bool, debug: bool) -> None:
    """Download an LPIPS backbone into torchvision's cache ($TORCH_HOME/hub/checkpoints).

    Audits never use the network; this is the one command that does, and only
    when you run it. The file gets the name torchvision gives it, so LPIPS
    (and torchvision) find it offline afterwards.
    """
    from leakaudit.matching import backbone_download  # torchvision only for this command

    console = Console(quiet=quiet)
    b = backbone_download.backbone(net)
    target = backbone_download.cache_path(net)
    if target.is_file() and not force:
        console.say(f"already there: {target} (--force downloads it again)")
        return
    console.say(f"downloading the {b.label} backbone (about {b.size_mb:.0f} MB) from "
                f"{url or b.url}\n  into {target}")
    bar = ByteProgress(console)
    try:
        path, _ = backbone_download.fetch(net, url=url, sha256=sha256, force=force, progress=bar)
    finally:
        bar.finish()
    console.say(f"saved {path} (sha256 checked); LPIPS with --lpips-net {net} is now available")


def _rank_prefix() -> str:
    if os.environ.get("WORLD_SIZE", "1") in ("", "1"):
        return ""  # one process: no torch import just for this
    from leakaudit.runtime.distributed import rank_prefix  # torch only under torchrun

    return rank_prefix()


def _record_rank_failure(exc: BaseException) -> None:
    """Under torchrun: leave the failure where the launcher finds the rank that failed first."""
    if os.environ.get("WORLD_SIZE", "1") not in ("", "1"):
        from leakaudit.cli.launcher import record_failure  # torch only under torchrun

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
