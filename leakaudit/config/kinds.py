"""What values a setting takes, said once for every front door.

A kind converts a value (a keyword argument of ``leakaudit.audit()``) and
says in words what is wrong with it. The CLI turns each kind into the click
type that parses the same values from a flag or a ``[tool.leakaudit]`` key;
the messages here read like click's, so a value is refused in the same words
whichever door it came through.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

BOOL_WORDS = {"1": True, "true": True, "t": True, "yes": True, "y": True, "on": True,
              "0": False, "false": False, "f": False, "no": False, "n": False, "off": False}


class BadValue(ValueError):
    """A value a setting cannot take; the message says why, without naming the setting."""


@dataclass(frozen=True)
class Text:
    """Any string."""

    metavar: str | None = None

    def convert(self, value: Any) -> str:
        return str(value)


@dataclass(frozen=True)
class Number:
    """An int or a float, at least ``minimum`` when one is given."""

    integer: bool = False
    minimum: float | None = None

    def convert(self, value: Any) -> int | float:
        kind = int if self.integer else float
        try:
            number = kind(value)
        except (TypeError, ValueError):
            raise BadValue(f"{value!r} is not a valid {'integer' if self.integer else 'float'}.") from None
        if self.integer and isinstance(value, float) and value != number:
            raise BadValue(f"{value!r} is not a valid integer.")
        if self.minimum is not None and number < self.minimum:
            raise BadValue(f"{number} is not in the range x>={kind(self.minimum)}.")
        return number


@dataclass(frozen=True)
class Choice:
    """One of a few words."""

    choices: tuple[str, ...]

    def convert(self, value: Any) -> str:
        if value not in self.choices:
            raise BadValue(f"{value!r} is not one of {', '.join(repr(c) for c in self.choices)}.")
        return str(value)


@dataclass(frozen=True)
class Flag:
    """True or false; ``negative`` names the flag that turns it off (``--no-images``), if any."""

    negative: str | None = None

    def convert(self, value: Any) -> bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.strip().lower() in BOOL_WORDS:
            return BOOL_WORDS[value.strip().lower()]
        raise BadValue(f"{value!r} is not a valid boolean.")


@dataclass(frozen=True)
class PathKind:
    """A path; ``file_okay`` / ``dir_okay`` say what it may name (checked where it is used)."""

    file_okay: bool = True
    dir_okay: bool = True

    def convert(self, value: Any) -> Path:
        if not isinstance(value, (str, Path)):
            raise BadValue(f"{value!r} is not a path.")
        return Path(value)


@dataclass(frozen=True)
class Floats:
    """``0.485,0.456,0.406``, a sequence of numbers, or one value for every channel (1 to 4 values)."""

    def convert(self, value: Any) -> tuple[float, ...]:
        items: Sequence[Any] = (list(value) if isinstance(value, (list, tuple))
                                else [v for v in str(value).replace(",", " ").split() if v])
        try:
            floats = tuple(float(v) for v in items)
        except (TypeError, ValueError):
            raise BadValue(f"{value!r} is not a comma-separated list of numbers") from None
        if not floats or len(floats) > 4:
            raise BadValue(f"{value!r}: give 1 to 4 values (one per channel)")
        return floats


@dataclass(frozen=True)
class IntPair:
    """Two integers (``H W``)."""

    metavar: str = "H W"

    def convert(self, value: Any) -> tuple[int, int]:
        if not isinstance(value, (list, tuple)) or len(value) != 2:
            raise BadValue(f"{value!r} is not a pair of integers.")
        first, second = (Number(integer=True).convert(v) for v in value)
        return int(first), int(second)


@dataclass(frozen=True)
class Function:
    """A Python callable (a setting only ``leakaudit.audit()`` takes: no flag or file value can be a function)."""

    signature: str = ""

    def convert(self, value: Any) -> Any:
        if not callable(value):
            raise BadValue(f"{type(value).__name__} {value!r} is not callable; pass a function {self.signature}")
        return value


Kind = Text | Number | Choice | Flag | PathKind | Floats | IntPair | Function
