"""Merged values into ``AuditSettings``: the one constructor the CLI and ``leakaudit.audit()`` share."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import fields
from typing import Any

from leakaudit.config.kinds import BadValue, Function
from leakaudit.config.schema import AuditSettings, all_options
from leakaudit.errors import ConfigError, UsageError
from leakaudit.gate.settings import gate_settings_from_mapping
from leakaudit.membership.recipe import TrainingRecipe, load_recipe, recipe_from_mapping

NOT_VALUES = frozenset({"gate", "inversion", "command"})  # built here from their own tables


def build_settings(values: Mapping[str, Any], *, gate: Mapping[str, Any] | None = None,
                   sources: Mapping[str, str] | None = None, inversion: Mapping[str, Any] | None = None,
                   command: tuple[str, ...] = ()) -> AuditSettings:
    """The settings of one audit from values by field name (a field not given keeps its default).

    ``gate`` is the ``[tool.leakaudit.gate]`` table after the flags or keywords,
    ``sources`` where each of its values came from (for messages); the gate's
    thresholds are validated here, once, every problem together.
    """
    names = {f.name for f in fields(AuditSettings)} - NOT_VALUES
    stray = sorted(set(values) - names)
    if stray:  # a front door passing a name the schema does not have is a bug, never a user's typo
        raise TypeError(f"not settings fields: {', '.join(stray)}")
    baseline = values.get("baseline")
    gate_settings = gate_settings_from_mapping(gate or {}, str(baseline) if baseline else None, sources=sources)
    if values.get("prior") == "holdout" and values.get("holdout") is None:
        raise UsageError("--prior holdout needs --holdout DIR")
    recipe = values.get("recipe")
    if recipe is not None and not isinstance(recipe, TrainingRecipe):  # checked before the run: one ConfigError
        recipe = recipe_from_mapping(recipe, "recipe=") if isinstance(recipe, Mapping) else load_recipe(recipe)
        values = {**values, "recipe": recipe}
    _check_functions(values)
    return AuditSettings(**values, gate=gate_settings, inversion=dict(inversion or {}), command=command)


def _check_functions(values: Mapping[str, Any]) -> None:
    """A Python-only function setting that is not callable: one ConfigError naming every one."""
    problems = []
    for option in all_options():
        if isinstance(option.meta.kind, Function) and values.get(option.name) is not None:
            try:
                option.meta.kind.convert(values[option.name])
            except BadValue as exc:
                problems.append(f"{option.key}=: {exc}")
    if problems:
        raise ConfigError("; ".join(problems))
