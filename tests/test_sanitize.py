"""Untrusted strings in each sink: the terminal, JUnit XML, Markdown."""

from __future__ import annotations

import xml.etree.ElementTree as ET

from leakaudit.report import render_junit, render_markdown
from leakaudit.sanitize import markdown_text, path_text, terminal_text
from tests.scenarios import gated

HOSTILE = "a\x1b[2J\x1b[1;1H\x07\x00\x0b\x9b31m\u202eevil]]>&<b>"


def test_terminal_text_shows_every_control_character_escaped() -> None:
    shown = terminal_text(HOSTILE)
    assert shown == "a\\x1b[2J\\x1b[1;1H\\x07\\x00\\x0b\\x9b31m\\u202eevil]]>&<b>"
    assert terminal_text("ß猫 ✔ plain") == "ß猫 ✔ plain"


def test_path_text_renders_undecodable_bytes() -> None:
    assert path_text(b"caf\xe9\x1b.png") == "caf\\xe9\\x1b.png"
    assert path_text("caf\udce9.png") == "caf\\xe9.png"  # how os.listdir hands back a non-UTF-8 name


def test_junit_stays_well_formed_whatever_a_message_holds() -> None:
    doc, _ = gated()
    doc["gate"]["conditions"][0]["message"] = HOSTILE
    doc["gate"]["conditions"][0]["name"] = "x\x01]]>"
    root = ET.fromstring(render_junit(doc))
    case = root.find("./testsuite/testcase")
    assert case is not None and case.get("name") == "leakaudit.gate.x\\x01]]>"
    messages = [e.get("message") for e in root.iter() if e.get("message")]
    assert HOSTILE not in messages and terminal_text(HOSTILE) in messages  # C1 and bidi shown escaped too


def test_markdown_text_is_inert() -> None:
    text = ("~~strike~~ **bold** _em_ `code` www.evil.example https://evil.example/x @octocat [link](http://x) "
            "<img src=x> #1")
    md = markdown_text(text)
    for live in ("~~", "**", "`code`", "www.", "https://", "@octocat", "](", "<img", "[link]"):
        assert live not in md, (live, md)
    assert "\\~\\~strike\\~\\~" in md and "&lt;img src=x&gt;" in md and "\n" not in markdown_text("a\nb")


def test_markdown_summary_neutralises_class_names_and_paths() -> None:
    hostile = ("0", "1", "2", "@admin www.x.io ~~gone~~", "4", "5", "6", "7", "8", "9")
    doc, _ = gated(train_per_class=1, classes=hostile)
    md = render_markdown(doc)
    assert "@admin" not in md and "www.x" not in md and "~~gone" not in md
    assert "\\~\\~gone\\~\\~" in md
