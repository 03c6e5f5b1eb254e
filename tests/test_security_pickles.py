"""Pickles, weight and --init files: refused unless --unsafe-pickle (then said everywhere); bombs fail cleanly."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from leakaudit.exit_codes import ExitStatus

from . import payloads
from .conftest import TinyReference, run_cli
from .payloads.harness import (REPO, assert_payload_runs, outside_folder, quick_config_file, refused, run_limited,
                               snapshot)


def test_config_file_cannot_switch_on_pickle_loading(tiny: TinyReference, tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    marker = tmp_path / "pwned"
    hostile = tmp_path / "weights.pth"
    torch.save({"state_dict": tiny.module.state_dict(), "extra": payloads.Payload(marker)}, hostile)
    (tmp_path / "pyproject.toml").write_text("[tool.leakaudit]\nunsafe_pickle = true\n")
    monkeypatch.chdir(tmp_path)
    line = refused(capsys, hostile, tiny.train_dir, tmp_path / "out", "--arch", "tests.conftest:tiny_architecture")
    assert "'unsafe_pickle' cannot be set in a configuration file" in line and "--unsafe-pickle" in line, line
    assert not marker.exists()


@pytest.mark.slow
@pytest.mark.parametrize(("build", "named"), [(payloads.zip_bomb_state_dict, "inflates"),
                                               (payloads.safetensors_overclaim, "refused before allocating")],
                         ids=["state_dict zip bomb", "safetensors header"])
def test_memory_bombs_in_model_files(build: object, named: str, tiny: TinyReference, tmp_path: Path) -> None:
    hostile = build(tmp_path / "bomb.bin")  # type: ignore[operator]
    result = run_limited(["run", str(hostile), "--data", str(tiny.train_dir), "--out", str(tmp_path / "out"), "--quiet",
                       "--arch", "tests.conftest:tiny_architecture"], REPO)
    assert result.returncode == ExitStatus.ERROR, result.stderr
    assert named in result.stderr and result.stderr.count("\n") == 1, result.stderr


def test_a_deeply_nested_safetensors_header_is_a_clear_error(tmp_path: Path) -> None:
    import json
    import struct

    from leakaudit.errors import ModelError
    from leakaudit.loading.weights import check_safetensors_header

    header = b"[" * 200_000 + b"]" * 200_000
    path = tmp_path / "deep.safetensors"
    path.write_bytes(struct.pack("<Q", len(header)) + header)
    with pytest.raises(ModelError, match="nested deeper than"):
        check_safetensors_header(path)
    flat = json.dumps(["not", "a", "table"]).encode()
    path.write_bytes(struct.pack("<Q", len(flat)) + flat)
    with pytest.raises(ModelError, match="not a table of tensors"):
        check_safetensors_header(path)


def test_a_deeply_nested_safetensors_header_fails_the_cli_cleanly(tiny: TinyReference, tmp_path: Path,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    import struct

    header = b'{"a": ' + b"[" * 200_000 + b"]" * 200_000 + b"}"
    path = tmp_path / "deep.safetensors"
    path.write_bytes(struct.pack("<Q", len(header)) + header)
    line = refused(capsys, path, tiny.train_dir, tmp_path / "out", "--arch", "tests.conftest:tiny_architecture")
    assert "nested deeper than" in line and "internal error" not in line, line


@pytest.mark.slow
def test_unsafe_pickle_says_so_everywhere(tiny: TinyReference, tmp_path: Path,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    import json

    from .conftest import tiny_architecture

    module = tiny_architecture()  # a fresh module: the shared one may carry hooks other tests attached
    module.load_state_dict(tiny.module.state_dict())
    model = tmp_path / "full.pt"
    torch.save(module, model)
    out = tmp_path / "out"
    code, _, err = run_cli(["run", str(model), "--data", str(tiny.train_dir), "--out", str(out), "--unsafe-pickle",
                            "--budget", "600", "--config", str(quick_config_file(tmp_path)),
                            "--junit", str(tmp_path / "j.xml"),
                            "--markdown", str(tmp_path / "s.md")], capsys)
    assert code in (ExitStatus.PASSED, ExitStatus.GATE_FAILED), err
    assert "warning: --unsafe-pickle given" in err and "runs code from the file" in err
    document = json.loads((out / "leakaudit.json").read_text())
    assert any("code from the file ran" in note for note in document["summary"]["notes"])
    assert "code from the file ran" in (out / "report.html").read_text()
    assert "--unsafe-pickle" in (tmp_path / "s.md").read_text()
    assert "code from it ran" in (tmp_path / "j.xml").read_text()


def _cli(args: list[str], cwd: Path, env: dict[str, str], timeout: float = 600) -> subprocess.CompletedProcess[str]:
    """The installed CLI in a subprocess, one thread, from ``cwd`` with ``env`` added."""
    return subprocess.run([str(Path(sys.executable).parent / "leakaudit"), *args], capture_output=True, text=True,
                          cwd=cwd, env={**os.environ, "OMP_NUM_THREADS": "1", "CI": "1", **env}, timeout=timeout)


@pytest.mark.slow
def test_a_pickled_module_on_pythonpath_is_audited_and_cannot_forge_its_provenance(tiny: TinyReference,
                                                                                  tmp_path: Path) -> None:
    import hashlib
    import json

    from .conftest import tiny_architecture

    work = tmp_path / "work"
    work.mkdir()
    trained = tiny_architecture()
    trained.load_state_dict(tiny.module.state_dict())
    model = payloads.forging_pickle(work, trained)
    out = tmp_path / "out"
    result = _cli(["run", "kit.pt", "--data", str(tiny.train_dir), "--out", str(out), "--unsafe-pickle",
                   "--budget", "600", "--config", str(quick_config_file(tmp_path)),
                   "--markdown", str(tmp_path / "s.md"), "--junit", str(tmp_path / "j.xml")],
                  work, {"PYTHONPATH": str(work)})
    assert result.returncode in (ExitStatus.PASSED, ExitStatus.GATE_FAILED), result.stderr
    assert "FORGING the model's provenance" in result.stderr  # the payload ran, in the worker
    document = json.loads((out / "leakaudit.json").read_text())
    model_record = document["provenance"]["model"]
    assert model_record["format"] == "pickle"
    assert model_record["sha256"] == hashlib.sha256(model.read_bytes()).hexdigest()
    assert any("code from the file ran" in note for note in document["summary"]["notes"])
    assert "--unsafe-pickle" in (tmp_path / "s.md").read_text()
    assert "code from it ran" in (tmp_path / "j.xml").read_text()


def test_init_file_is_vetted_like_the_model(tiny: TinyReference, tmp_path: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    """``--init`` goes through the model's loaders: a TorchScript ``__setstate__`` never runs."""
    outside, before = outside_folder(tmp_path)
    marker = outside / "pwned"
    hostile = payloads.torchscript_setstate(tmp_path, tmp_path / "init.pt", marker)
    assert_payload_runs(marker, lambda: torch.jit.load(str(hostile)))
    capsys.readouterr()
    out = tmp_path / "out"
    code, _, err = run_cli(["run", str(tiny.torchscript), "--data", str(tiny.train_dir), "--holdout",
                            str(tiny.holdout_dir), "--init", str(hostile), "--out", str(out), "--quiet",
                            "--config", str(quick_config_file(tmp_path))], capsys)
    assert code == ExitStatus.ERROR, err
    assert f"--init {hostile}" in err and "__setstate__" in err and "refused before loading" in err, err
    assert not marker.exists() and snapshot(outside) == before
    assert not (out / "leakaudit.json").exists()


