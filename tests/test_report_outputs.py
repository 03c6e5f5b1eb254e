"""Output files: JSON round trip and schema, atomic writes, JUnit XML, Markdown."""

from __future__ import annotations

import os
import xml.etree.ElementTree as ET
from datetime import date
from pathlib import Path

import numpy as np
import pytest

from leakaudit.errors import OutputError
from leakaudit.gate.verdict import GateSettings, IgnoreEntry, apply_gate
from leakaudit.record import dump
from leakaudit.report import (
    load_outputs,
    render_html,
    render_junit,
    render_markdown,
    render_report_file,
    write_outputs,
)
from leakaudit.report.atomic import atomic_write, atomic_write_text
from leakaudit.report.schema import schema_errors, validate
from tests.scenarios import TODAY, gated, scenario


def test_outputs_round_trip_and_rerender(tmp_path: Path) -> None:
    doc, arrays = gated()
    written = write_outputs(
        doc, arrays, tmp_path, junit_path=tmp_path / "junit.xml", markdown_path=tmp_path / "summary.md"
    )
    names = sorted(p.name for p in written.paths)
    assert names == ["junit.xml", "leakaudit.json", "reconstructions.npz", "report.html", "summary.md"]
    loaded, loaded_arrays = load_outputs(tmp_path / "leakaudit.json")
    assert dump(loaded) == doc  # the record read back is the audit's
    assert schema_errors(dump(loaded)) == []
    assert set(loaded_arrays) == set(arrays)
    for key in arrays:
        assert np.array_equal(loaded_arrays[key], arrays[key])
        assert loaded_arrays[key].dtype == arrays[key].dtype
    assert render_html(loaded, loaded_arrays) == (tmp_path / "report.html").read_text(encoding="utf-8")


def test_schema_rejects_a_broken_document() -> None:
    doc, _ = gated()
    doc["verdict"] = "maybe"
    doc["findings"][0]["ssim"] = "high"
    del doc["provenance"]
    problems = schema_errors(doc)
    assert len(problems) >= 3
    with pytest.raises(OutputError, match="verdict"):
        validate(doc)


def test_without_arrays_the_report_renders_without_images(tmp_path: Path) -> None:
    doc, arrays = gated()
    write_outputs(doc, arrays, tmp_path)
    (tmp_path / "reconstructions.npz").unlink()
    loaded, loaded_arrays = load_outputs(tmp_path / "leakaudit.json")
    assert loaded_arrays == {}
    html = render_html(loaded, loaded_arrays)
    assert "<img" not in html and "reconstructions.npz was not found" in html


def test_malformed_json_is_an_output_error(tmp_path: Path) -> None:
    (tmp_path / "leakaudit.json").write_text('{"findings": [', encoding="utf-8")
    with pytest.raises(OutputError, match="not valid JSON"):
        load_outputs(tmp_path / "leakaudit.json")
    with pytest.raises(OutputError, match="no findings document"):
        load_outputs(tmp_path / "missing.json")


def test_non_finite_numbers_are_refused_and_old_files_stay(tmp_path: Path) -> None:
    doc, arrays = gated()
    write_outputs(doc, arrays, tmp_path)
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    doc["findings"][0]["ssim"] = float("nan")
    with pytest.raises(OutputError, match="findings/0/ssim"):
        write_outputs(doc, arrays, tmp_path)
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before


def test_existing_report_is_replaced_and_unrelated_files_untouched(tmp_path: Path) -> None:
    old_doc, old_arrays = gated(leaky=False)
    write_outputs(old_doc, old_arrays, tmp_path)
    unrelated = tmp_path / "notes.txt"
    unrelated.write_text("keep me", encoding="utf-8")
    os.utime(unrelated, (1_000_000_000, 1_000_000_000))
    old_html = (tmp_path / "report.html").read_text(encoding="utf-8")
    assert "✔ PASS" in old_html

    new_doc, new_arrays = gated(leaky=True)
    write_outputs(new_doc, new_arrays, tmp_path)
    assert "✖ FAIL" in (tmp_path / "report.html").read_text(encoding="utf-8")
    assert load_outputs(tmp_path / "leakaudit.json")[0].verdict == "fail"
    assert unrelated.read_text(encoding="utf-8") == "keep me"
    assert unrelated.stat().st_mtime == 1_000_000_000
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "leakaudit.json", "notes.txt", "reconstructions.npz", "report.html"
    ]


def test_failure_mid_write_leaves_the_old_file_intact(tmp_path: Path) -> None:
    target = tmp_path / "report.html"
    atomic_write_text(target, "old report")

    def half_then_crash(stream) -> None:
        stream.write(b"<html>half of a new rep")
        raise RuntimeError("disk pulled out")

    with pytest.raises(RuntimeError, match="disk pulled out"):
        atomic_write(target, half_then_crash)
    assert target.read_text() == "old report"
    assert [p.name for p in tmp_path.iterdir()] == ["report.html"]  # no temporary file left behind


def test_unwritable_destination_is_an_output_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with pytest.raises(OutputError, match="cannot write"):
        atomic_write_text(blocker / "report.html", "x")


