"""The README and the manual name only options that exist, and the manual lists every one of `run`'s."""

from __future__ import annotations

import re
from pathlib import Path

import click
import pytest

from leakaudit.cli.commands import cli, run

REPO = Path(__file__).resolve().parent.parent
FLAG = re.compile(r"(?<![\w-])--[a-z][a-z0-9-]*")


def _options(command: click.Command) -> set[str]:
    return {opt for p in command.params for opt in (*p.opts, *p.secondary_opts) if opt.startswith("--")}


def _every_option() -> set[str]:
    assert isinstance(cli, click.Group)
    return {"--help", "--version"}.union(*(_options(c) for c in cli.commands.values()))


@pytest.mark.parametrize("page", ["README.md", "docs/configuration.md", "docs/models.md", "docs/inputs.md",
                                  "docs/outputs.md", "docs/gate.md", "docs/power.md", "docs/python-api.md"])
def test_every_option_a_page_names_exists(page: str) -> None:
    text = (REPO / page).read_text(encoding="utf-8")
    unknown = sorted(set(FLAG.findall(text)) - _every_option())
    assert not unknown, f"{page} names options no command has: {unknown}"


def test_the_configuration_page_lists_every_run_option_with_its_default() -> None:
    text = (REPO / "docs" / "configuration.md").read_text(encoding="utf-8")
    rows = {line.split(" | ")[0].lstrip("| "): line for line in text.splitlines() if line.startswith("| `--")}
    for param in run.params:
        if not isinstance(param, click.Option):
            continue
        names = " / ".join(f"`{o}`" for o in (*param.opts, *param.secondary_opts))
        assert names in rows, f"{names} is missing from docs/configuration.md"
        default = param.default
        if isinstance(default, (int, float, str)) and not isinstance(default, bool) and param.show_default is not False:
            assert f"`{default}`" in rows[names], f"{names}: default {default!r} not in its row"


def test_the_readme_starts_with_the_two_commands_and_stays_short() -> None:
    text = (REPO / "README.md").read_text(encoding="utf-8")
    first_block = re.findall(r"```\n(.*?)```", text, flags=re.S)[1]
    assert first_block.split()[:2] == ["make", "demo"] and "make test" in first_block
    assert len(text.split()) <= 2000
    for link in re.findall(r"\]\(((?:docs|bench)/[^)#]+)", text):
        assert (REPO / link).is_file(), link


def test_every_local_link_of_the_manual_leads_to_a_file() -> None:
    for page in [REPO / "README.md", REPO / "bench" / "README.md", *sorted((REPO / "docs").glob("*.md"))]:
        for target in re.findall(r"\]\(([^)#:]+)(?:#[^)]*)?\)", page.read_text(encoding="utf-8")):
            assert (page.parent / target).exists(), f"{page.relative_to(REPO)} links to {target}"
