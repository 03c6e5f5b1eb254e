"""A short Markdown summary for a CI job page (``$GITHUB_STEP_SUMMARY``, a GitLab MR note): no images.

What holds comes first, in plain words; then the failing conditions, the
gate table with its long explanations folded into ``<details>``, and the top
findings with fingerprints (the key of an ``ignore`` entry). Cells stay
narrow: long file names are shortened in the middle, so the table does not
run off a review page. User strings are neutralised for GitHub-flavoured
Markdown by ``sanitize.markdown_text``: HTML, emphasis, strike, links,
autolinks and @mentions stay plain text, and table pipes are escaped.
"""

from __future__ import annotations

from leakaudit.record import AuditRecord, Finding, as_record
from leakaudit.report.ranking import list_title, most_leaked, sample_line
from leakaudit.report.summary import SYMBOLS, Readable, format_p, membership_line, summarise, tidy_numbers
from leakaudit.sanitize import document_text, markdown_text

STATUS = {
    "pass": "✔ pass",
    "ok": "✔ ok",
    "warn": "⚠ warn",
    "fail": "✖ fail",
    "skipped": "– skipped",
    "ignored": "⊘ ignored",
}
MAX_ROWS = 10
SHOWN_ROWS = 5  # in the table; the rest of MAX_ROWS folded into <details>
MAX_CELL = 40


def md_escape(text: object) -> str:
    """Text safe inside a Markdown table cell (``sanitize.markdown_text``)."""
    return markdown_text(text)


def shorten(text: object, width: int = MAX_CELL) -> str:
    """At most ``width`` characters, cut in the middle (the class folder and the file name both stay)."""
    s = str(text)
    if len(s) <= width:
        return s
    keep = (width - 1) // 2
    return s[:keep] + "…" + s[len(s) - (width - 1 - keep):]


def _num(value: float | None) -> str:
    return "–" if value is None else f"{float(value):.3f}"


def _headline(record: AuditRecord) -> list[str]:
    plain = summarise(record)
    verdict = plain.verdict
    lines = [f"## leakaudit: {SYMBOLS.get(verdict, '')} {verdict.upper()}: {plain.headline} "
             f"(exit code {record.exit_code})", ""]
    if plain.detail:
        lines += [md_escape(plain.detail), ""]
    lines += [f"- {STATUS.get(c.status, c.status)} **{c.name}**: {md_escape(c.text)}" for c in plain.conditions]
    leak = record.summary.leak_score
    if leak is not None:
        lines.append(f"- Leak score **{leak.value:.3f}** (95% CI {leak.ci_low:.3f}–{leak.ci_high:.3f}, "
                     f"{format_p(leak.p_value)}; 0.5 = members matched no better than non-members)")
    else:
        lines.append("- Leak score not available: no holdout of non-member images.")
    if plain.power is not None:
        lines.append(f"- **Power {plain.power}**: {md_escape(plain.power_text)}")
    membership = membership_line(record)
    if membership is not None:
        lines.append(f"- **Membership**: {md_escape(membership[0].upper() + membership[1:])}")
    return lines + _most_leaked(record) + _power_table(record) + _attack_table(record)


def _most_leaked(record: AuditRecord) -> list[str]:
    """The images a reviewer reads first, ranked by both signals (``ranking.most_leaked``), each signal named."""
    samples = most_leaked(record)
    if not samples:
        return []
    lines = ["", f"**{list_title(samples)}** (reconstruction and membership, interleaved; each row names its signals):",
             ""]
    return lines + [f"{k}. {STATUS.get(s.status, s.status)}: {md_escape(sample_line(s))}"
                    for k, s in enumerate(samples, 1)]


def _attack_table(record: AuditRecord) -> list[str]:
    """Every membership attack's row, when reference models were trained."""
    attacks = record.membership_attacks
    if attacks is None or attacks.reference_models == 0:
        return []
    lines = ["", "| Membership attack | AUC (95% CI) | TPR at 1% FPR | TPR at 0.1% FPR | Smallest FPR |",
             "|---|---:|---:|---:|---:|"]
    for a in attacks.attacks:
        rates = [a.rate(f) for f in (0.01, 0.001)]
        cells = ["–" if r is None else f"{r.tpr:.1%}" + ("" if r.resolvable else " (not resolvable)") for r in rates]
        mark = " (strongest)" if a is attacks.strongest else ""
        lines.append(f"| {md_escape(a.name)}{mark} | {a.auc:.3f} ({a.ci_low:.3f}–{a.ci_high:.3f}) | {cells[0]} | "
                     f"{cells[1]} | {a.fpr_resolution:.2%} |")
    if attacks.recipe_warning:
        lines += ["", f"**Recipe check**: {md_escape(attacks.recipe_warning)}."]
    return lines


