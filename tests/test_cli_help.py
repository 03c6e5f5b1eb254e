"""The CLI for a new user: grouped help with defaults, exit codes and examples; one-line errors, found fast."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from leakaudit.cli.commands import main
from leakaudit.cli.help import GROUPS

from .conftest import TinyReference


def run_cli(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exit_info:
        main(args)
    out, err = capsys.readouterr()
    return int(exit_info.value.code or 0), out, err


def test_run_help_groups_options_and_shows_defaults_exit_codes_and_examples(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run_cli(["run", "--help"], capsys)
    assert code == 0
    headings = [line[:-1] for line in out.splitlines() if line.endswith(":") and not line.startswith(" ")]
    assert headings[:6] == [group for group, _ in GROUPS] and "Exit codes" in headings and "Examples" in headings
    gate = " ".join(out.split("\nGate:")[1].split("\nOutputs:")[0].split())  # the column width varies
    assert "--fail-ssim" in gate and "[default: 0.70]" in gate and "--baseline" in gate
    assert "[default: leakaudit-out]" in out and "130" in out
    assert sum(1 for line in out.splitlines() if line.strip().startswith("$ leakaudit run")) == 2
    assert "Other options" not in out  # every option has its group


def test_every_command_has_a_whole_summary_and_every_option_a_text(capsys: pytest.CaptureFixture[str]) -> None:
    _, out, _ = run_cli(["--help"], capsys)
    commands = out.split("Commands:")[1]
    assert "..." not in commands and "…" not in commands
    for command in ("demo", "report", "fetch-weights"):
        _, out, _ = run_cli([command, "--help"], capsys)
        options = [re.split(r"\s{2,}", line.strip()) for line in out.split("Options:")[1].splitlines()
                   if line.startswith("  -")]
        assert options and all(len(o) > 1 and not o[1].startswith("[") for o in options), options


def test_usage_errors_are_one_line_in_the_cli_style(capsys: pytest.CaptureFixture[str]) -> None:
    for args, words in ((["run", "m.pt", "--fail-sim", "0.5"], "--fail-ssim"), (["bogus"], "No such command")):
        code, out, err = run_cli(args, capsys)
        assert code == 2 and out == ""
        assert err.count("\n") == 1 and err.startswith("leakaudit: error: ") and words in err, err
        assert "Usage:" not in err


def test_a_missing_path_is_reported_before_torch_is_imported(tmp_path: Path) -> None:
    probe = ("import sys\nfrom leakaudit.cli.commands import main\n"
             "try:\n    main(sys.argv[1:])\nexcept SystemExit as e:\n"
             "    print('torch' in sys.modules, e.code)\n")
    for args, message in (([str(tmp_path / "absent.pt"), "--data", str(tmp_path)], "model file not found"),
                          ([__file__, "--data", str(tmp_path / "nodata")], "data folder not found")):
        proc = subprocess.run([sys.executable, "-c", probe, "run", *args], capture_output=True, text=True, timeout=60)
        assert proc.stdout.split() == ["False", "2"], proc.stderr
        assert proc.stderr.strip().startswith("leakaudit: error: ") and message in proc.stderr


def test_images_of_the_wrong_size_name_the_size_the_model_wants(tiny: TinyReference, tmp_path: Path,
                                                                capsys: pytest.CaptureFixture[str]) -> None:
    small = tmp_path / "small"
    for image in sorted(tiny.train_dir.rglob("*.png")):
        target = small / image.parent.name / image.name
        target.parent.mkdir(parents=True, exist_ok=True)
        Image.open(image).resize((28, 28)).save(target)
    code, _, err = run_cli(["run", str(tiny.torchscript), "--data", str(small), "--out", str(tmp_path / "out")], capsys)
    assert code == 2
    assert "the first layer takes 1024 values per image (1×32×32: --input-size 32 32), 1×28×28 images give 784" in err
    assert "TorchScript interpreter" not in err
