"""A file's sha256, read in blocks: one implementation for model files, data files and provenance."""

from __future__ import annotations

import hashlib
from pathlib import Path

BLOCK = 1 << 20  # bytes read at a time: a large file never sits in memory whole


def file_sha256(path: Path) -> str:
    """The hex digest of the file's bytes."""
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(BLOCK), b""):
            digest.update(block)
    return digest.hexdigest()
