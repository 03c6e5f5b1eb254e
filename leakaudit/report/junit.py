"""JUnit XML: one test case per gate condition, so CI systems show the gate natively.

A failed condition is a ``<failure>``, a skipped one ``<skipped>``; a warning
passes and carries its message in ``<system-out>``. Names are qualified
(``leakaudit.gate.ssim``) so they read on their own in a CI's test list; each
case's time is the audit's, since every condition judges the whole attack;
the suite carries the start time and what holds as properties. Every string goes
through ``sanitize.xml_text``, so the file stays well-formed whatever a path holds.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from dataclasses import dataclass

from leakaudit.record import AuditRecord, Condition, as_record
from leakaudit.report.summary import Readable, summarise, tidy_numbers
from leakaudit.sanitize import document_text, xml_text

SUITE = "leakaudit.gate"


@dataclass(frozen=True)
class Case:
    """One test case: a gate condition, or the attack's completeness, or the positive control."""

    name: str
    status: str
    threshold: float | None
    observed: float | None
    message: str

    @classmethod
    def of(cls, condition: Condition) -> Case:
        return cls(condition.name, condition.status, condition.threshold, condition.observed, condition.message)


def _value(value: float | None) -> str:
    return "off" if value is None else f"{float(value):.3f}"


def _properties(suite: ET.Element, record: AuditRecord) -> None:
    plain = summarise(record)
    leak = record.summary.leak_score
    sha = record.model_sha256 or "–"
    values = {"verdict": plain.verdict, "exposure": plain.exposure, "complete": "no" if plain.incomplete else "yes",
              "leaked_members": "–" if plain.leaked is None else str(plain.leaked),
              "leak_score": "–" if leak is None else _value(leak.value), "model_sha256": str(sha),
              "power": plain.power or "–", "membership_test": record.membership_test_name or "–"}
    properties = ET.SubElement(suite, "properties")
    for name, value in values.items():
        ET.SubElement(properties, "property", name=f"leakaudit.{name}", value=value)


def _case(suite: ET.Element, condition: Case, seconds: str) -> None:
    name = f"{SUITE}.{xml_text(condition.name)}"
    case = ET.SubElement(suite, "testcase", classname=SUITE, name=name, time=seconds)
    message = xml_text(tidy_numbers(condition.message))
    detail = f"{message} (threshold {_value(condition.threshold)}, observed {_value(condition.observed)})"
    if condition.status == "fail":
        failure = ET.SubElement(case, "failure", message=message, type="LeakageGateFailure")
        failure.text = detail
    elif condition.status == "skipped":
        ET.SubElement(case, "skipped", message=message)
    else:
        out = ET.SubElement(case, "system-out")
        out.text = f"{condition.status.upper()}: {detail}"


def _power_case(record: AuditRecord) -> Case | None:
    """The positive control as a case: fails where require_power made the audit incomplete, skipped when not
    measured, else passing with the statement (which says plainly when power is not shown)."""
    power = record.power
    if power is None:
        return None
    if power.status == "shown":
        outcome = "pass"
    elif record.thresholds.require_power:
        outcome = "fail"
    else:
        outcome = "skipped" if power.status == "not measured" else "warn"
    return Case("power", outcome, None, power.largest_k_shown, power.statement or power.reason)


def render_junit(readable: Readable) -> str:
    """The gate of an audit as a JUnit XML string."""
    record = as_record(readable)
    cases = [Case.of(c) for c in record.gate.conditions]
    inversion = record.inversion
    if not inversion.complete:  # an unfinished attack is its own failing case, whatever the conditions say
        cases.append(Case("attack_complete", "fail", inversion.planned_steps, inversion.steps,
                          inversion.incomplete_reason or "the attack was cut short by the budget"))
    cases += [Case(f"{cut.phase.replace(' ', '_')}_complete", "fail", None, None, cut.reason)
              for cut in record.budget_cuts]  # a phase after the attack the budget ended: likewise
    power = _power_case(record)
    if power is not None:
        cases.append(power)
    seconds = f"{record.elapsed_s:.3f}"
    failures = sum(1 for c in cases if c.status == "fail")
    skipped = sum(1 for c in cases if c.status == "skipped")
    suites = ET.Element("testsuites", name="leakaudit", tests=str(len(cases)), failures=str(failures), time=seconds)
    suite = ET.SubElement(suites, "testsuite", name=SUITE, tests=str(len(cases)), failures=str(failures),
                          errors="0", skipped=str(skipped), time=seconds)
    started = record.started_at
    if started:
        suite.set("timestamp", str(started)[:19])  # the JUnit schema's form: no zone (the audit's clock is UTC)
    _properties(suite, record)
    for case in cases:
        _case(suite, case, seconds)
    if record.model_format == "pickle":
        ET.SubElement(suite, "system-err").text = "--unsafe-pickle: the model file was unpickled; code from it ran"
    unconfined = record.unconfined_reason
    if unconfined is not None:
        ET.SubElement(suite, "system-err").text = f"the model ran unconfined, in the audit's own process: {unconfined}"
    ET.indent(suites)
    # One pass over the whole file: no control character XML allows (DEL, C1) stands raw either.
    return document_text(ET.tostring(suites, encoding="unicode", xml_declaration=True)) + "\n"
