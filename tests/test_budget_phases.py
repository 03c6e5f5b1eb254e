"""The budget after the attack: matching, the positive control and the membership phase end at it, and the audit
still writes its document, incomplete (exit 2) and saying which phase the budget cut.

Where the budget ends is chosen without timing: the audit measures ``--budget`` by a clock the test passes to
``api.run``, and the test's observer moves that clock past the budget when the phase it names starts (or first
reports progress). The searches' own stop checks are driven the same way, by counting their polls.
"""

from __future__ import annotations

import copy
import json
import time
import xml.etree.ElementTree as ET
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import torch

from leakaudit import api
from leakaudit.cli.console import summary_lines
from leakaudit.data.folders import load_image_folder
from leakaudit.exit_codes import ExitStatus
from leakaudit.gate.verdict import GateSettings, apply_gate
from leakaudit.matching.search import best_matches
from leakaudit.matching.topk import BestMatches
from leakaudit.record import BudgetCut, dump, load
from leakaudit.report import render_markdown
from leakaudit.report.junit import render_junit
from leakaudit.zoo import bundled_images

from .conftest import TinyReference
from .scenarios import TODAY, scenario, with_references

PAST_THE_BUDGET_S = 1e6
MEMBER_PASS = "matching reconstructions against training images"
MEMBERSHIP_LOGITS = "membership: the target's logits"


