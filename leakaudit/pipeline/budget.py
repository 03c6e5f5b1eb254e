"""The budget policy: how much of ``--budget`` the inversion may use, and what an unfinished attack says.

``--budget`` is a ceiling on the whole audit, never the amount of work: the
attack's steps are fixed by the inputs and the effort level. The inversion
gets what loading left, minus a cautious estimate of what matching and
reporting will take after it.
"""

from __future__ import annotations

from leakaudit.config import AuditSettings
from leakaudit.inversion import InversionResult
from leakaudit.matching.search import matched_pairs
from leakaudit.pipeline.run_context import RunContext

MATCH_PAIRS_PER_S = 50_000  # cautious exhaustive-SSIM rate at 32×32 gray on 2 loaded cores
REPORT_RESERVE_S = 10.0  # statistics, LPIPS, rendering and writing
MIN_INVERSION_S = 5.0  # below this the inversion cannot produce anything worth matching


def matching_reserve_s(n_candidates: int, n_images: int, shape: tuple[int, int, int], informed: bool) -> float:
    """A cautious estimate of the seconds that matching and reporting take after the inversion.

    Exhaustive SSIM runs at roughly 50,000 pairs/s of 32×32 gray on two loaded
    CPU cores and scales with the pixel count; informed audits also match the
    pre-trained candidates. The fixed part covers statistics, LPIPS and writing.
    """
    pixels = shape[0] * max(1, shape[1] - 10) * max(1, shape[2] - 10)
    pairs_per_s = MATCH_PAIRS_PER_S * (22 * 22) / pixels
    pairs = matched_pairs(n_candidates, n_images) * (2 if informed else 1)
    return REPORT_RESERVE_S + pairs / pairs_per_s


def inversion_ceiling(budget_s: float, elapsed_s: float, reserve_s: float) -> float:
    """Seconds the inversion may run: the budget less what has been spent and what matching will need."""
    return max(MIN_INVERSION_S, budget_s - elapsed_s - reserve_s)


def incomplete_reason(result: InversionResult, settings: AuditSettings) -> str:
    """One line: how much of the attack ran, and what to change so that it finishes."""
    budget = budget_words(settings)
    lower = {"thorough": "standard", "standard": "quick"}.get(settings.effort)
    advice = "raise --budget" + (f" or choose --effort {lower}" if lower else "")
    return (f"{budget} ended the inversion after {result.steps} of its {result.planned_steps} "
            f"planned steps ({result.completed_fraction:.0%}, effort {settings.effort}); an unfinished attack cannot "
            f"pass: {advice}.")


class StopOrBudget:
    """A stage's stop check: a stop request, or the audit's budget spent (remembered, so the stage can say which)."""

    def __init__(self, run: RunContext) -> None:
        self.run = run
        self.spent = False

    def __call__(self) -> bool:
        left = self.run.budget_left_s()
        self.spent = self.spent or (left is not None and left <= 0)
        return self.run.stop() or self.spent


def budget_words(settings: AuditSettings) -> str:
    """How the document names the budget: ``--budget 900 s``."""
    return f"--budget {settings.budget:g} s" if settings.budget is not None else "the budget"
