"""The packages declared strictly typed stay so: mypy --strict over them (``[tool.mypy]`` in pyproject.toml)."""

from __future__ import annotations

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_the_strictly_typed_packages_pass_mypy_strict() -> None:
    api = pytest.importorskip("mypy.api", reason="mypy is in the test extra")
    stdout, stderr, status = api.run(["--config-file", str(ROOT / "pyproject.toml"),
                                      "--cache-dir", str(ROOT / ".mypy_cache")])
    assert status == 0, stdout + stderr
    assert "Success" in stdout


def test_the_strict_list_names_packages_that_exist() -> None:
    import tomllib

    files = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["tool"]["mypy"]["files"]
    assert {"leakaudit/record", "leakaudit/gate", "leakaudit/report", "leakaudit/results.py", "leakaudit/config",
            "leakaudit/api.py", "leakaudit/membership"} <= set(files)
    assert all((ROOT / f).exists() for f in files)
