"""The most-leaked list ranks training images by both signals, each named, and every output lists the same images.

The documents are the real-data scenarios of ``tests/scenarios.py`` with reference-model rows evaluated on their
own figures, gated; the list comes from ``report.ranking.most_leaked`` alone.
"""

from __future__ import annotations

import re
from typing import Any

import numpy as np

from leakaudit.cli.console import summary_lines
from leakaudit.gate.verdict import GateSettings, apply_gate
from leakaudit.record import load
from leakaudit.report import render_html, render_markdown
from leakaudit.report.ranking import MOST_LEAKED, most_leaked

from .scenarios import Scenario, TODAY, scenario, with_references


def _gated(s: Scenario) -> dict[str, Any]:
    return apply_gate(s.document, GateSettings(), today=TODAY)


def _terminal_labels(document: dict[str, Any]) -> list[str]:
    lines = summary_lines(document, [])
    start = next(k for k, line in enumerate(lines) if "training images" in line and line.rstrip().endswith(":"))
    listed = []
    for line in lines[start + 1:]:
        match = re.match(r"    \d+\. \w+: (.+?): (reconstruction|membership):", line)
        if match is None:
            break
        listed.append(match.group(1))
    return listed


def _markdown_labels(document: dict[str, Any]) -> list[str]:
    lines = render_markdown(document).splitlines()
    found = [re.match(r"\d+\. \S+ \w+: (.+?)\\: (reconstruction|membership)\\:", line) for line in lines]
    return [m.group(1).replace("\\", "") for m in found if m]


def _html_labels(html: str) -> list[str]:
    top = html[html.index('id="top-leaked"'):]
    top = top[:top.index("</ol>")]
    return [m.strip() for m in re.findall(r'<span class="cap">\d+ · .*?</span> · (.+?)<br>', top)]


def test_a_leaky_model_lists_images_counted_by_both_signals_and_every_output_agrees() -> None:
    document = _gated(with_references(scenario(leaky=True), 8))
    record = load(document)
    samples = most_leaked(record)
    assert len(samples) == MOST_LEAKED
    strongest = record.membership_attacks.strongest.name  # type: ignore[union-attr]
    for s in samples:
        assert s.status == "fail" and s.counts == ("reconstruction", "membership")
        assert s.reasons[0].startswith("reconstruction: SSIM ") and "over the holdout's p95" in s.reasons[0]
        assert s.reasons[1].startswith(f"membership: {strongest} ranks it ")
        assert "identified at 1.0% FPR" in s.reasons[1]
    labels = [s.label for s in samples]
    assert labels == [f.path for f in record.findings[:MOST_LEAKED]]  # the membership ranks agree with SSIM here
    assert _terminal_labels(document) == labels
    assert _markdown_labels(document) == labels
    assert _html_labels(render_html(document, {})) == labels


def test_the_two_lists_interleave_and_an_image_on_both_is_one_row() -> None:
    """Membership ranks the members the other way round from SSIM: the list alternates, reconstruction first."""
    s = with_references(scenario(leaky=True), 8)
    exposed = s.document["membership_attacks"]["exposed"]
    s.document["membership_attacks"]["exposed"] = exposed[::-1]
    s.arrays["membership_train_images"] = s.arrays["membership_train_images"][::-1]
    document = _gated(s)
    samples = most_leaked(load(document))
    assert [x.placed_by for x in samples] == ["reconstruction", "membership"] * 2 + ["reconstruction"]
    by_ssim = [f["train_index"] for f in document["findings"]]
    by_score = [e["index"] for e in exposed[::-1]]
    assert [x.train_index for x in samples] == [by_ssim[0], by_score[0], by_ssim[1], by_score[1], by_ssim[2]]
    assert len({x.train_index for x in samples}) == len(samples)
    assert samples[1].membership is not None and samples[1].membership.rank == 1
    assert samples[1].reasons[0].startswith("membership: ")  # the signal that placed it is named first
    assert _terminal_labels(document) == _markdown_labels(document) == [x.label for x in samples]


def test_a_member_with_no_finding_is_listed_by_membership_with_its_own_pictures() -> None:
    s = with_references(scenario(leaky=True), 8)
    s.document["membership_attacks"]["exposed"] = s.document["membership_attacks"]["exposed"][::-1]
    s.arrays["membership_train_images"] = s.arrays["membership_train_images"][::-1]
    document = _gated(s)
    document["findings"] = document["findings"][:2]  # the top members by membership have no listed finding
    s.arrays["finding_train_images"] = s.arrays["finding_train_images"][:2]
    samples = most_leaked(load(document))
    assert [x.placed_by for x in samples] == ["reconstruction", "membership"] * 2 + ["membership"]
    assert [x.status for x in samples] == ["fail"] * 5 and samples[0].finding is not None
    alone = [x for x in samples if x.finding is None]
    assert alone and all(x.placed_by == "membership" and x.label == f"training image {x.train_index}" for x in alone)
    html = render_html(document, s.arrays)
    top = html[html.index('id="top-leaked"'):html.index("</ol>", html.index('id="top-leaked"'))]
    first_alone = alone[0].membership
    assert first_alone is not None
    assert f'href="#exposed-{first_alone.rank}"' in top and f'id="exposed-{first_alone.rank}"' in html
    assert f'alt="training image {alone[0].train_index}"' in top  # the member's own picture, from the arrays
    assert _html_labels(html) == [x.label for x in samples]


def test_a_clean_model_lists_leads_none_counted() -> None:
    document = _gated(with_references(scenario(leaky=False), 8))
    samples = most_leaked(load(document))
    assert samples and all(s.status == "ok" and s.counts == () for s in samples)
    assert not any("identified" in reason for s in samples for reason in s.reasons)
    assert "Best-matched and most exposed training images (none flagged)" in render_markdown(document)


def test_without_reference_models_the_list_is_the_reconstruction_findings() -> None:
    document = _gated(scenario(leaky=True))
    record = load(document)
    flagged = [f for f in record.findings if f.flagged]
    samples = most_leaked(record)
    assert [s.train_index for s in samples] == [f.train_index for f in flagged[:MOST_LEAKED]]
    assert all(s.membership is None and s.placed_by == "reconstruction" for s in samples)
    assert np.all([len(s.reasons) == 1 for s in samples])
    assert _terminal_labels(document) == _markdown_labels(document) == [s.label for s in samples]
