"""Progress that means something: counts with units, remaining time, honest phase ends, a heartbeat in logs."""

from __future__ import annotations

import io
import time

from leakaudit.runtime.progress import PhaseTracker, duration
from leakaudit.cli.terminal import LineObserver, RichObserver


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class Lines:
    """A console that keeps what it was told."""

    def __init__(self) -> None:
        self.lines: list[str] = []

    def say(self, message: str) -> None:
        self.lines.append(message)


def test_counts_carry_their_unit_and_the_time_left() -> None:
    clock = Clock()
    phase = PhaseTracker("inversion: pretrain", 800, clock=clock)
    phase.update(0, 800, "loss 1.000")
    clock.now += 30
    phase.update(312, 800, "loss 0.412")
    assert phase.counts() == "312/800 steps"
    left = phase.remaining()
    assert left is not None and abs(left - (800 - 312) * 30 / 312) < 1e-6
    assert phase.status() == f"312/800 steps (39%), about {duration(left)} left, loss 0.412"
    matching = PhaseTracker("matching reconstructions against non-member images", 300, clock=clock)
    matching.update(120, 300, "non-member images")
    assert matching.counts() == "120/300 non-member images"


def test_a_phase_that_stops_early_says_how_far_it_got() -> None:
    clock = Clock()
    phase = PhaseTracker("matching reconstructions against training images", 500, clock=clock)
    phase.update(200, 500, "training images")
    clock.now += 65
    assert phase.ending() == "ended at 200/500 training images (40%) after 1m05s"
    phase.update(500, 500, "training images")
    assert phase.ending().startswith("done, 500/500 training images")


def test_log_lines_mark_each_phase_start_and_end_and_beat_in_between() -> None:
    console = Lines()
    observer = LineObserver(console, heartbeat_s=0.05)
    try:
        observer.phase("inverting the classifier", 900)
        observer.phase("inversion: pretrain", 900)  # the heading above is replaced at once: no end line for it
        observer.advance(300, 900, "loss 0.5")
        time.sleep(0.3)
        observer.phase("statistics")
    finally:
        observer.close()
    lines = console.lines
    assert lines[0] == "· inverting the classifier (900 steps)" and lines[1] == "· inversion: pretrain (900 steps)"
    beats = [line for line in lines if line.startswith("  inversion: pretrain: 300/900 steps (33%)")]
    assert beats, lines  # a heartbeat with counts while nothing else is printed
    assert "  inversion: pretrain: reached 300 of 900 steps after 0 s" in lines
    assert not any(line.startswith("  inverting the classifier:") for line in lines)
    assert lines.index("· statistics") > lines.index("  inversion: pretrain: reached 300 of 900 steps after 0 s")


def test_the_terminal_bar_shows_units_and_does_not_jump_to_the_end() -> None:
    stream = io.StringIO()
    bar = RichObserver(stream)
    bar._rich.width = 140  # a wide terminal, so nothing is cut
    bar.phase("inverting the classifier", 900)
    bar.phase("inversion: pretrain", 900)
    bar.advance(300, 900, "loss 0.5")
    bar.phase("matching reconstructions against training images", 10)
    bar.advance(10, 10, "training images")
    bar.close()
    text = stream.getvalue()
    assert "300/900 steps" in text and "ended here" in text  # stopped where it got to
    assert "900/900" not in text and "10/10 training images" in text
    assert "inverting the classifier" not in text  # a heading that was replaced at once leaves no bar
