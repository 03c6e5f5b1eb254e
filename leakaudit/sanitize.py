"""Escaping of untrusted text (tensor keys, file and folder names) for each sink.

Strings that come from a model file or an image folder are data, not markup:
on a terminal they must not move the cursor or clear the screen, in no report
may a raw control character stand (``document_text``), in JUnit they
must keep the XML well-formed, in Markdown they must not become links,
mentions, emphasis or HTML. This module is the one place that knows how.
"""

from __future__ import annotations

import re
import unicodedata

# Characters that change how a terminal shows what follows: C0 controls, DEL,
# C1 controls (0x9b is a one-byte CSI), and the bidirectional overrides that
# make text read differently from how it is stored.
_BIDI = "\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069"
_TERMINAL_UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f" + _BIDI + "\ud800-\udfff]")

# In a document (HTML, Markdown, JUnit) line breaks and tabs are layout; every other control, like the bidi
# overrides and lone surrogates, is shown as an escape (a raw ESC or BEL reaches a terminal that shows the file).
_DOCUMENT_UNSAFE = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f" + _BIDI + "\ud800-\udfff]")

# XML 1.0 allows only these characters; everything else makes a file ill-formed.
_XML_UNSAFE = re.compile("[^\t\n\r\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")

_MD_PUNCTUATION = re.compile(r"([\\`*_\[\]()#+\-!|~{}.:>])")
# Zero-width space: breaks GitHub's autolinks (www., scheme://) and @mentions
# without changing what a reader sees.
_ZWSP = "\u200b"


def _codepoint(ch: str) -> str:
    code = ord(ch)
    if code <= 0xFF:
        return f"\\x{code:02x}"
    return f"\\u{code:04x}"


def terminal_text(text: object) -> str:
    """``text`` with every control, bidi or lone-surrogate character shown as an escape (``\\x1b``)."""
    return _TERMINAL_UNSAFE.sub(lambda m: _codepoint(m.group()), str(text))


def document_text(text: object) -> str:
    """``text`` with C0/C1 controls (but newline and tab), bidi overrides and lone surrogates shown as escapes."""
    return _DOCUMENT_UNSAFE.sub(lambda m: _codepoint(m.group()), str(text))


def xml_text(text: object) -> str:
    """``text`` with characters XML 1.0 forbids shown as escapes; ElementTree escapes ``& < > "`` itself."""
    return _XML_UNSAFE.sub(lambda m: _codepoint(m.group()), str(text))


def markdown_text(text: object) -> str:
    """``text`` inert in GitHub-flavoured Markdown, on one line (safe inside a table cell).

    HTML becomes entities; emphasis, strike, code, links and headings are
    backslash-escaped; autolinks and mentions are broken with a zero-width space.
    """
    s = terminal_text(text)
    s = s.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    s = _MD_PUNCTUATION.sub(r"\\\1", s)
    s = re.sub(r"(?i)(www)(\\\.)", lambda m: m.group(1) + _ZWSP + m.group(2), s)
    s = re.sub(r"(?i)([a-z][a-z0-9+]*)(\\:)(//)", lambda m: m.group(1) + _ZWSP + m.group(2) + m.group(3), s)
    s = s.replace("@", "@" + _ZWSP)
    return " ".join(s.split())


def path_text(raw: str | bytes) -> str:
    """A file name as text: undecodable bytes (kept by Python as surrogates) become ``\\xNN``."""
    data = raw if isinstance(raw, bytes) else raw.encode("utf-8", "surrogateescape")
    decoded = data.decode("utf-8", "backslashreplace")
    return terminal_text(unicodedata.normalize("NFC", decoded))
