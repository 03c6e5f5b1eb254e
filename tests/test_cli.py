"""The CLI contract: exit codes, one-line errors, config files, nothing half-written."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import torch
from PIL import Image

from leakaudit import __version__
from leakaudit.cli.commands import run
from leakaudit.config import file_keys, read_config
from leakaudit.exit_codes import ExitStatus
from leakaudit.gate.settings import GATE_KEYS

from .conftest import TinyReference, assert_error, assert_no_result, run_cli

REPO = Path(__file__).resolve().parents[1]


def test_version_and_help(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run_cli(["--version"], capsys)
    assert code == 0 and __version__ in out
    code, out, _ = run_cli(["run", "--help"], capsys)
    assert code == 0
    for flag in ("--data", "--holdout", "--arch", "--unsafe-pickle", "--input-size", "--mean", "--std", "--out",
                 "--fail-ssim", "--warn-ssim", "--fail-lpips", "--seed", "--budget", "--config", "--quiet", "--effort",
                 "--allow-foreign-baseline", "--fail-membership-auc"):
        assert flag in out, flag


@pytest.mark.slow
def test_entry_point_runs_as_a_program(tiny: TinyReference, tmp_path: Path) -> None:
    """The installed console script, in a fresh process: an error is exit 2 and one line."""
    proc = subprocess.run(
        [
            str(Path(sys.executable).parent / "leakaudit"),
            "run",
            str(tmp_path / "absent.pt"),
            "--data",
            str(tiny.train_dir),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1] == f"leakaudit: error: model file not found: {tmp_path / 'absent.pt'}"
    assert proc.stdout == ""


def test_data_is_required(tiny: TinyReference, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run_cli(["run", str(tiny.torchscript)], capsys)
    assert_error(code, err, "--data DIR is required")


def test_bad_threshold_is_a_usage_error(tiny: TinyReference, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run_cli(["run", str(tiny.torchscript), "--data", str(tiny.train_dir), "--fail-ssim", "1.5"], capsys)
    assert_error(code, err, "gate settings: --fail-ssim must be in (0, 1], got 1.5")


def _bad_inputs(tiny: TinyReference, tmp: Path) -> dict[str, tuple[list[str], str]]:
    model, data = str(tiny.torchscript), str(tiny.train_dir)
    (tmp / "empty").mkdir()
    (tmp / "flat").mkdir()
    Image.new("L", (32, 32)).save(tmp / "flat" / "x.png")
    (tmp / "three" / "a").mkdir(parents=True)
    for name in ("a", "b", "c"):
        (tmp / "three" / name).mkdir(exist_ok=True)
        Image.new("L", (32, 32)).save(tmp / "three" / name / "x.png")
    broken = tmp / "broken"
    import shutil

    shutil.copytree(tiny.train_dir, broken)
    (broken / "4" / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\nnope")
    (tmp / "truncated.pt").write_bytes(tiny.torchscript.read_bytes()[:3000])
    (tmp / "text.pt").write_text("hello")
    torch.save(tiny.module, tmp / "pickled.pt")
    return {
        "missing model": ([str(tmp / "nope.pt"), "--data", data], "model file not found"),
        "missing data": ([model, "--data", str(tmp / "nodata")], "data folder not found"),
        "empty data folder": ([model, "--data", str(tmp / "empty")], "no class folders"),
        "no class folders": ([model, "--data", str(tmp / "flat")], "no class folders"),
        "class count": ([model, "--data", str(tmp / "three")], "has 3 class folders but the model has 10 outputs"),
        "corrupt image, strict": ([model, "--data", str(broken), "--strict-data"], "corrupt.png"),
        "input size": ([model, "--data", data, "--input-size", "16", "16"], "could not run the model"),
        "truncated model": ([str(tmp / "truncated.pt"), "--data", data], "truncated or corrupt"),
        "not a model": ([str(tmp / "text.pt"), "--data", data], "not a model file"),
        "pickle": ([str(tmp / "pickled.pt"), "--data", data], "--unsafe-pickle"),
        "state_dict without arch": ([str(tiny.state_dict), "--data", data], "--arch module.path:callable"),
        "arch import": (
            [str(tiny.state_dict), "--data", data, "--arch", "no_such_mod:f"],
            "cannot import 'no_such_mod'",
        ),
        "holdout classes": (
            [model, "--data", data, "--holdout", str(tmp / "three")],
            "class folders not in the training data",
        ),
        "mean length": ([model, "--data", data, "--mean", "0.1,0.2,0.3"], "--mean has 3 values"),
    }


def test_every_bad_input_is_exit_2_with_its_message(tiny: TinyReference, tmp_path: Path,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    for case, (args, message) in _bad_inputs(tiny, tmp_path).items():
        out_dir = tmp_path / f"out-{case.replace(' ', '-')}"
        code, out, err = run_cli(["run", *args, "--out", str(out_dir)], capsys)
        assert code == ExitStatus.ERROR, f"{case}: exit {code}, stderr {err!r}"
        assert message in err, f"{case}: {err!r}"
        assert "Traceback" not in err, case
        assert out == "", case
        assert_no_result(out_dir)


def test_debug_shows_the_traceback(tiny: TinyReference, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run_cli(["run", str(tmp_path / "nope.pt"), "--data", str(tiny.train_dir), "--debug"], capsys)
    assert code == 2 and "Traceback" in err


def test_config_file_feeds_options_and_flags_win(tiny: TinyReference, tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "audit.toml"
    config.write_text('fail_ssim = 7.0\nbogus_key = 1\n[gate]\nwarn_ssim = 0.3\n')
    code, _, err = run_cli(
        ["run", str(tiny.torchscript), "--data", str(tmp_path / "nodata"), "--config", str(config)], capsys
    )
    assert_error(
        code, err, "[tool.leakaudit.gate] fail_ssim must be in (0, 1], got 7.0"
    )  # the file's value reached the gate
    code, _, err = run_cli(["run", str(tiny.torchscript), "--data", str(tmp_path / "nodata"), "--config", str(config),
                            "--fail-ssim", "0.5"], capsys)
    assert_error(code, err, "data folder not found")  # the flag replaced the file's bad value
    assert "unknown key 'bogus_key' ignored" in err


def test_a_misspelt_gate_key_is_an_error_with_a_suggestion(tiny: TinyReference, tmp_path: Path,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "audit.toml"
    config.write_text("[gate]\nfail_sim = 0.5\n")
    code, _, err = run_cli(["run", str(tiny.torchscript), "--data", str(tiny.train_dir), "--config", str(config),
                            "--out", str(tmp_path / "o")], capsys)
    assert_error(code, err, "unknown key [tool.leakaudit.gate] 'fail_sim' (did you mean 'fail_ssim'?)")
    assert_no_result(tmp_path / "o")


def test_pyproject_in_the_working_directory_is_read(tiny: TinyReference, tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "pyproject.toml").write_text('[tool.leakaudit]\ndata = "missing-train"\n')
    monkeypatch.chdir(tmp_path)
    code, _, err = run_cli(["run", str(tiny.torchscript)], capsys)
    assert_error(code, err, "missing-train")


def test_invalid_config_file(tiny: TinyReference, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "bad.toml"
    config.write_text("this is = = not toml")
    code, _, err = run_cli(
        ["run", str(tiny.torchscript), "--data", str(tiny.train_dir), "--config", str(config)], capsys
    )
    assert_error(code, err, "is not valid TOML")


def test_unwritable_output_folder(tiny: TinyReference, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    code, _, err = run_cli(["run", str(tiny.torchscript), "--data", str(tiny.train_dir), "--out", str(blocker)], capsys)
    assert_error(code, err, "is a file")
    code, _, err = run_cli(["run", str(tiny.torchscript), "--data", str(tiny.train_dir), "--out", str(blocker / "sub")],
                           capsys)
    assert_error(code, err, "cannot write to the output folder")


def test_demo_lists_each_bundled_reference_on_a_line_that_says_what_it_is(
        capsys: pytest.CaptureFixture[str]) -> None:
    from leakaudit.zoo import load_spec, shipped_audits

    code, out, _ = run_cli(["demo", "--list"], capsys)
    assert code == 0
    lines = out.splitlines()
    assert [line.split()[0] for line in lines] == shipped_audits()
    for line in lines:
        name = line.split()[0]
        spec, _ = load_spec(name)
        assert f" {spec.arch} " in line and f" {spec.train_per_class:,} image" in line, line
        description = tomllib.loads((REPO / "audits" / f"{name}.toml").read_text(encoding="utf-8"))["description"]
        assert line.endswith(description) and len(description) >= 20, line
    demo = next(line for line in lines if line.startswith("digits-mlp-1pc "))
    assert "scikit-learn digits" in demo and " 1 image/class " in demo
    assert "(pre-trained on Fashion-MNIST)" in next(line for line in lines if line.startswith("mnist-cnn-ft-2pc "))


def test_every_shipped_audit_is_a_valid_spec_that_says_what_it_is() -> None:
    """Each recipe parses without its data (real-data ones need no cache for this) and opens with its comment."""
    from leakaudit.zoo import load_spec, shipped_audits

    names = shipped_audits()
    assert "fashion-resnet18-5k" in names
    for name in names:
        spec, _ = load_spec(name)
        assert spec.name == name
        text = (REPO / "audits" / f"{name}.toml").read_text(encoding="utf-8")
        assert text.startswith("# ") and text.index("[reference]") > 0, name


@pytest.mark.parametrize(
    ("key", "value", "flag"),
    [
        ("conditioning", '"matrix"', "--conditioning"),
        ("seed", "7", "--seed"),
        ("budget_s", "30", "--budget"),
        ("prior", '"none"', "--prior"),
        ("effort", '"quick"', "--effort"),
    ],
)
def test_run_level_values_in_the_engine_table_are_refused(key: str, value: str, flag: str, tiny: TinyReference,
                                                          tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The run owns these: an engine table value would otherwise be replaced by the run's without a word."""
    config = tmp_path / "audit.toml"
    config.write_text(f"[inversion]\nsteps = 5\n{key} = {value}\n")
    code, _, err = run_cli(["run", str(tiny.torchscript), "--data", str(tiny.train_dir), "--config", str(config),
                            "--out", str(tmp_path / "o")], capsys)
    assert_error(code, err, f"[tool.leakaudit.inversion] {key} is set for the whole run: use {flag}")
    assert_no_result(tmp_path / "o")


def test_every_run_option_is_a_file_key_and_reaches_the_run(tmp_path: Path) -> None:
    keys = file_keys()
    flags = {opt[2:].replace("-", "_") for p in run.params for opt in p.opts if opt.startswith("--")}
    assert set(keys) == flags - {"config", "debug", "unsafe_pickle"} - set(GATE_KEYS)
    assert keys["format"].param == "output_format" and keys["holdout"].is_path and not keys["seed"].is_path
    config = tmp_path / "audit.toml"
    config.write_text('conditioning = "matrix"\nseed = 7\nbudget = 30\nholdout = "non-members"\nfail_ssim = 0.8\n')
    read = read_config(config, run_keys=keys)
    assert read.defaults == {
        "conditioning": "matrix",
        "seed": 7,
        "budget": 30,
        "holdout": str(tmp_path / "non-members"),
    }
    assert read.gate == {"fail_ssim": 0.8} and read.warnings == ()