def _power_table(record: AuditRecord) -> list[str]:
    """The control's ladder: one row per K."""
    rungs = () if record.power is None else record.power.rungs
    if not rungs:
        return []
    lines = ["", "| Control, per class | Leak score | Members above the null | Members at SSIM ≥ 0.4 | Shown | Steps |",
             "|---:|---:|---:|---:|---|---:|"]
    for r in rungs:
        leak = None if r.leak_score is None else r.leak_score.value
        lines.append(f"| K = {r.k} | {_num(leak)} | {r.members_above_quantile}/{r.n_members} | "
                     f"{r.members_at_ssim_0_4}/{r.n_members} | {'yes' if r.shown else 'no'} | "
                     f"{r.training_steps} |")
    return lines


def _gate_table(record: AuditRecord) -> list[str]:
    conditions = record.gate.conditions
    lines = ["", "| Condition | Status | Threshold | Observed |", "|---|---|---:|---:|"]
    lines += [f"| {c.name} | {STATUS.get(c.status, c.status)} | {_num(c.threshold)} | "
              f"{_num(c.observed)} |" for c in conditions]
    lines += ["", "<details><summary>What each condition measured</summary>", ""]
    lines += [f"- **{c.name}**: {md_escape(tidy_numbers(c.message))}" for c in conditions]
    return lines + ["", "</details>"]


def _finding_row(f: Finding) -> str:
    return (f"| {f.rank} | {md_escape(shorten(f.class_name, 16))} | {md_escape(shorten(f.path))} | {_num(f.ssim)} | "
            f"{_num(f.lpips)} | {STATUS.get(f.status, f.status)} | `{f.fingerprint[:12]}` |")


def _findings(findings: tuple[Finding, ...], total: int) -> list[str]:
    if not findings:
        return []
    header = ["| Rank | Class | File | SSIM | LPIPS | Status | Fingerprint |", "|---:|---|---|---:|---:|---|---|"]
    lines = ["", f"Top {min(len(findings), SHOWN_ROWS)} of {total} listed findings:", "", *header]
    lines += [_finding_row(f) for f in findings[:SHOWN_ROWS]]
    if len(findings) > SHOWN_ROWS:
        lines += ["", f"<details><summary>{len(findings) - SHOWN_ROWS} more</summary>", "", *header]
        lines += [_finding_row(f) for f in findings[SHOWN_ROWS:]] + ["", "</details>"]
    lines += ["", "<details><summary>Fingerprints, for ignore entries</summary>", "", "```toml"]
    lines += [f'{{ fingerprint = "{f.fingerprint}", reason = "…", expires = "YYYY-MM-DD" }},  # rank {f.rank}'
              for f in findings if all(ch in "0123456789abcdef" for ch in f.fingerprint)]
    return lines + ["```", "", "</details>"]


def render_markdown(readable: Readable, max_rows: int = MAX_ROWS) -> str:
    """What holds, the failing conditions, the gate and the top findings, as GitHub/GitLab Markdown."""
    record = as_record(readable)
    summary = record.summary
    lines = _headline(record) + [""]
    lines.append(
        ("Calibrated by a holdout." if record.calibrated else "**Uncalibrated**: no holdout, absolute thresholds.")
        + f" Mode: {md_escape(record.mode)}. {summary.n_train} training images, "
        f"{summary.n_candidates} reconstructions."
    )
    if not record.inversion.complete:
        lines += [
            "",
            f"**Incomplete attack**: {md_escape(record.inversion.incomplete_reason or 'cut short by the budget')}",
        ]
    for cut in record.budget_cuts:
        lines += ["", f"**Incomplete {md_escape(cut.phase)}**: {md_escape(cut.reason)}"]
    if record.model_format == "pickle":
        lines += ["", "**Warning: --unsafe-pickle.** The model file was unpickled, so code from it ran."]
    unconfined = record.unconfined_reason
    if unconfined is not None:
        lines += ["", f"**Warning: the model ran unconfined**, in the audit's own process: {md_escape(unconfined)}."]
    lines += _gate_table(record)
    lines += _findings(record.findings[:max_rows], len(record.findings))
    lines += ["", "The full report with images is `report.html` in the output folder.", ""]
    return document_text("\n".join(lines))  # one pass over every line: no raw control character, whatever its field
