"""The code stays lint clean: ruff, with the rules of ``[tool.ruff]`` in pyproject.toml, finds nothing.

The selected rules include E501, so no line of the package, the benchmarks
or the tests is longer than the configured 120 characters.
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CHECKED = ("leakaudit", "bench", "tests")


def test_ruff_finds_nothing_in_the_package_the_benchmarks_or_the_tests() -> None:
    if importlib.util.find_spec("ruff") is None:
        pytest.skip("ruff is in the test extra")
    proc = subprocess.run([sys.executable, "-m", "ruff", "check", "--no-cache", "--output-format", "concise",
                           *CHECKED], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_the_line_length_rule_is_selected() -> None:
    import tomllib

    lint = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["tool"]["ruff"]
    assert lint["line-length"] == 120
    assert "E501" in lint["lint"]["select"]
