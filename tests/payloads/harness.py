"""How the security tests run hostile inputs and judge them: a one-line refusal, a live payload, nothing outside OUT."""

from __future__ import annotations

import os
import resource
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

from leakaudit.exit_codes import ExitStatus

from ..conftest import QUICK_INVERSION, run_cli

REPO = Path(__file__).resolve().parents[2]  # the repository: the CLI subprocesses run from it
# Importing torch reserves ~3 GiB of address space here; 2 GiB more is room for an audit, not for a bomb.
ADDRESS_SPACE = 5 << 30


def refused(capsys: pytest.CaptureFixture[str], model: Path, data: Path, out: Path, *extra: str) -> str:
    """Run the CLI on a hostile model: exit 2, exactly one line on stderr, no outputs; returns that line."""
    capsys.readouterr()  # what building the payload printed is not the CLI's
    code, stdout, err = run_cli(["run", str(model), "--data", str(data), "--out", str(out), "--quiet", *extra], capsys)
    assert code == ExitStatus.ERROR, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("leakaudit: error: "), err
    assert "\x1b" not in err and stdout == ""
    assert not (out / "leakaudit.json").exists()
    return lines[0]


def assert_payload_runs(marker: Path, load: object) -> None:
    """The payload is real: plain PyTorch runs it (the marker appears), then the marker is removed."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            load()  # type: ignore[operator]
        except Exception:
            pass  # some payloads break the load after running
    assert marker.exists(), "the payload did not run under plain PyTorch: the test would prove nothing"
    marker.unlink()


def run_limited(args: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (ADDRESS_SPACE, ADDRESS_SPACE))

    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "-m", "leakaudit", *args], cwd=cwd, env=env, preexec_fn=limit,
                          capture_output=True, text=True, timeout=300)


def quick_config_file(tmp_path: Path) -> Path:
    path = tmp_path / "quick.toml"
    path.write_text(QUICK_INVERSION)
    return path


def outside_folder(tmp_path: Path) -> tuple[Path, dict[str, bytes]]:
    """A folder outside OUT with a file in it, and what it holds: every test checks it is left as it was."""
    outside = tmp_path / "outside"
    outside.mkdir(exist_ok=True)
    (outside / "keep.txt").write_bytes(b"outside OUT\n")
    return outside, snapshot(outside)


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): (p.read_bytes() if p.is_file() else b"<dir>")
            for p in sorted(folder.rglob("*"))}
