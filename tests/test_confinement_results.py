"""The confined worker's results: the same findings document and logits as in-process, its replies checked."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from leakaudit.confine.operations import LoadRequest
from leakaudit.report.json_format import without_timings

from .conftest import NEEDS_CONFINEMENT, TinyReference, confined_session, run_cli

pytestmark = NEEDS_CONFINEMENT


def _audit(tiny: TinyReference, quick_config: Path, out: Path, capsys: pytest.CaptureFixture[str]) -> dict:
    code, _, err = run_cli(["run", str(tiny.torchscript), "--data", str(tiny.train_dir), "--holdout",
                            str(tiny.holdout_dir), "--out", str(out), "--config", str(quick_config),
                            "--reference-models", "2", "-q"], capsys)
    assert code in (0, 1), err
    return json.loads((out / "leakaudit.json").read_text())


def _membership_rows(document: dict) -> list[tuple[str, int, float, list[float]]]:
    return [(a["attack"], a["reference_models"], a["auc"], [r["tpr"] for r in a["tpr_at_fpr"]])
            for a in document["membership_attacks"]["attacks"]]


@pytest.mark.slow
def test_same_document_confined_and_in_process(tiny: TinyReference, quick_config: Path, tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    """The same audit, reference models (R = 2) included, confined and in-process on one thread each."""
    monkeypatch.setenv("LEAKAUDIT_THREADS", "1")
    confined = _audit(tiny, quick_config, tmp_path / "confined", capsys)
    monkeypatch.setenv("LEAKAUDIT_CONFINEMENT", "off")
    in_process = _audit(tiny, quick_config, tmp_path / "in-process", capsys)
    assert confined["provenance"]["confinement"]["worker"] is True
    assert in_process["provenance"]["confinement"] == {"worker": False,
                                                       "reason": "confinement turned off (LEAKAUDIT_CONFINEMENT=off)"}
    here, there = _membership_rows(in_process), _membership_rows(confined)
    assert [r[:2] for r in there] == [r[:2] for r in here] and [r[1] for r in here] == [0, 2, 2, 2]
    for (_, _, auc_there, tpr_there), (_, _, auc_here, tpr_here) in zip(there, here):
        assert auc_there == pytest.approx(auc_here, abs=1e-9) and tpr_there == pytest.approx(tpr_here, abs=1e-9)
    unconfined_notes = [n for n in in_process["summary"]["notes"] if n.startswith("The model ran unconfined")]
    assert len(unconfined_notes) == 1
    for doc in (confined, in_process):
        doc["provenance"].pop("confinement")
        doc["summary"]["notes"] = [n for n in doc["summary"]["notes"] if n not in unconfined_notes]
    assert without_timings(confined) == without_timings(in_process)


def test_worker_replies_are_checked(tiny: TinyReference) -> None:
    from leakaudit.confine import results
    from leakaudit.confine.operations import ModelInfo

    info = ModelInfo((1, 32, 32), 10, "torchscript", None, None, torch.device("cpu"), ())
    with pytest.raises(results.ReplyError):
        results.logits(torch.zeros(3, 9), 3, 10)
    with pytest.raises(results.ReplyError):
        results.inversion_result({"images": torch.zeros(2, 3, 32, 32)}, info)


def test_a_membership_pass_over_many_batches_runs_confined_and_agrees(tiny: TinyReference) -> None:
    # past 16 batches the pass hands freed memory back to the system (leakaudit/runtime/memory.py): that must
    # work under the worker's confinement too (it once needed a temporary file there)
    from leakaudit.confine.operations import LOGITS_BATCH, logits
    from leakaudit.model.target import load_model

    images = torch.randint(0, 256, (17 * LOGITS_BATCH, 1, 32, 32), dtype=torch.uint8,
                           generator=torch.Generator().manual_seed(0))
    session = confined_session([], tiny.torchscript, arch=False)
    try:
        session.load(LoadRequest(tiny.torchscript))
        confined = session.logits(images)
    finally:
        session.close()
    previous = torch.get_num_threads()
    torch.set_num_threads(1)  # the session's thread count: float sums agree only at the same one
    try:
        in_process = logits(load_model(tiny.torchscript), images)
    finally:
        torch.set_num_threads(previous)
    assert torch.equal(confined, in_process)
