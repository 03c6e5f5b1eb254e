"""How the audited model was trained, as the reference models must repeat it: ``TrainingRecipe``.

The owner knows the recipe and gives it (a TOML file, ``[tool.leakaudit.recipe]``
or a mapping); an outside auditor runs with ``DEFAULT_RECIPE`` and every output
says the recipe was guessed. Parsing reports every problem of a recipe at once.
"""

from __future__ import annotations

import math
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

from leakaudit.errors import ConfigError, did_you_mean

OPTIMIZERS = ("sgd", "adam", "adamw")
STARTS = ("fresh", "init")
AUGMENT_KINDS = ("hflip", "shift", "rotate")


@dataclass(frozen=True)
class TrainingRecipe:
    """The training recipe of the audited model (and so of its reference models)."""

    optimizer: str = "adam"
    lr: float = 1e-3
    momentum: float = 0.9  # SGD only
    weight_decay: float = 0.0
    batch_size: int | str = 64  # an integer, or "full" (every training image in one step)
    epochs: int = 30  # the cap; ``until_train_accuracy`` may stop sooner
    until_train_accuracy: float | None = 1.0  # stop once the eval-mode train accuracy reaches it; None: run all epochs
    augment: tuple[str, ...] = ()  # "hflip", "shift:N" (pixels), "rotate:D" (degrees)
    label_smoothing: float = 0.0
    trained_layers: str | tuple[str, ...] = "all"  # "all" | "head" | parameter name prefixes
    start: str = "fresh"  # "fresh": the architecture's default initialisation; "init": the --init weights
    function: str | None = None  # the owner's training function (train_fn=) by name, which replaces the loop

    @property
    def flips(self) -> bool:
        """Whether the model saw mirrored images: the signal then averages the image and its mirror."""
        return "hflip" in self.augment

    @property
    def head_only(self) -> bool:
        return self.trained_layers == "head"

    def batch_for(self, n: int) -> int:
        """The batch size on a training set of ``n`` images."""
        return n if self.batch_size == "full" else min(int(self.batch_size), max(n, 1))

    def to_dict(self) -> dict[str, Any]:
        """Plain values for the findings document (lists, not tuples); with the owner's function, what still
        applies beside it (where the copy starts, and the augmentations that decide whether mirrors are queried)."""
        if self.function is not None:
            return {"function": f"user function {self.function}", "start": self.start, "augment": list(self.augment)}
        out: dict[str, Any] = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "function"}
        out["augment"] = list(self.augment)
        if isinstance(self.trained_layers, tuple):
            out["trained_layers"] = list(self.trained_layers)
        return out


# The default is a guess at the most common way a small image classifier is trained from scratch: Adam at its
# usual learning rate 1e-3, minibatches of 64, no regularisation, until the training set is fitted (train accuracy
# 1.0) within 30 epochs. Models that leak membership are those fitted to their training set, so a reference model
# that fits its own subset is the right null for them; a regularised target makes the recipe check warn.
DEFAULT_RECIPE = TrainingRecipe()

_KEYS = tuple(f.name for f in fields(TrainingRecipe) if f.name != "function")  # the file's keys


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _augment_problem(item: Any) -> str | None:
    if not isinstance(item, str):
        return f"augment entries must be strings, not {type(item).__name__}"
    kind, _, arg = item.partition(":")
    if kind not in AUGMENT_KINDS:
        return f"augment {item!r} is not 'hflip', 'shift:N' or 'rotate:D'{did_you_mean(kind, AUGMENT_KINDS)}"
    if kind == "hflip":
        return None if not arg else "augment 'hflip' takes no argument"
    try:
        amount = float(arg) if kind == "rotate" else int(arg)
    except ValueError:
        return f"augment {item!r} needs a number after the colon ({kind}:{'D' if kind == 'rotate' else 'N'})"
    return None if amount > 0 else f"augment {item!r} needs a positive amount"


