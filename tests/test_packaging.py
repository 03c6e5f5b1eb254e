"""The built wheel carries its templates, schema and audit definitions.

A source checkout can hide a packaging mistake (files found next to the
code); a wheel installed into a clean virtual environment cannot.
"""

from __future__ import annotations

import os
import site
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # builds and installs a wheel

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "-w", str(out), str(REPO)],
                   check=True, capture_output=True, text=True, timeout=600)
    (found,) = out.glob("leakaudit-*.whl")
    return found


def test_wheel_contains_the_resources(wheel: Path) -> None:
    names = set(zipfile.ZipFile(wheel).namelist())
    templates = {n for n in names if n.startswith("leakaudit/templates/")}
    assert "leakaudit/templates/report.html.j2" in templates
    assert any(n.endswith(".css") for n in templates)
    assert "leakaudit/schema/leakaudit.schema.json" in names
    assert "leakaudit/audits/digits-mlp-1pc.toml" in names
    assert {f"leakaudit/zoo/{m}.py" for m in ("spec", "datasets", "architectures", "training", "build",
                                              "catalogue")} <= names  # what `leakaudit demo` builds from
    assert not any(n.startswith("tests/") or n.startswith("bench/") for n in names)


def test_installed_wheel_renders_from_its_own_templates(wheel: Path, tmp_path: Path) -> None:
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    python = venv / "bin" / "python"
    target = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                            check=True, capture_output=True, text=True).stdout.strip()
    with zipfile.ZipFile(wheel) as archive:
        archive.extractall(target)  # a wheel is a zip laid out as site-packages
    # Dependencies (jinja2, numpy, …) come from the test environment, *after* the clean venv's own
    # site-packages, so leakaudit itself can only be imported from the installed wheel.
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(site.getsitepackages())}
    script = (
        "import importlib.resources as r, leakaudit, leakaudit.report.html as h;"
        "t = r.files('leakaudit.templates') / 'report.html.j2';"
        "assert t.is_file(), t;"
        "print(leakaudit.__file__); print(t)"
    )
    proc = subprocess.run([str(python), "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    module_file, template = proc.stdout.split()
    assert module_file.startswith(target), module_file
    assert template.startswith(target), template
