"""Tell a model file's format from its content, never from its name."""

from __future__ import annotations

import struct
import zipfile
from pathlib import Path

from leakaudit.errors import ModelError
from leakaudit.loading.limits import folded, open_zip
from leakaudit.sanitize import terminal_text

FORMATS = ("torchscript", "export", "state_dict", "safetensors", "pickle")


def detect_format(path: Path) -> str:
    """One of ``FORMATS``; a zip archive's declared sizes are checked on the way."""
    with path.open("rb") as fh:
        head = fh.read(16)
    shown = terminal_text(path)
    if len(head) >= 9:
        (header_len,) = struct.unpack("<Q", head[:8])
        if head[8:9] == b"{" and 2 <= header_len < 100_000_000:
            return "safetensors"
    if zipfile.is_zipfile(path):
        with open_zip(path) as archive:
            names = [folded(n) for n in archive.namelist()]  # as torch's reader compares them
        if (any("/models/" in n and n.endswith(".json") for n in names)
                or any(n.endswith("archive_format") for n in names)):
            return "export"
        if any("/code/" in n for n in names):
            return "torchscript"
        if any(n.endswith("data.pkl") for n in names):
            return "state_dict"
        raise ModelError(f"{shown}: a zip archive, but not a PyTorch model file")
    if head[:4] == b"PK\x03\x04":
        raise ModelError(f"{shown}: a zip archive (as PyTorch saves models) that is truncated or corrupt")
    if head[:1] == b"\x80":  # legacy torch.save / plain pickle stream
        return "state_dict"
    raise ModelError(f"{shown}: not a model file leakaudit can read (TorchScript, .pt2, state_dict, safetensors)")
