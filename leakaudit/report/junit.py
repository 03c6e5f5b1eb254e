"""JUnit XML: one test case per gate condition, so CI systems show the gate natively.

A failed condition is a ``<failure>``, a skipped one ``<skipped>``; a warning
passes and carries its message in ``<system-out>``. Every string goes through
``sanitize.xml_text``, so the file stays well-formed whatever a path holds.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections.abc import Mapping
from typing import Any

from leakaudit.sanitize import xml_text


def render_junit(document: Mapping[str, Any]) -> str:
    """The gate of ``document`` as a JUnit XML string."""
    conditions = list((document.get("gate") or {}).get("conditions") or [])
    inversion = document.get("inversion") or {}
    incomplete = inversion.get("complete") is False
    if incomplete:  # an unfinished attack is its own failing case, whatever the conditions say
        conditions.append({"name": "attack_complete", "status": "fail", "threshold": inversion.get("planned_steps"),
                           "observed": inversion.get("steps"),
                           "message": inversion.get("incomplete_reason") or "the attack was cut short by the budget"})
    elapsed = float((document.get("provenance") or {}).get("elapsed_s") or 0.0)
    failures = sum(1 for c in conditions if c["status"] == "fail")
    skipped = sum(1 for c in conditions if c["status"] == "skipped")
    suites = ET.Element("testsuites", name="leakaudit", tests=str(len(conditions)), failures=str(failures))
    suite = ET.SubElement(
        suites,
        "testsuite",
        name="leakaudit.gate",
        tests=str(len(conditions)),
        failures=str(failures),
        errors="0",
        skipped=str(skipped),
        time=f"{elapsed:.3f}",
    )
    for condition in conditions:
        case = ET.SubElement(suite, "testcase", classname="leakaudit.gate", name=xml_text(condition["name"]), time="0")
        message = xml_text(condition["message"])
        detail = f"{message} (threshold {condition.get('threshold')}, observed {condition.get('observed')})"
        if condition["status"] == "fail":
            failure = ET.SubElement(case, "failure", message=message, type="LeakageGateFailure")
            failure.text = detail
        elif condition["status"] == "skipped":
            ET.SubElement(case, "skipped", message=message)
        else:
            out = ET.SubElement(case, "system-out")
            out.text = f"{condition['status'].upper()}: {detail}"
    if ((document.get("provenance") or {}).get("model") or {}).get("format") == "pickle":
        ET.SubElement(suite, "system-err").text = "--unsafe-pickle: the model file was unpickled; code from it ran"
    ET.indent(suites)
    return ET.tostring(suites, encoding="unicode", xml_declaration=True) + "\n"