def _digits(count: int, side: int = 32, start: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    images, labels, _ = bundled_images("digits", side)
    return images[start:start + count], labels[start:start + count]


class StopAfter:
    """A stop check that asks to stop from its ``asks``-th poll on, and counts the polls."""

    def __init__(self, asks: int | None) -> None:
        self.asks, self.polls = asks, 0

    def __call__(self) -> bool:
        self.polls += 1
        return self.asks is not None and self.polls >= self.asks


def _same(a: BestMatches, b: BestMatches, rows: int | None = None) -> bool:
    """Both directions' per-image results equal, bit for bit, over the first ``rows`` images (all by default)."""
    end = len(b.best_index) if rows is None else rows
    if rows is None and len(a.best_index) != end:
        return False
    return all(torch.equal(getattr(a, name)[:end], getattr(b, name)[:end])
               for name in ("best_index", "best_ssim", "topk_index", "topk_ssim"))


# --- the searches ------------------------------------------------------------------------------------------------

def test_a_search_that_is_never_asked_to_stop_is_unchanged_bit_for_bit() -> None:
    candidates = _digits(12, start=200)[0].float() / 255
    images = _digits(40)[0]
    for kw in ({}, {"max_prepared_bytes": 1}, {"prefilter": 3}):
        plain = best_matches(candidates, images, k=3, image_chunk=16, **kw)  # type: ignore[arg-type]
        polled = best_matches(candidates, images, k=3, image_chunk=16, should_stop=StopAfter(None),
                              **kw)  # type: ignore[arg-type]
        assert _same(polled, plain) and not polled.cut, kw
        assert torch.equal(polled.nearest_image, plain.nearest_image) and polled.pairs_scored == plain.pairs_scored


def test_the_exact_search_stops_between_chunks_and_keeps_the_images_it_matched() -> None:
    candidates = _digits(12, start=200)[0].float() / 255
    images = _digits(40)[0]
    full = best_matches(candidates, images, k=3, image_chunk=16)
    stop = StopAfter(1)
    cut = best_matches(candidates, images, k=3, image_chunk=16, should_stop=stop)
    assert stop.polls == 1  # polled before the second chunk, never before the first
    assert cut.cut and cut.exact and len(cut.best_index) == 16
    assert _same(cut, full, 16)  # the images it matched: exactly as the whole search matches them
    # candidates in groups of one: stopped in the first group, each image's best over the candidates scored so far
    grouped = best_matches(candidates, images, k=1, image_chunk=16, max_prepared_bytes=1, should_stop=StopAfter(1))
    assert grouped.cut and not grouped.exact and len(grouped.best_index) == 16
    first = best_matches(candidates[:1], images[:16], k=1)
    assert torch.equal(grouped.best_ssim, first.best_ssim)


def test_the_prefiltered_search_keeps_the_images_whose_pairs_were_all_scored() -> None:
    candidates = _digits(12, start=1700)[0].float() / 255
    images = _digits(1600)[0]  # 3 screened pairs an image: more pairs than one chunk of exact scoring
    full = best_matches(candidates, images, k=3, prefilter=3)
    cut = best_matches(candidates, images, k=3, prefilter=3, should_stop=StopAfter(1))
    assert cut.cut and 0 < len(cut.best_index) < len(images)
    assert _same(cut, full, len(cut.best_index))


def test_the_pairwise_search_of_large_images_stops_after_an_image() -> None:
    candidates = _digits(3, side=72, start=300)[0].float() / 255  # above 64×64: one image at a time
    images = _digits(4, side=72)[0]
    full = best_matches(candidates, images, k=2)
    cut = best_matches(candidates, images, k=2, should_stop=StopAfter(2))
    assert cut.cut and len(cut.best_index) == 2 and cut.pairs_scored == 3 * 2
    assert _same(cut, full, 2)


# --- the gate and the document -----------------------------------------------------------------------------------

CUT = BudgetCut("membership", "--budget 600 s was spent before the membership phase could ask the model for its "
                              "logits: the membership tests did not run")


def test_a_phase_the_budget_cut_makes_the_audit_incomplete_unless_what_finished_already_fails() -> None:
    document = copy.deepcopy(scenario(leaky=False).document)
    document["budget_cuts"] = [CUT.to_dict()]
    gated = apply_gate(document, GateSettings(), today=TODAY)
    assert gated["verdict"] == "incomplete" and gated["exit_code"] == ExitStatus.INCOMPLETE
    assert any(n.startswith("The budget ended the audit during membership") for n in gated["summary"]["notes"])
    record = load(gated)  # validated against the schema
    assert record.budget_cuts == (CUT,) and record.incomplete and record.exposure_kind == "incomplete"
    assert record.headline == "Incomplete: the budget ended the audit during membership"
    assert dump(record)["budget_cuts"] == [CUT.to_dict()]
    del document["budget_cuts"]
    assert apply_gate(document, GateSettings(), today=TODAY)["verdict"] in ("pass", "warn")
    leaky = copy.deepcopy(scenario(leaky=True).document)
    leaky["budget_cuts"] = [CUT.to_dict()]
    failed = apply_gate(leaky, GateSettings(), today=TODAY)
    assert failed["verdict"] == "fail" and failed["exit_code"] == ExitStatus.GATE_FAILED  # evidence is evidence
    assert any("already fails the gate" in n for n in failed["summary"]["notes"])
    assert load(failed).headline.endswith("(from an audit the budget ended during membership)")


def test_a_membership_phase_the_budget_cut_short_is_named_in_the_headline_not_the_attack() -> None:
    s = with_references(scenario(leaky=False), 4)
    s.document["membership_attacks"].update(complete=False, reference_models=1)  # 1 of 4 models, then the budget
    record = load(apply_gate(s.document, GateSettings(), today=TODAY))
    assert record.verdict == "incomplete" and record.inversion.complete
    assert record.headline == "Incomplete: the budget ended the audit during membership"
    s.document["budget_cuts"] = [BudgetCut("positive control", "--budget 900 s ended the control's attack").to_dict()]
    both = load(apply_gate(s.document, GateSettings(), today=TODAY))
    assert both.headline == "Incomplete: the budget ended the audit during positive control, membership"


# --- whole audits ------------------------------------------------------------------------------------------------

QUICK_SETTINGS: dict[str, Any] = {
    "power_check": False, "prior": "none", "budget": 600, "reference_models": 0,
    "inversion": {"width": 16, "batch_per_class": 2, "steps": 30, "pool_per_class": 8, "candidates_per_class": 2,
                  "refine_steps": 10, "kkt_steps": 10, "checkpoint_every": 10},
}
NO_FAIL = {"fail_ssim": False, "fail_leak_score": False}  # what was matched cannot fail: the verdict is incomplete


class BudgetEndsAt:
    """The audit's observer and budget clock: the clock jumps past any budget when the named phase starts (or, with
    ``on_advance``, first reports progress). Counts every phase's progress reports."""

    def __init__(self, phase: str, *, on_advance: bool = False) -> None:
        self.target, self.on_advance = phase, on_advance
        self.offset, self.current = 0.0, ""
        self.advances: Counter[str] = Counter()

    def clock(self) -> float:
        return time.monotonic() + self.offset

    @property
    def jumped(self) -> bool:
        return self.offset > 0

    def phase(self, name: str, total: int | None = None) -> None:
        self.current = name
        if not self.on_advance and name.startswith(self.target):
            self.offset = PAST_THE_BUDGET_S

    def advance(self, done: int, total: int | None = None, detail: str = "") -> None:
        self.advances[self.current] += 1
        if self.on_advance and self.current.startswith(self.target):
            self.offset = PAST_THE_BUDGET_S

    def note(self, message: str) -> None:
        pass


def _many_members(tiny: TinyReference) -> tuple[torch.Tensor, torch.Tensor]:
    """The tiny reference's members and enough other digits beside them that matching takes two chunks of 512."""
    train = load_image_folder(tiny.train_dir, channels=1, size=(32, 32))
    others = _digits(570, start=1000)
    return torch.cat([train.images, others[0]]), torch.cat([train.labels, others[1]])


def _holdout(tiny: TinyReference) -> tuple[torch.Tensor, torch.Tensor]:
    holdout = load_image_folder(tiny.holdout_dir, channels=1, size=(32, 32))
    return holdout.images, holdout.labels


def _run(tiny: TinyReference, out: Path, train: Any, holdout: Any, observer: BudgetEndsAt,
         stop: StopAfter | None = None, gate: dict[str, Any] | None = None) -> api.AuditReport:
    settings = api.build_settings(str(tiny.torchscript), train, holdout, effort="quick", seed=1, out=out,
                                  gate=gate, **QUICK_SETTINGS)
    return api.run(settings, observer=observer, should_stop=stop, clock=observer.clock)


def _written(out: Path, report: api.AuditReport) -> dict[str, Any]:
    document: dict[str, Any] = json.loads((out / "leakaudit.json").read_text())
    assert document == json.loads(json.dumps(report.document))
    load(document)  # a valid findings document
    return document


@pytest.mark.slow
def test_a_budget_that_ends_in_matching_keeps_the_members_matched_so_far(tiny: TinyReference,
                                                                         tmp_path: Path) -> None:
    observer = BudgetEndsAt(MEMBER_PASS, on_advance=True)
    report = _run(tiny, tmp_path / "o", _many_members(tiny), _holdout(tiny), observer, gate=NO_FAIL)
    assert observer.jumped and observer.advances[MEMBER_PASS] == 1  # the search ended at its next chunk
    assert report.exit_status == ExitStatus.INCOMPLETE
    document = _written(tmp_path / "o", report)
    assert document["verdict"] == "incomplete" and document["exit_code"] == 2
    assert document["inversion"]["complete"] is True  # the attack finished: the budget ended what came after it
    cuts = {c["phase"]: c["reason"] for c in document["budget_cuts"]}
    assert list(cuts) == ["matching", "membership"]
    assert "ended matching the reconstructions against the members after 512 of 600" in cuts["matching"]
    assert "did not run" in cuts["membership"]
    # what finished stays: the 512 members matched, their findings; without the non-members' matches, uncalibrated
    assert document["summary"]["n_train"] == 512 and document["findings"]
    assert document["calibrated"] is False and document["summary"]["leak_score"] is None
    assert document["summary"]["membership"] is None
    assert any(n.startswith("Incomplete matching: --budget 600 s ended") for n in document["summary"]["notes"])
    assert any(n.startswith("The budget ended the audit during matching, membership") for n in
               document["summary"]["notes"])
    # every format says which phase the budget cut
    assert f"  incomplete matching: {cuts['matching']}" in summary_lines(document, [])
    assert "**Incomplete matching**" in render_markdown(document)
    junit = {c.get("name"): c for c in ET.fromstring(render_junit(document)).iter("testcase")}
    assert junit["leakaudit.gate.matching_complete"].find("failure") is not None
    assert "Incomplete membership: " in report.to_html()
    # a finished attack whose matches already fail keeps failing, as a cut attack does
    failed = apply_gate(document, GateSettings(fail_ssim=0.01, warn_ssim=0.01), today=TODAY)
    assert failed["verdict"] == "fail" and failed["exit_code"] == ExitStatus.GATE_FAILED


@pytest.mark.slow
def test_a_budget_that_ends_before_the_membership_pass_writes_an_incomplete_document(tiny: TinyReference,
                                                                                      tmp_path: Path) -> None:
    observer = BudgetEndsAt(MEMBERSHIP_LOGITS)
    report = _run(tiny, tmp_path / "o", str(tiny.train_dir), str(tiny.holdout_dir), observer, gate=NO_FAIL)
    assert observer.jumped
    assert report.exit_status == ExitStatus.INCOMPLETE
    document = _written(tmp_path / "o", report)
    assert document["verdict"] == "incomplete" and document["exit_code"] == 2
    assert document["budget_cuts"] == [{"phase": "membership", "reason": (
        "--budget 600 s was spent before the membership phase could ask the model for its logits: the membership "
        "tests did not run")}]
    # everything before it finished and stays: every member matched against the calibrated null
    assert document["summary"]["n_train"] == 30 and document["calibrated"] is True
    assert document["summary"]["leak_score"] is not None and document["summary"]["membership"] is None
    assert not (tmp_path / "o" / "checkpoints").exists()


@pytest.mark.slow
def test_a_stop_request_during_matching_ends_it_at_the_next_chunk(tiny: TinyReference, tmp_path: Path) -> None:
    observer = BudgetEndsAt("no phase of the audit")  # the clock never moves: only the stop request ends it

    class StopAtMatching(StopAfter):
        def __call__(self) -> bool:
            return observer.advances[MEMBER_PASS] > 0

    report = _run(tiny, tmp_path / "o", _many_members(tiny), _holdout(tiny), observer, stop=StopAtMatching(None))
    assert report.exit_status == ExitStatus.INTERRUPTED
    assert observer.advances[MEMBER_PASS] == 1  # the second chunk of 512 members was never matched
    assert not (tmp_path / "o" / "leakaudit.json").exists()


@pytest.mark.slow
def test_a_budget_that_ends_as_the_positive_control_starts_leaves_power_and_membership_out(
        tiny: TinyReference, tmp_path: Path) -> None:
    observer = BudgetEndsAt("power: control K=")
    settings = api.build_settings(str(tiny.torchscript), str(tiny.train_dir), str(tiny.holdout_dir), effort="quick",
                                  seed=1, out=tmp_path / "o", gate=NO_FAIL, **{**QUICK_SETTINGS, "power_check": True})
    report = api.run(settings, observer=observer, clock=observer.clock)
    assert observer.jumped and report.exit_status == ExitStatus.INCOMPLETE
    document = _written(tmp_path / "o", report)
    cuts = {c["phase"]: c["reason"] for c in document["budget_cuts"]}
    assert list(cuts) == ["positive control", "membership"]
    assert cuts["positive control"].startswith("--budget 600 s ended the positive control after 0 of ")
    assert document["power"]["status"] == "not measured"
    assert document["summary"]["leak_score"] is not None  # matching finished before it: kept


@pytest.mark.slow  # the confined worker: a subprocess
def test_a_worker_past_the_budgets_ceiling_in_the_membership_pass_ends_the_phase_not_the_audit(
        tiny: TinyReference, tmp_path: Path) -> None:
    """What a slow model at 224×224 met: the session's deadline (the budget plus its margin) had passed by the time
    the membership pass asked for the logits. The worker is ended; the phase is left out, said so."""
    from leakaudit.confine.session import ConfinedSession, open_session
    from leakaudit.pipeline.inputs import audit_sets, load_inputs
    from leakaudit.pipeline.membership_run import membership_phase
    from leakaudit.pipeline.provenance import StageTimer
    from leakaudit.pipeline.run_context import RunContext
    from leakaudit.runtime.distributed import DistContext

    observer = BudgetEndsAt("no phase of the audit")  # the audit's own clock: well within the budget
    settings = api.build_settings(str(tiny.torchscript), str(tiny.train_dir), str(tiny.holdout_dir), effort="quick",
                                  seed=1, out=tmp_path / "o", **QUICK_SETTINGS)
    dist = DistContext.single()
    model = open_session(settings, dist, 1)
    if not isinstance(model, ConfinedSession):
        model.close()
        pytest.skip("the model cannot run confined here: no worker, no ceiling")
    try:
        run = RunContext(settings, observer, lambda: False, dist, StageTimer(), 1, observer.clock)
        inputs = load_inputs(settings, observer, model)
        model.deadline = time.monotonic()  # the budget and its margin spent in the worker's clock
        phase = membership_phase(run, inputs, audit_sets(inputs, settings))
    finally:
        model.close()
    assert phase is not None and phase.result is None and phase.logits_train is None
    assert phase.cut is not None and phase.cut.startswith("--budget 600 s ended the phase (the model's worker ran "
                                                          "past the budget's ceiling (0 s) during the membership pass")
