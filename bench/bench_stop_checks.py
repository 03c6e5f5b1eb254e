"""How soon matching sees a stop request or the budget's end: the longest gap between two of its stop checks.

Prints figures; not a test. A search polls its ``should_stop`` between chunks of
images (exact all-pairs search: 512 images; prefilter: 4,096 scored pairs; above
64×64: every image); a stop request or the budget's end is seen at the next poll,
so the longest gap between polls bounds how long matching runs on after either.
The same search without polling is timed beside it: polling must cost nothing.

    python -m bench.bench_stop_checks --threads 1          # about two minutes on a loaded 2-core machine
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass

import torch

from leakaudit.matching.search import best_matches
from leakaudit.zoo import bundled_images


@dataclass(frozen=True)
class Case:
    """One matching problem: candidates × images at a size, exact or prefiltered."""

    name: str
    side: int
    channels: int
    candidates: int
    images: int
    prefilter: int | None = None


CASES = (
    Case("32×32 gray, exact", 32, 1, 200, 1536),
    Case("32×32 gray, prefilter 50", 32, 1, 1000, 1500, prefilter=50),
    Case("3×224×224, exact (pairwise)", 224, 3, 80, 6),
)


class Gaps:
    """A stop check that never stops and records the time between its polls."""

    def __init__(self) -> None:
        self.last = time.perf_counter()
        self.longest = 0.0
        self.polls = 0

    def __call__(self) -> bool:
        now = time.perf_counter()
        self.longest, self.last, self.polls = max(self.longest, now - self.last), now, self.polls + 1
        return False


def _data(case: Case) -> tuple[torch.Tensor, torch.Tensor]:
    digits, _, _ = bundled_images("digits", case.side)
    digits = digits.repeat(1, case.channels, 1, 1)
    images = digits[: case.images]
    candidates = digits[len(digits) - case.candidates:].float() / 255
    return candidates, images


def measure(case: Case) -> dict[str, float]:
    """Seconds of the plain search, of the polled one, and the longest gap between polls (from the start too)."""
    candidates, images = _data(case)
    t0 = time.perf_counter()
    plain = best_matches(candidates, images, k=5, prefilter=case.prefilter)
    plain_s = time.perf_counter() - t0
    gaps = Gaps()
    t0 = gaps.last = time.perf_counter()
    polled = best_matches(candidates, images, k=5, prefilter=case.prefilter, should_stop=gaps)
    polled_s = time.perf_counter() - t0
    tail = time.perf_counter() - gaps.last  # after the last poll: the last chunk
    assert torch.equal(plain.best_ssim, polled.best_ssim) and torch.equal(plain.best_index, polled.best_index)
    return {"plain_s": plain_s, "polled_s": polled_s, "polls": gaps.polls, "longest_gap_s": max(gaps.longest, tail)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"threads {args.threads}")
    print(f"{'case':<32} {'pairs':>9} {'plain s':>8} {'polled s':>9} {'polls':>6} {'longest gap s':>14}")
    for case in CASES:
        row = measure(case)
        print(f"{case.name:<32} {case.candidates * case.images:>9} {row['plain_s']:>8.2f} {row['polled_s']:>9.2f} "
              f"{row['polls']:>6.0f} {row['longest_gap_s']:>14.2f}")


if __name__ == "__main__":
    main()
