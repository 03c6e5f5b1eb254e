"""What the CLI shows a person: stderr messages, progress, the summary after an audit, stop and download lines.

stdout carries only machine output (``--format json``); everything here goes
to stderr, with untrusted strings escaped. Tests replace the streams.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from types import FrameType
from typing import Any

from leakaudit.runtime.progress import Observer, SilentObserver
from leakaudit.sanitize import terminal_text
from leakaudit.cli.terminal import LineObserver, RichObserver


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


@contextlib.contextmanager
def python_warnings(console: Console) -> Iterator[None]:
    """Python warnings raised during the block (a model's ``warnings.warn`` among them) on the console's terms.

    With ``--quiet`` none is shown ("only errors"); otherwise each distinct warning once, on one escaped line:
    a model that warns on every forward pass does not flood the terminal. The previous handler comes back after.
    """
    shown: set[tuple[type[Warning], str]] = set()

    def show(message: Warning | str, category: type[Warning], filename: str, lineno: int,
             file: Any = None, line: str | None = None) -> None:
        key = (category, str(message))
        if console.quiet or key in shown:
            return
        shown.add(key)
        console.warn(f"{category.__name__}: {message}")

    with warnings.catch_warnings():
        warnings.showwarning = show
        yield


def make_observer(console: Console) -> Observer:
    """A live bar on a terminal, phase lines and a heartbeat in logs, nothing with --quiet."""
    if console.quiet:
        return SilentObserver()
    if console.interactive:
        return RichObserver(console.err)
    return LineObserver(console)


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


def summary_lines(document: Mapping[str, Any], written: Sequence[Path]) -> list[str]:
    """The human summary the CLI prints on stderr after an audit."""
    # Imported here: the report package loads numpy and jinja2, which `run` must not pay for before its path checks.
    from leakaudit.record import as_record
    from leakaudit.report.ranking import most_leaked_lines
    from leakaudit.report.summary import format_p, headline_line, membership_line, power_line, tidy_numbers
    record = as_record(document)
    inversion = record.inversion
    lines = [f"{headline_line(record)}, mode {record.mode}, effort {inversion.effort}"]
    power = power_line(record)
    if power:
        lines.append(f"  {power}")
    membership = membership_line(record)
    if membership:
        lines.append(f"  {tidy_numbers(membership)}")
    ranked = most_leaked_lines(record)
    lines += [f"  {ranked[0]}", *(f"    {line}" for line in ranked[1:])] if ranked else []
    if not inversion.complete:
        lines.append(f"  incomplete attack: {inversion.incomplete_reason or 'cut short by the budget'}")
    lines += [f"  incomplete {cut.phase}: {cut.reason}" for cut in record.budget_cuts]
    if inversion.resumed:
        lines.append(f"  resumed an interrupted run at its {inversion.resumed_from} phase")
    score = record.summary.leak_score
    if score is not None:
        lines.append(f"  leak score {score.value:.3f} [{score.ci_low:.3f}, {score.ci_high:.3f}] "
                     f"({format_p(score.p_value)}; 0.5 = members matched no better than non-members)")
    else:
        lines.append("  no holdout: the result is not calibrated against non-members")
    for condition in record.gate.conditions:
        lines.append(f"  {condition.status:>7}  {condition.name}: {tidy_numbers(condition.message)}")
    for path in written:
        lines.append(f"  wrote {path}")
    return lines
