"""The audit definitions that ship with leakaudit (``audits/*.toml``): reading one, listing them."""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, fields, replace
from importlib import resources
from pathlib import Path
from typing import Any

from leakaudit.errors import ConfigError
from leakaudit.zoo.spec import ReferenceSpec

DATASET_NAMES = {"digits": "scikit-learn digits", "lfw": "LFW faces", "mnist": "MNIST",
                 "fashion-mnist": "Fashion-MNIST"}


@dataclass(frozen=True)
class ShippedAudit:
    """One shipped definition as ``leakaudit demo --list`` shows it: its recipe and what it demonstrates."""

    spec: ReferenceSpec
    description: str  # the file's top-level ``description``: what auditing this classifier shows

    @property
    def data(self) -> str:
        """The data set, and the public set it was pre-trained on, if any."""
        data = DATASET_NAMES[self.spec.dataset]
        if self.spec.pretrain_dataset:
            data += f" (pre-trained on {DATASET_NAMES[self.spec.pretrain_dataset]})"
        return data

    @property
    def members(self) -> str:
        n = self.spec.train_per_class
        return f"{n:,} image{'s' if n != 1 else ''}/class"


def _read_definition(path_or_name: str | Path) -> tuple[Path, dict[str, Any]]:
    """The TOML document of an audit definition: a file, or a bare name among those that ship."""
    path = Path(path_or_name)
    if path.suffix != ".toml" and not path.exists():
        resource = resources.files("leakaudit.audits").joinpath(f"{path_or_name}.toml")
        if not resource.is_file():
            raise ConfigError(f"no shipped audit named {path_or_name!r}; see `leakaudit demo --list`")
        text = resource.read_text(encoding="utf-8")
    else:
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as exc:
            raise ConfigError(f"cannot read audit definition {path}: {exc.strerror or exc}") from None
    try:
        return path, tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path_or_name}: invalid TOML: {exc}") from None


def _spec(path_or_name: str | Path, path: Path, doc: dict[str, Any]) -> ReferenceSpec:
    table = doc.get("reference", {})
    known = {f.name for f in fields(ReferenceSpec)}
    unknown = sorted(set(table) - known)
    if unknown:
        raise ConfigError(f"{path_or_name}: unknown [reference] keys: {', '.join(unknown)}")
    table.setdefault("name", path.stem if path.suffix == ".toml" else str(path_or_name))
    return replace(ReferenceSpec(), **table)


def load_spec(path_or_name: str | Path) -> tuple[ReferenceSpec, dict[str, Any]]:
    """Read an audit definition (TOML): its ``[reference]`` table and its audit settings.

    A bare name (``digits-mlp-1pc``) is looked up among the audits that ship
    with leakaudit.
    """
    path, doc = _read_definition(path_or_name)
    return _spec(path_or_name, path, doc), doc.get("tool", {}).get("leakaudit", {})


def describe(path_or_name: str | Path) -> ShippedAudit:
    """An audit definition with its one-line ``description`` (empty when the file has none)."""
    path, doc = _read_definition(path_or_name)
    description = doc.get("description", "")
    if not isinstance(description, str):
        raise ConfigError(f"{path_or_name}: description must be a string")
    return ShippedAudit(_spec(path_or_name, path, doc), " ".join(description.split()))


def shipped_audits() -> list[str]:
    """Names of the audit definitions that ship with leakaudit."""
    folder = resources.files("leakaudit.audits")
    return sorted(p.name[: -len(".toml")] for p in folder.iterdir() if p.name.endswith(".toml"))
