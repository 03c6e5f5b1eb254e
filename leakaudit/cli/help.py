"""``run --help`` that a new user can read: options in groups, every default shown, exit codes, examples.

Each setting names its group in the settings schema; the command's own
parameters (the model, --config, --debug) are placed here. Any option without
a group lands under "Other options" rather than disappearing.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import click

from leakaudit.config import options
from leakaudit.config.schema import GROUPS as SCHEMA_GROUPS
from leakaudit.errors import DataError, ModelError, UsageError

# The command's own parameters, beside the settings (each of which names its group in the schema).
OWN_GROUPS = {"model": "Inputs", "config": "Inputs", "debug": "Run"}
GROUPS: tuple[tuple[str, tuple[str, ...]], ...] = tuple(
    (group, tuple(o.name for o in options() if o.meta.group == group)
     + tuple(name for name, own in OWN_GROUPS.items() if own == group)) for group in SCHEMA_GROUPS)
GROUP_OF = {name: group for group, names in GROUPS for name in names}
HELP_OPTION_GROUP = "Run"
OTHER = "Other options"


def _gate_default(name: str) -> str | None:
    """A threshold flag defaults to None on the command line (the gate's default applies): show the gate's."""
    option = next((o for o in options() if o.to_gate and o.name == name), None)
    if option is None or isinstance(option.default, bool):
        return None
    return "off" if option.default is None else f"{option.default:.2f}"


EXIT_CODES = (
    ("0", "the gate passed"),
    ("1", "the gate failed: leakage found"),
    ("2", "error (usage, config, model, data, output, internal) or an incomplete attack: one line on stderr"),
    ("130", "interrupted (Ctrl-C, SIGTERM)"),
)


def _record(param: click.Parameter, ctx: click.Context) -> tuple[str, str] | None:
    record = param.get_help_record(ctx)
    if record is None:
        return None
    name, text = record
    implied = _gate_default(param.name or "")
    if implied and "[default" not in text:
        text = f"{text}  [default: {implied}]"
    return name, text


class GroupedCommand(click.Command):
    """A command whose help lists its options by group, then its exit codes and examples."""

    def __init__(self, *args: Any, examples: Sequence[tuple[str, str]] = (), **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)  # click.Command's own arguments, passed through as given
        self.examples = tuple(examples)

    def format_options(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        sections: dict[str, list[tuple[str, str]]] = {group: [] for group, _ in GROUPS}
        sections[OTHER] = []
        help_option = self.get_help_option(ctx)
        for param in self.get_params(ctx):
            record = _record(param, ctx)
            if isinstance(param, click.Argument) and param.name:
                record = (param.human_readable_name, self.argument_help.get(param.name, ""))
            group = HELP_OPTION_GROUP if param is help_option else GROUP_OF.get(param.name or "", OTHER)
            if record is not None:
                sections[group].append(record)
        for group, rows in sections.items():
            if rows:
                with formatter.section(group):
                    formatter.write_dl(rows)

    argument_help = {"model": "The model file: TorchScript, a torch.export program (.pt2), or a state_dict / "
                              "safetensors file with --arch."}

    def format_epilog(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        with formatter.section("Exit codes"):
            formatter.write_dl(list(EXIT_CODES))
        if self.examples:
            with formatter.section("Examples"):
                for text, command in self.examples:
                    formatter.write_text(text)
                    formatter.write(f"{' ' * (formatter.current_indent + 2)}$ {command}\n")  # never wrapped: copyable
        super().format_epilog(ctx, formatter)


RUN_EXAMPLES = (
    ("Audit a model against its training images, with held-back images of the same kind as the null:",
     "leakaudit run model.pt --data ./train --holdout ./heldout"),
    ("In CI: fail only on new or worse findings than the last audit, with a JUnit file and a job summary:",
     "leakaudit run model.pt --data ./train --holdout ./heldout --baseline old.json --junit junit.xml"),
)


def click_message(exc: click.ClickException) -> str:
    """A click error as one line, in the CLI's own style, pointing at the help that answers it."""
    message = " ".join(exc.format_message().split())
    ctx = getattr(exc, "ctx", None)
    if isinstance(exc, click.UsageError) and ctx is not None:
        message += f" (see `{ctx.command_path} --help`)"
    return message


DATA_FILE_SUFFIXES = (".npz", ".parquet")  # besides image folders (leakaudit.data.sources)


def check_paths(opts: Mapping[str, Any]) -> None:
    """The input paths exist and have the right kind, checked before any heavy import."""
    model = Path(opts["model"])
    if not model.exists():
        raise ModelError(f"model file not found: {model}")
    if not model.is_file():
        raise ModelError(f"model path is not a file: {model}")
    for key in ("data", "holdout"):
        folder = opts.get(key)
        data_file = folder is not None and Path(folder).suffix in DATA_FILE_SUFFIXES
        if folder is not None and not Path(folder).exists():
            raise DataError(f"data {'file' if data_file else 'folder'} not found: {folder}")
        if folder is not None and not (Path(folder).is_dir() or (data_file and Path(folder).is_file())):
            raise DataError(f"data path is not a folder, an .npz or a .parquet file: {folder}")
    for key in ("baseline", "init"):
        file = opts.get(key)
        if file is not None and not Path(file).is_file():
            raise UsageError(f"--{key} {file}: file not found")