@pytest.mark.parametrize("case", ["from_file forward", "fork", "case twin", "full pickle", "bare pickle"])
def test_init_file_refusals_are_the_models(case: str, clean_pt2: Path, tmp_path: Path) -> None:
    from leakaudit.errors import ModelError
    from leakaudit.inversion.initaware import load_initial_state

    marker = tmp_path / "pwned"
    init = tmp_path / "init.bin"
    if case == "from_file forward":
        payloads.torchscript_from_file(init, marker)
        named = "calls aten::from_file"
    elif case == "fork":
        payloads.torchscript_fork(init, marker)
        named = "calls prim::fork"
    elif case == "case twin":
        payloads.pt2_case_twin(clean_pt2, init, marker, "weights")
        named = "differ only in letter case"
    elif case == "full pickle":
        torch.save({"w": torch.zeros(2), "x": payloads.Payload(marker)}, init)
        named = "full pickled object"
    else:
        init.write_bytes(payloads.payload_pickle(marker))
        named = "bare pickle stream"
    with pytest.raises(ModelError, match="^--init ") as caught:
        load_initial_state(init)
    assert named in str(caught.value), caught.value
    assert not marker.exists()


def test_init_file_may_be_any_model_format(tiny: TinyReference, clean_pt2: Path, tmp_path: Path) -> None:
    from safetensors.torch import save_file

    from leakaudit.inversion.initaware import load_initial_state

    first = next(p for p in tiny.module.state_dict().values() if p.dim() == 2)
    save_file({k: v.contiguous() for k, v in tiny.module.state_dict().items()}, str(tmp_path / "init.safetensors"))
    for path in (tiny.state_dict, tiny.torchscript, clean_pt2, tmp_path / "init.safetensors"):
        state = load_initial_state(path)
        assert torch.equal(next(v for v in state.values() if v.dim() == 2), first), path
