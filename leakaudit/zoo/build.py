"""Building a zoo classifier on disk, once: its folders, TorchScript file and initial weights, cached by spec."""

from __future__ import annotations

import json
import shutil
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import torch

from leakaudit.data.folders import write_image_folder
from leakaudit.zoo.datasets import split_members
from leakaudit.zoo.spec import ReferenceSpec
from leakaudit.zoo.training import starting_classifier, train_classifier


@dataclass(frozen=True)
class BuiltReference:
    """Where a built reference lies on disk."""

    model_path: Path
    train_dir: Path
    holdout_dir: Path
    metrics: dict[str, float]
    init_path: Path | None = None  # the classifier's initial weights (state_dict), for init-aware audits


def _same_spec(stored: object, spec: ReferenceSpec) -> bool:
    """Whether a stored build is of this spec; a field the stored one predates counts at its default."""
    if not isinstance(stored, dict):
        return False
    defaults = {f.name: f.default for f in fields(ReferenceSpec)}
    return all(stored.get(name, defaults[name]) == value for name, value in asdict(spec).items())


def build_reference(spec: ReferenceSpec, out_dir: str | Path,
                    progress: Callable[[int, int], None] | None = None) -> BuiltReference:
    """Write members, non-members and a TorchScript classifier under ``out_dir``.

    A previous build of the same spec in the same folder is reused (the spec is
    stored beside it), since training is the slow part.
    """
    out = Path(out_dir)
    spec_file = out / "reference.json"
    model_path, train_dir, holdout_dir = out / "model.pt", out / "train", out / "holdout"
    init_path = out / "init.pt"
    if spec_file.exists() and model_path.exists() and init_path.exists():
        stored = json.loads(spec_file.read_text())
        if _same_spec(stored.get("spec"), spec):
            return BuiltReference(model_path, train_dir, holdout_dir, stored["metrics"], init_path)
    out.mkdir(parents=True, exist_ok=True)
    data = split_members(spec)
    start = starting_classifier(spec, data.train_images.shape[1], len(data.classes))
    start_state = {k: v.clone() for k, v in start.state_dict().items()}
    model, metrics = train_classifier(spec, data, progress, start)

    for folder in (train_dir, holdout_dir):
        if folder.exists():
            shutil.rmtree(folder)
    write_image_folder(train_dir, data.train_images, data.train_labels, data.classes)
    write_image_folder(holdout_dir, data.holdout_images, data.holdout_labels, data.classes)
    torch.save(start_state, init_path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # TorchScript is deprecated upstream, still widely shipped
        torch.jit.save(torch.jit.script(model), str(model_path))
    spec_file.write_text(json.dumps({"spec": asdict(spec), "metrics": metrics}, indent=2))
    return BuiltReference(model_path, train_dir, holdout_dir, metrics, init_path)