def test_junit_has_one_testcase_per_condition() -> None:
    doc, _ = gated()
    root = ET.fromstring(render_junit(doc))
    cases = root.findall("./testsuite/testcase")
    conditions = doc["gate"]["conditions"]
    # the gate's conditions, then the positive control (shown here: a passing case)
    assert [c.get("name") for c in cases] == [f"leakaudit.gate.{c['name']}" for c in conditions] + [
        "leakaudit.gate.power"
    ]
    assert cases[-1].find("failure") is None and cases[-1].find("skipped") is None
    for case, condition in zip(cases, conditions):
        assert (case.find("failure") is not None) == (condition["status"] == "fail")
        assert (case.find("skipped") is not None) == (condition["status"] == "skipped")
    suite = root.find("testsuite")
    assert suite is not None
    assert int(suite.get("failures", "-1")) == sum(c["status"] == "fail" for c in conditions) > 0


def test_junit_of_a_passing_audit_has_no_failures() -> None:
    doc, _ = gated(leaky=False)
    root = ET.fromstring(render_junit(doc))
    assert root.findall(".//failure") == []
    assert len(root.findall(".//testcase")) == len(doc["gate"]["conditions"]) + 1  # and the positive control


def test_markdown_summary_table() -> None:
    hostile = ("0", "1", "2", "a|b <script>x</script>", "4", "5", "6", "7", "8", "9")
    doc, _ = gated(train_per_class=1, classes=hostile)
    md = render_markdown(doc)
    lines = md.splitlines()
    assert lines[0].startswith("## leakaudit: ✖ FAIL")
    header = lines.index("| Condition | Status | Threshold | Observed |")
    assert all(lines[header + 2 + i].startswith(f"| {c['name']} |") for i, c in enumerate(doc["gate"]["conditions"]))
    rows = [line for line in lines if line.startswith("| ") and line.split("|")[1].strip().isdigit()]
    assert len(rows) == min(10, len(doc["findings"]))
    assert all(row.count("|") - row.count("\\|") == 8 for row in rows)  # escaped pipes do not split cells
    assert "<script" not in md and "&lt;script&gt;" in md
    assert "data:image" not in md and "<img" not in md


def test_rerender_writes_only_the_html(tmp_path: Path) -> None:
    doc, arrays = gated()
    write_outputs(doc, arrays, tmp_path)
    json_before = (tmp_path / "leakaudit.json").read_bytes()
    loaded, loaded_arrays = load_outputs(tmp_path / "leakaudit.json")
    path, warnings = render_report_file(loaded, loaded_arrays, tmp_path / "blurred.html", redact="blur")
    assert path == tmp_path / "blurred.html" and warnings == []
    assert "blurred" in path.read_text(encoding="utf-8")
    assert (tmp_path / "leakaudit.json").read_bytes() == json_before
    _, loud = render_report_file(loaded, loaded_arrays, tmp_path / "big.html", size_warn_bytes=1_000)
    assert len(loud) == 1 and "big.html" in loud[0]


def test_gating_twice_gives_the_same_document() -> None:
    s = scenario(leaky=True)
    settings = GateSettings(ignore=(IgnoreEntry(s.document["findings"][0]["fingerprint"], "x", date(2026, 1, 1)),))
    once = apply_gate(s.document, settings, today=TODAY)
    assert apply_gate(once, settings, today=TODAY) == once


def test_junit_reads_well_in_a_ci_test_list() -> None:
    doc, _ = gated()
    doc["provenance"]["elapsed_s"] = 42.5
    doc["gate"]["conditions"][0]["observed"] = 0.97062087059021
    root = ET.fromstring(render_junit(doc))
    suite = root.find("testsuite")
    assert suite is not None and suite.get("timestamp") == doc["provenance"]["started_at"][:19]
    cases = root.findall("./testsuite/testcase")
    assert all(c.get("time") == "42.500" for c in cases)
    text = ET.tostring(root, encoding="unicode")
    assert "0.97062087059021" not in text and "observed 0.971" in text
    props = {p.get("name"): p.get("value") for p in root.iter("property")}
    assert props["leakaudit.verdict"] == doc["verdict"] and props["leakaudit.exposure"] == "reconstruction"


def test_markdown_keeps_tables_narrow_and_folds_long_parts() -> None:
    doc, _ = gated()
    doc["findings"][0]["path"] = "a-very-long-folder-name/" * 6 + "image.png"
    md = render_markdown(doc)
    table_rows = [line for line in md.splitlines() if line.startswith("| ")]
    assert table_rows and max(len(line) for line in table_rows) < 140
    first = next(line for line in table_rows if line.startswith("| 1 |"))
    assert "…" in first and "image\\.png" in first  # shortened in the middle: the file name stays
    assert md.count("<details>") >= 2 and md.count("<details>") == md.count("</details>")
    for f in doc["findings"][:10]:
        assert f'fingerprint = "{f["fingerprint"]}"' in md
    explanations = md.split("What each condition measured")[1]
    assert all(f"**{c['name']}**" in explanations for c in doc["gate"]["conditions"])
    assert "p = 0.000" not in md
