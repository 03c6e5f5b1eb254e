"""One settings schema: a flag, a [tool.leakaudit] key and an audit() keyword are one setting, checked alike."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import click
import pytest

from leakaudit.cli.commands import run
from leakaudit.cli.options import settings_from
from leakaudit.config import AuditSettings, file_keys, options, read_config
from leakaudit.config.keywords import check_keywords, keyword_names
from leakaudit.errors import ConfigError, UsageError
from leakaudit.gate.settings import GateSettings
from leakaudit.inversion.candidates import candidates_per_class_for
from leakaudit.inversion.config import EFFORT_LEVELS
from leakaudit.pipeline.attack import resolve_inversion

DOOR_VALUES = {"seed": 7, "effort": "quick", "budget": 30.0, "top": 3, "mean": (0.5, 0.25), "input_size": (28, 28),
               "prior": "none", "conditioning": "matrix", "images": False, "power_check": False, "redact": "blur",
               "candidates_per_class": 4, "max_image_mb": 2.0, "require_confinement": True}


def test_every_setting_is_one_flag_one_file_key_and_one_keyword_with_the_schemas_default(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # no pyproject.toml: every value is the command's default
    params = {p.name: p for p in run.params}
    with run.make_context("run", ["m.pt"]) as ctx:
        given = dict(ctx.params)
    gate_defaults = GateSettings()
    for option in options():
        param = params[option.name]
        assert isinstance(param, click.Option) and option.flags[0].split("/")[0] in param.opts, option.name
        assert param.help == option.meta.help
        if option.to_gate:  # unset on the command line: the gate's own default applies
            assert given[option.name] is None and option.default == getattr(gate_defaults, option.name)
        else:
            assert given[option.name] == option.default == getattr(AuditSettings, option.name, None), option.name
        assert (option.key in file_keys()) == (option.meta.in_file and not option.to_gate), option.key
        assert (option.key in keyword_names()) == (option.meta.not_a_keyword is None), option.key
    assert set(params) - {o.name for o in options()} == {"model", "debug", "config"}


def _through_the_cli(argv: list[str]) -> AuditSettings:
    with run.make_context("run", argv) as ctx:
        return settings_from(ctx, dict(ctx.params))


def test_a_value_means_the_same_as_a_flag_a_file_key_and_a_keyword(tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    flags = ["m.pt", "--data", "train", "--seed", "7", "--effort", "quick", "--budget", "30", "--top", "3",
             "--mean", "0.5,0.25", "--input-size", "28", "28", "--prior", "none", "--conditioning", "matrix",
             "--no-images", "--no-power-check", "--redact", "blur", "--candidates-per-class", "4",
             "--max-image-mb", "2", "--require-confinement"]
    (tmp_path / "pyproject.toml").write_text(
        '[tool.leakaudit]\ndata = "train"\nseed = 7\neffort = "quick"\nbudget = 30\ntop = 3\nmean = "0.5,0.25"\n'
        'input_size = [28, 28]\nprior = "none"\nconditioning = "matrix"\nimages = false\npower-check = false\n'
        'redact = "blur"\ncandidates_per_class = 4\nmax_image_mb = 2\nrequire_confinement = true\n')
    by_flags = _through_the_cli(flags)
    monkeypatch.chdir(tmp_path)
    by_file = _through_the_cli(["m.pt"])
    by_keywords = check_keywords({**DOOR_VALUES, "mean": [0.5, 0.25], "input_size": [28, 28]}).values
    for name, value in DOOR_VALUES.items():
        assert getattr(by_flags, name) == getattr(by_file, name) == by_keywords[name] == value, name
    assert by_file.data == tmp_path / "train"  # a relative path in a file is taken from the file's folder


def test_every_bad_keyword_is_reported_at_once_with_a_suggestion() -> None:
    with pytest.raises(UsageError) as info:
        check_keywords({"efort": "quick", "budget": 0, "top": "many", "format": "json", "fail_ssim": 0.5},
                       gate={"fail_ssim": 0.6})
    message = str(info.value)
    for part in ("unknown setting 'efort' (did you mean 'effort'?)", "budget=0: 0.0 is not in the range x>=1.0",
                 "top='many': 'many' is not a valid integer", "'format' is not a setting of audit(): it only changes",
                 "fail_ssim is given both as a keyword and in gate="):
        assert part in message, part


def test_a_misspelt_file_key_is_warned_about_with_the_closest_key(tmp_path: Path) -> None:
    config = tmp_path / "audit.toml"
    config.write_text('efort = "quick"\ncandidates-per-clas = 3\nseed = 4\n')
    read = read_config(config)
    assert read.defaults == {"seed": 4}
    assert any("'efort' ignored (did you mean 'effort'?)" in w for w in read.warnings), read.warnings
    assert any("did you mean 'candidates_per_class'?" in w for w in read.warnings), read.warnings


def test_the_library_never_imports_click_or_the_cli() -> None:
    probe = ("import sys, leakaudit.api, leakaudit.config, leakaudit.pipeline.audit\n"
             "print(sorted(m for m in sys.modules if m == 'click' or m.startswith(('click.', 'leakaudit.cli'))))")
    proc = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"


def _settings(**values: Any) -> AuditSettings:
    return AuditSettings(model=Path("m.pt"), data=Path("train"), **values)


def test_the_inversion_settings_resolve_in_one_order() -> None:
    grown = candidates_per_class_for(200, 10)
    assert resolve_inversion(_settings(), 200, 10).candidates_per_class == grown  # grown with the data
    assert resolve_inversion(_settings(inversion={"candidates_per_class": 3}), 200, 10).candidates_per_class == 3
    run_wins = _settings(candidates_per_class=5, inversion={"candidates_per_class": 3})
    assert resolve_inversion(run_wins, 200, 10).candidates_per_class == 5
    capped = resolve_inversion(_settings(), 200, 10, most_candidates=1)
    assert capped.candidates_per_class == 1 and capped.pool_per_class >= 1
    quick = resolve_inversion(_settings(effort="quick", seed=9, budget=None), 200, 10)
    assert quick.steps == EFFORT_LEVELS["quick"]["steps"] and quick.seed == 9 and quick.budget_s is None
    table_wins = resolve_inversion(_settings(effort="quick", inversion={"steps": 7}), 200, 10)
    assert table_wins.steps == 7 and table_wins.effort == "quick"
    assert resolve_inversion(_settings(prior="none"), 200, 10).prior == "none"
    with pytest.raises(ConfigError, match=r"stepz \(did you mean 'steps'\?\)"):
        resolve_inversion(_settings(inversion={"stepz": 7}), 200, 10)
