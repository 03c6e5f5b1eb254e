"""Control characters from a model or its files reach the terminal and reports escaped; warnings cannot flood it."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest
import torch

from leakaudit.exit_codes import ExitStatus

from . import payloads
from .conftest import TinyReference, run_cli
from .payloads.harness import quick_config_file, refused


def test_escape_sequences_in_tensor_keys_never_reach_the_terminal(tiny: TinyReference, tmp_path: Path,
                                                                   capsys: pytest.CaptureFixture[str]) -> None:
    state = dict(tiny.module.state_dict())
    state["\x1b[2J\x1b[1;1H\u2714 PASS: all good\x07"] = torch.zeros(1)
    hostile = tmp_path / "weights.pth"
    torch.save(state, hostile)
    line = refused(capsys, hostile, tiny.train_dir, tmp_path / "out", "--arch", "tests.conftest:tiny_architecture")
    assert "unexpected keys: \\x1b[2J\\x1b[1;1H\u2714 PASS: all good\\x07" in line, line


def test_model_warnings_and_errors_reach_the_terminal_escaped(tiny: TinyReference, tmp_path: Path,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    hostile = payloads.torchscript_shouting(tmp_path / "loud.pt")
    capsys.readouterr()
    code, _, err = run_cli(["run", str(hostile), "--data", str(tiny.train_dir), "--out", str(tmp_path / "o")],
                           capsys)
    assert code == ExitStatus.ERROR and "\x1b" not in err, err
    assert "warning: UserWarning: \\x1b[2J\\x1b[1;1H all good" in err, err


@pytest.mark.parametrize("quiet", [False, True], ids=["default", "--quiet"])
def test_a_model_warning_in_a_loop_is_shown_once_and_not_under_quiet(quiet: bool, tiny: TinyReference,
                                                                     tmp_path: Path,
                                                                     capsys: pytest.CaptureFixture[str]) -> None:
    """``aten::warn`` stays allowed (attention layers warn in TorchScript), but it cannot flood the terminal."""
    chatty = payloads.torchscript_chatty(tmp_path / "chatty.pt")
    with warnings.catch_warnings(record=True) as caught:  # the payload is real: every forward pass warns
        warnings.simplefilter("always")
        torch.jit.load(str(chatty))(torch.zeros(1, 1, 32, 32))
    assert any("all good" in str(w.message) for w in caught)
    capsys.readouterr()
    code, _, err = run_cli(["run", str(chatty), "--data", str(tiny.train_dir), "--out", str(tmp_path / "o"),
                            "--config", str(quick_config_file(tmp_path)), *(["--quiet"] if quiet else [])], capsys)
    assert code in (ExitStatus.PASSED, ExitStatus.GATE_FAILED), err
    assert "\x1b" not in err, err
    warned = [line for line in err.splitlines() if "UserWarning" in line]
    if quiet:
        assert err == "", err  # --quiet: only errors
    else:
        assert warned == ["leakaudit: warning: UserWarning: \\x1b[2J\\x1b[1;1H all good"], err


def test_reports_carry_no_raw_control_character() -> None:
    """ESC, BEL, C1 controls from folder and file names are shown escaped in HTML, Markdown and JUnit alike."""
    import re
    from datetime import date

    from leakaudit.gate.verdict import GateSettings, apply_gate
    from leakaudit.report import render_html
    from leakaudit.report.junit import render_junit
    from leakaudit.report.markdown import render_markdown

    from .scenarios import scenario

    classes = ("0", "1", "2", "bell\x07\x1b[2Jclear", "c1\x9b31m\x85", "del\x7f\x00nul", "6", "7", "8", "9")
    s = scenario(leaky=True, train_per_class=1, classes=classes)
    doc = apply_gate(s.document, GateSettings(), today=date(2026, 11, 28))
    for finding in doc["findings"]:
        finding["path"] = f"{finding['path']}\x1b]0;title\x07"
    for condition in doc["gate"]["conditions"]:
        condition["message"] = f"{condition['message']} \x1b[31m\x9b\x7f"
    raw = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f]")
    html, md, junit = render_html(doc, s.arrays), render_markdown(doc), render_junit(doc)
    for name, text in (("html", html), ("markdown", md), ("junit", junit)):
        assert not raw.search(text), (name, raw.findall(text)[:5])
    assert "bell\\x07\\x1b[2Jclear" in html and "\\x1b]0;title\\x07" in html
    assert "\\x1b[31m\\x9b\\x7f" in junit
    assert "\\x9b31m" in md or "\\\\x9b31m" in md
