"""A short Markdown summary for a CI job page (e.g. ``$GITHUB_STEP_SUMMARY``): no images.

User strings are neutralised for GitHub-flavoured Markdown by
``sanitize.markdown_text``: HTML, emphasis, strike, links, autolinks and
@mentions stay plain text.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from leakaudit.sanitize import markdown_text

SYMBOLS = {"pass": "✔ PASS", "warn": "⚠ WARN", "fail": "✖ FAIL", "incomplete": "◌ INCOMPLETE"}
STATUS = {"pass": "✔ pass", "ok": "✔ ok", "warn": "⚠ warn", "fail": "✖ fail", "skipped": "– skipped", "ignored": "⊘ ignored"}
MAX_ROWS = 10


def md_escape(text: object) -> str:
    """Text safe inside a Markdown table cell (``sanitize.markdown_text``)."""
    return markdown_text(text)


def _num(value: Any) -> str:
    return "–" if value is None else f"{float(value):.3f}"


def render_markdown(document: Mapping[str, Any], max_rows: int = MAX_ROWS) -> str:
    """Verdict, gate conditions and the top findings as Markdown tables."""
    verdict = document.get("verdict", "fail")
    summary = document["summary"]
    lines = [f"## leakaudit: {SYMBOLS.get(verdict, verdict)} (exit code {document.get('exit_code')})", ""]
    inversion = document.get("inversion") or {}
    if inversion.get("complete") is False:
        lines += [f"**Incomplete attack**: {md_escape(inversion.get('incomplete_reason') or 'cut short by the budget')}", ""]
    if document.get("exposure"):
        lines += [f"Exposure: **{md_escape(document['exposure']['statement'])}**.", ""]
    leak = summary.get("leak_score")
    if leak:
        lines.append(
            f"Leak score **{leak['value']:.3f}** (95% CI {leak['ci_low']:.3f}–{leak['ci_high']:.3f}, "
            f"p = {leak['p_value']:.3g}; 0.5 = members matched no better than non-members)."
        )
    else:
        lines.append("Leak score not available: no holdout of non-member images.")
    lines.append(
        ("Calibrated by a holdout." if document.get("calibrated") else "**Uncalibrated**: no holdout, absolute thresholds.")
        + f" Mode: {md_escape(document.get('mode'))}. {summary['n_train']} training images, "
        f"{summary['n_candidates']} reconstructions."
    )
    if ((document.get("provenance") or {}).get("model") or {}).get("format") == "pickle":
        lines += ["", "**Warning: --unsafe-pickle.** The model file was unpickled, so code from it ran."]
    lines += ["", "| Condition | Status | Threshold | Observed | Explanation |", "|---|---|---:|---:|---|"]
    for c in (document.get("gate") or {}).get("conditions") or []:
        lines.append(
            f"| {c['name']} | {STATUS.get(c['status'], c['status'])} | {_num(c.get('threshold'))} | "
            f"{_num(c.get('observed'))} | {md_escape(c['message'])} |"
        )
    findings = (document.get("findings") or [])[:max_rows]
    if findings:
        lines += [
            "",
            f"Top {len(findings)} of {len(document.get('findings') or [])} findings:",
            "",
            "| Rank | Class | File | SSIM | LPIPS | Status | Baseline |",
            "|---:|---|---|---:|---:|---|---|",
        ]
        for f in findings:
            lines.append(
                f"| {f['rank']} | {md_escape(f['class'])} | {md_escape(f['path'])} | {_num(f['ssim'])} | "
                f"{_num(f.get('lpips'))} | {STATUS.get(f['status'], f['status'])} | {f.get('baseline_status') or '–'} |"
            )
    lines += ["", "The full report with images is `report.html` in the output folder.", ""]
    return "\n".join(lines)