def _check_value(key: str, value: Any) -> str | None:
    """The problem with one key's value, or None."""
    if key == "optimizer":
        ok = isinstance(value, str) and value in OPTIMIZERS
        return None if ok else f"optimizer must be one of {', '.join(OPTIMIZERS)}, not {value!r}"
    if key in ("lr", "momentum", "weight_decay", "label_smoothing"):
        if not _number(value) or not math.isfinite(value):
            return f"{key} must be a number, not {value!r}"
        if key == "lr" and value <= 0:
            return f"lr must be positive, not {value}"
        if value < 0 or (key == "label_smoothing" and value >= 1):
            return f"{key} must be {'in [0, 1)' if key == 'label_smoothing' else 'zero or positive'}, not {value}"
        return None
    if key == "batch_size":
        ok = value == "full" or (isinstance(value, int) and not isinstance(value, bool) and value >= 1)
        return None if ok else f"batch_size must be a positive integer or \"full\", not {value!r}"
    if key == "epochs":
        ok = isinstance(value, int) and not isinstance(value, bool) and value >= 1
        return None if ok else f"epochs must be a positive integer, not {value!r}"
    if key == "until_train_accuracy":
        ok = value is None or (_number(value) and 0 < value <= 1)
        return None if ok else f"until_train_accuracy must be a number in (0, 1], not {value!r}"
    if key == "augment":
        if not isinstance(value, (list, tuple)):
            return f"augment must be a list of strings, not {value!r}"
        problems = [p for p in (_augment_problem(v) for v in value) if p]
        return "; ".join(problems) or None
    if key == "trained_layers":
        if value in ("all", "head"):
            return None
        ok = isinstance(value, (list, tuple)) and len(value) > 0 and all(isinstance(v, str) and v for v in value)
        return None if ok else ("trained_layers must be \"all\", \"head\" or a list of parameter name prefixes, "
                                f"not {value!r}")
    if key == "start":
        return None if value in STARTS else f"start must be \"fresh\" or \"init\", not {value!r}"
    return None


def recipe_from_mapping(table: Mapping[str, Any], source: str = "the recipe") -> TrainingRecipe:
    """A recipe from a flat table; ConfigError listing every problem (unknown keys with a suggestion)."""
    problems: list[str] = []
    for key in table:
        if key not in _KEYS:
            problems.append(f"unknown key {key!r}{did_you_mean(str(key), _KEYS)}")
    for key in _KEYS:
        if key in table:
            problem = _check_value(key, table[key])
            if problem:
                problems.append(problem)
    if problems:
        raise ConfigError(f"{source} is not valid: " + "; ".join(problems))
    values = {k: v for k, v in table.items()}
    if "augment" in values:
        values["augment"] = tuple(values["augment"])
    if isinstance(values.get("trained_layers"), list):
        values["trained_layers"] = tuple(values["trained_layers"])
    for key in ("lr", "momentum", "weight_decay", "label_smoothing", "until_train_accuracy"):
        if values.get(key) is not None:
            values[key] = float(values[key])
    return TrainingRecipe(**values)


def file_table(recipe: TrainingRecipe) -> dict[str, Any]:
    """The recipe as its file's table (what ``recipe_from_mapping`` reads back), without the owner's function."""
    return replace(recipe, function=None).to_dict()


def load_recipe(path: str | Path) -> TrainingRecipe:
    """A recipe from a TOML file: the flat table, or a ``[recipe]`` / ``[tool.leakaudit.recipe]`` table in it."""
    file = Path(path)
    try:
        table = tomllib.loads(file.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"cannot read the recipe {file}: {exc.strerror or exc}") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"the recipe {file} is not valid TOML: {exc}") from None
    if isinstance(table.get("tool"), dict) and isinstance(table["tool"].get("leakaudit"), dict) \
            and "recipe" in table["tool"]["leakaudit"]:
        table = table["tool"]["leakaudit"]["recipe"]
    elif set(table) == {"recipe"} and isinstance(table["recipe"], dict):
        table = table["recipe"]
    return recipe_from_mapping(table, f"the recipe {file}")


def augmentations(recipe: TrainingRecipe) -> tuple[bool, int, float]:
    """(flip, shift pixels, rotation degrees) of a recipe's augment list."""
    flip, shift, rotate = False, 0, 0.0
    for item in recipe.augment:
        kind, _, arg = item.partition(":")
        if kind == "hflip":
            flip = True
        elif kind == "shift":
            shift = max(shift, int(arg))
        elif kind == "rotate":
            rotate = max(rotate, float(arg))
    return flip, shift, rotate
