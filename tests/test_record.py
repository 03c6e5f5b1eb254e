"""The audit record and its JSON document: every document the tests and a real audit make survives load and dump.

These are the golden checks of the record: ``dump(load(doc)) == doc`` for
every scenario document (gated, re-gated against a baseline, uncalibrated,
with ``require_power``) and for a real audit's ``leakaudit.json``, whose text
comes back byte for byte; each validates against the schema.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest

from leakaudit.errors import OutputError
from leakaudit.gate.settings import GateSettings
from leakaudit.gate.verdict import apply_gate
from leakaudit.record import AuditRecord, dump, load
from leakaudit.report import dumps
from leakaudit.report.schema import schema_errors
from tests.conftest import run_cli
from tests.scenarios import TODAY, gated

VARIANTS = {
    "leaky": {"leaky": True},
    "clean": {"leaky": False},
    "uncalibrated leaky": {"leaky": True, "calibrated": False},
    "uncalibrated clean": {"leaky": False, "calibrated": False},
    "three per class": {"leaky": True, "train_per_class": 3, "seed": 1},
    "require_power": {"leaky": False, "settings": GateSettings(require_power=True)},
}


def _documents() -> dict[str, dict]:
    documents = {}
    for name, kwargs in VARIANTS.items():
        document, _ = gated(**kwargs)  # type: ignore[arg-type]
        documents[name] = document
        settings = kwargs.get("settings") or GateSettings()
        documents[f"{name}, against itself as baseline"] = apply_gate(
            document, settings, today=TODAY, previous=document, baseline_path="before.json")  # type: ignore[arg-type]
    return documents


DOCUMENTS = _documents()


@pytest.mark.parametrize("name", sorted(DOCUMENTS))
def test_every_scenario_document_survives_load_and_dump(name: str) -> None:
    document = DOCUMENTS[name]
    assert schema_errors(document) == []
    record = load(document)
    assert dump(record) == document
    assert schema_errors(dump(record)) == []


@pytest.mark.parametrize("name", sorted(DOCUMENTS))
def test_derived_facts_agree_with_what_the_gate_wrote(name: str) -> None:
    document = DOCUMENTS[name]
    record = load(document)
    assert record.exposure.to_dict() == document["exposure"]
    assert [f.fingerprint for f in record.findings] == [f["fingerprint"] for f in document["findings"]]
    if record.calibrated:
        q = document["thresholds"]["holdout_quantile"]
        assert record.holdout_reference == document["summary"]["holdout"]["quantiles"][f"{q:g}"]
        assert record.leaked_members is not None and record.leaked_members >= sum(
            1 for f in document["findings"] if f["above_holdout_p99"])
    else:
        assert record.holdout_reference is None and record.leaked_members is None


def test_a_leaky_scenario_reads_as_reconstruction_and_a_baseline_records_the_previous_ssim() -> None:
    record = load(DOCUMENTS["leaky, against itself as baseline"])
    assert record.exposure_kind in ("reconstruction", "both")
    assert record.headline.startswith("Reconstructs training images")
    assert all(f.compared and f.previous_ssim == f.ssim for f in record.findings)
    assert record.gate.baseline is not None and record.gate.baseline.path == "before.json"
    assert record.power is not None and record.power.status == "shown" and record.power.images_k == 1


def test_a_broken_document_is_an_output_error_naming_the_field() -> None:
    document = copy.deepcopy(DOCUMENTS["leaky"])
    document["findings"][0]["ssim"] = "high"
    with pytest.raises(OutputError, match="ssim"):
        load(document)
    with pytest.raises(OutputError, match="ssim"):
        load(document, validate=False)  # the field checks hold without the schema too
    del document["summary"]
    with pytest.raises(OutputError, match="summary"):
        load(document, validate=False)


def test_a_document_of_an_unknown_schema_version_is_refused() -> None:
    document = dict(DOCUMENTS["clean"], schema_version="9.0")
    with pytest.raises(OutputError, match="schema version 9.0"):
        load(document)


def test_a_record_is_frozen_and_its_sections_read_only() -> None:
    record = load(DOCUMENTS["leaky"])
    assert isinstance(record, AuditRecord)
    with pytest.raises(AttributeError):
        record.verdict = "pass"  # type: ignore[misc]
    with pytest.raises(TypeError):
        record.provenance["seed"] = 1  # type: ignore[index]


@pytest.mark.slow
def test_a_real_audits_document_comes_back_byte_for_byte(tiny, quick_power_config: Path, tmp_path: Path,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out"
    code, _, err = run_cli(["run", str(tiny.torchscript), "--data", str(tiny.train_dir), "--holdout",
                            str(tiny.holdout_dir), "--out", str(out), "--config", str(quick_power_config),
                            "--no-images", "--quiet"], capsys)
    assert code in (0, 1), err
    text = (out / "leakaudit.json").read_text(encoding="utf-8")
    document = json.loads(text)
    assert schema_errors(document) == []
    record = load(document)
    assert record.power is not None and record.power.rungs  # the control ran: its rungs round-trip too
    assert dumps(dump(record)) == text
