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
from collections.abc import Mapping
from typing import Any

from leakaudit.sanitize import document_text, xml_text

from leakaudit.report.summary import summarise, tidy_numbers, unconfined_reason

SUITE = "leakaudit.gate"


def _value(value: Any) -> str:
    return "off" if value is None else f"{float(value):.3f}"


def _properties(suite: ET.Element, document: Mapping[str, Any]) -> None:
    plain = summarise(document)
    leak = (document.get("summary") or {}).get("leak_score") or {}
    model = (document.get("provenance") or {}).get("model") or {}
    values = {"verdict": plain.verdict, "exposure": plain.exposure, "complete": "no" if plain.incomplete else "yes",
              "leaked_members": "–" if plain.leaked is None else str(plain.leaked),
              "leak_score": _value(leak.get("value")) if leak else "–", "model_sha256": str(model.get("sha256", "–")),
              "power": plain.power or "–"}
    properties = ET.SubElement(suite, "properties")
    for name, value in values.items():
        ET.SubElement(properties, "property", name=f"leakaudit.{name}", value=value)


def _case(suite: ET.Element, condition: Mapping[str, Any], seconds: str) -> None:
    name = f"{SUITE}.{xml_text(condition['name'])}"
    case = ET.SubElement(suite, "testcase", classname=SUITE, name=name, time=seconds)
    message = xml_text(tidy_numbers(str(condition["message"])))
    detail = f"{message} (threshold {_value(condition.get('threshold'))}, observed {_value(condition.get('observed'))})"
    if condition["status"] == "fail":
        failure = ET.SubElement(case, "failure", message=message, type="LeakageGateFailure")
        failure.text = detail
    elif condition["status"] == "skipped":
        ET.SubElement(case, "skipped", message=message)
    else:
        out = ET.SubElement(case, "system-out")
        out.text = f"{condition['status'].upper()}: {detail}"


def _power_case(document: Mapping[str, Any]) -> dict[str, Any] | None:
    """The positive control as a case: fails where require_power made the audit incomplete, skipped when not
    measured, else passing with the statement (which says plainly when power is not shown)."""
    power = document.get("power")
    if not isinstance(power, Mapping):
        return None
    required = bool((document.get("thresholds") or {}).get("require_power"))
    status = str(power.get("status"))
    if status == "shown":
        outcome = "pass"
    elif required:
        outcome = "fail"
    else:
        outcome = "skipped" if status == "not measured" else "warn"
    return {"name": "power", "status": outcome, "threshold": None, "observed": power.get("largest_k_shown"),
            "message": str(power.get("statement") or power.get("reason") or "")}


def render_junit(document: Mapping[str, Any]) -> str:
    """The gate of ``document`` as a JUnit XML string."""
    conditions = list((document.get("gate") or {}).get("conditions") or [])
    inversion = document.get("inversion") or {}
    if inversion.get("complete") is False:  # an unfinished attack is its own failing case, whatever the conditions say
        conditions.append({"name": "attack_complete", "status": "fail", "threshold": inversion.get("planned_steps"),
                           "observed": inversion.get("steps"),
                           "message": inversion.get("incomplete_reason") or "the attack was cut short by the budget"})
    power = _power_case(document)
    if power is not None:
        conditions.append(power)
    provenance = document.get("provenance") or {}
    seconds = f"{float(provenance.get('elapsed_s') or 0.0):.3f}"
    failures = sum(1 for c in conditions if c["status"] == "fail")
    skipped = sum(1 for c in conditions if c["status"] == "skipped")
    suites = ET.Element("testsuites", name="leakaudit", tests=str(len(conditions)), failures=str(failures), time=seconds)
    suite = ET.SubElement(suites, "testsuite", name=SUITE, tests=str(len(conditions)), failures=str(failures),
                          errors="0", skipped=str(skipped), time=seconds)
    started = provenance.get("started_at")
    if started:
        suite.set("timestamp", str(started)[:19])  # the JUnit schema's form: no zone (the audit's clock is UTC)
    _properties(suite, document)
    for condition in conditions:
        _case(suite, condition, seconds)
    if (provenance.get("model") or {}).get("format") == "pickle":
        ET.SubElement(suite, "system-err").text = "--unsafe-pickle: the model file was unpickled; code from it ran"
    unconfined = unconfined_reason(document)
    if unconfined is not None:
        ET.SubElement(suite, "system-err").text = f"the model ran unconfined, in the audit's own process: {unconfined}"
    ET.indent(suites)
    # One pass over the whole file: no control character XML allows (DEL, C1) stands raw either.
    return document_text(ET.tostring(suites, encoding="unicode", xml_declaration=True)) + "\n"
