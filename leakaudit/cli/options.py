"""The `run` command's options, made from the settings schema, and the config file fed into them.

Each option is a setting of ``leakaudit.config.schema`` turned into a click
option: the flag, the help text, the type and the default all come from
there. A ``[tool.leakaudit]`` key is fed into click's ``default_map`` so that a
flag on the command line wins through click's own code path (as psf/black
does). Gate thresholds go to the gate table, which the gate validates once.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from leakaudit.config import AuditSettings, Option, build_settings, options, read_config
from leakaudit.config.kinds import BadValue, Choice, Flag, Floats, IntPair, Kind, Number, PathKind
from leakaudit.gate.settings import THRESHOLD_KEYS

if TYPE_CHECKING:
    _FloatsParam = click.ParamType[tuple[float, ...], Any]
else:  # click 8.1's ParamType takes no type arguments (subscripting it would fail)
    _FloatsParam = click.ParamType


class FloatList(_FloatsParam):
    """``0.485,0.456,0.406`` (or one value for every channel)."""

    name = "FLOATS"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> tuple[float, ...]:
        try:
            return Floats().convert(value)
        except BadValue as exc:
            self.fail(str(exc), param, ctx)


def click_type(kind: Kind) -> click.ParamType[Any] | tuple[type, ...] | None:
    """The click type that parses what ``kind`` takes."""
    if isinstance(kind, Number) and kind.integer:
        return click.INT if kind.minimum is None else click.IntRange(min=int(kind.minimum))
    if isinstance(kind, Number):
        return click.FLOAT if kind.minimum is None else click.FloatRange(min=kind.minimum)
    if isinstance(kind, Choice):
        return click.Choice(list(kind.choices))
    if isinstance(kind, PathKind):
        return click.Path(file_okay=kind.file_okay, dir_okay=kind.dir_okay, path_type=Path)
    if isinstance(kind, Floats):
        return FloatList()
    if isinstance(kind, IntPair):
        return (int, int)
    return None  # Text and Flag: click's own


def click_option(option: Option) -> Any:
    """The click option of one setting: a gate flag defaults to unset (the gate's default applies)."""
    kind = option.meta.kind
    extra: dict[str, Any] = {}
    if isinstance(kind, Flag):
        if "/" not in option.flags[0]:  # a "--x/--no-x" pair is a flag by its form
            extra["is_flag"] = True
        extra["default"] = None if option.to_gate else option.default
    else:
        extra["type"] = click_type(kind)
        if not option.to_gate and option.default is not None:
            extra["default"] = option.default
    metavar = getattr(kind, "metavar", None)
    if metavar:
        extra["metavar"] = metavar
    return click.option(*option.flags, option.name, help=option.meta.help, **extra)


def _load_config_into_context(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    """Eager callback: read the config file before other options are processed."""
    file_config = read_config(Path(value) if value else None)
    ctx.default_map = {**(ctx.default_map or {}), **file_config.defaults}
    ctx.meta["leakaudit.config"] = file_config
    return value


def run_options(func: Any) -> Any:
    """Decorate ``run`` with the model argument, every setting's option in schema order, then its own options."""
    decorators = [
        click.argument("model", type=click.Path(dir_okay=False, path_type=Path)),
        *(click_option(option) for option in options()),
        click.option("--debug", is_flag=True, help="Show tracebacks."),
        click.option("--config", type=click.Path(dir_okay=False, path_type=Path), is_eager=True, expose_value=False,
                     callback=_load_config_into_context,
                     help="TOML settings (default: [tool.leakaudit] in ./pyproject.toml)."),
    ]
    for decorator in reversed(decorators):
        func = decorator(func)
    return func


def _gate_from(ctx: click.Context, opts: dict[str, Any]) -> tuple[dict[str, Any], dict[str, str]]:
    """The gate table after file and flags, and where each value came from (for messages)."""
    file_config = ctx.meta.get("leakaudit.config")
    gate = dict(file_config.gate) if file_config else {}
    sources = {key: file_config.where(key) for key in gate} if file_config else {}
    for key in THRESHOLD_KEYS:  # a threshold flag given on the command line wins over the file
        if opts.get(key) is not None:
            gate[key] = opts[key]
            sources[key] = "--" + key.replace("_", "-")
    if opts.get("require_power"):
        gate["require_power"] = True
        sources["require_power"] = "--require-power"
    return gate, sources


def settings_from(ctx: click.Context, opts: dict[str, Any]) -> AuditSettings:
    """The audit's settings after file and flags; the gate's thresholds are validated here, once."""
    file_config = ctx.meta.get("leakaudit.config")
    gate, sources = _gate_from(ctx, opts)
    values = {option.name: opts[option.name] for option in options() if not option.to_gate}
    if values.get("recipe") is None and file_config is not None and file_config.recipe is not None:
        values["recipe"] = file_config.recipe  # [tool.leakaudit.recipe]; --recipe FILE wins
    return build_settings({"model": opts["model"], **values}, gate=gate, sources=sources,
                          inversion=file_config.inversion if file_config else {}, command=tuple(sys.argv))
