"""The Python API: the same document as the CLI from every input kind; settings checked as the CLI checks them."""

from __future__ import annotations

import copy
import json
import re
import tomllib
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

import leakaudit
from leakaudit.errors import ConfigError, DataError, ModelError, UsageError
from leakaudit.zoo import split_members
from leakaudit.report.json_format import without_timings

from .conftest import QUICK_INVERSION, TINY_SPEC, TinyReference, run_cli
from .input_kinds import PairDataset, shuffled, write_every_kind

QUICK_SETTINGS = tomllib.loads(QUICK_INVERSION)  # the CLI tests' config file, as API settings
INPUT_PROVENANCE = (
    "data",
    "holdout",
    "model",
    "command",
    "confinement",
)  # confinement: a module in memory runs in-process
CLASSES = tuple(str(d) for d in range(10))


def comparable(document: dict[str, Any]) -> dict[str, Any]:
    """The document less timings and input provenance; each finding's name in its input (path, fingerprint) apart."""
    doc = without_timings(document)
    for key in INPUT_PROVENANCE:
        doc["provenance"].pop(key, None)  # "command" is also a timing field
    for finding in doc["findings"]:
        finding.pop("path")
        finding.pop("fingerprint")
    return doc


def _source_index(path: str, labels: np.ndarray, half: int) -> int:
    """Which image of the arrays a finding's path names, whatever the input kind."""
    folder = re.fullmatch(r"(\d+)/(\d+)\.png", path)
    if folder:
        return int(np.flatnonzero(labels == int(folder[1]))[int(folder[2])])
    row = re.fullmatch(r"(?:.*?)\[(\d+)\]", path)
    assert row is not None, path
    return int(row[1]) + (half if path.startswith("train-00001-of-00002") else 0)


@pytest.fixture(scope="module")
def shuffled_sets(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The tiny reference's members and non-members out of class order, in every on-disk kind."""
    pytest.importorskip("pyarrow")
    data = split_members(TINY_SPEC)
    root = tmp_path_factory.mktemp("kinds")
    train, holdout = (
        shuffled(data.train_images, data.train_labels),
        shuffled(data.holdout_images, data.holdout_labels, 2),
    )
    return {"train": train, "holdout": holdout, "train_paths": write_every_kind(root, "train", *train, CLASSES),
            "holdout_paths": write_every_kind(root, "holdout", *holdout, CLASSES)}


@pytest.mark.slow
def test_every_input_kind_through_the_cli_and_the_api_gives_the_same_document(
        tiny: TinyReference, shuffled_sets: dict[str, Any], quick_config: Path, tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    documents: dict[str, dict[str, Any]] = {}
    for kind in ("folder", "npz", "parquet", "shards"):
        out = tmp_path / f"cli-{kind}"
        code, _, err = run_cli(["run", str(tiny.torchscript), "--data", str(shuffled_sets["train_paths"][kind]),
                                "--holdout", str(shuffled_sets["holdout_paths"][kind]), "--out", str(out),
                                "--effort", "quick", "--config", str(quick_config), "--quiet"], capsys)
        assert code in (0, 1), err
        documents[f"cli-{kind}"] = json.loads((out / "leakaudit.json").read_text())
    (train_x, train_y), (hold_x, hold_y) = shuffled_sets["train"], shuffled_sets["holdout"]
    inputs = {
        "api-folder-file": (str(tiny.torchscript), shuffled_sets["train_paths"]["folder"],
                            shuffled_sets["holdout_paths"]["folder"]),
        "api-tensors": (tiny.module, (torch.from_numpy(train_x), torch.from_numpy(train_y)),
                        (torch.from_numpy(hold_x), torch.from_numpy(hold_y))),
        "api-numpy": (tiny.module, (train_x, train_y), (hold_x, hold_y)),
        "api-dataset": (tiny.module, PairDataset(train_x, train_y), PairDataset(hold_x, hold_y)),
    }
    for name, (model, train, holdout) in inputs.items():
        report = leakaudit.audit(model, train, holdout, effort="quick", **QUICK_SETTINGS)
        documents[name] = report.document
    assert capsys.readouterr() == ("", "")  # the library printed nothing
    reference = comparable(documents["cli-folder"])
    for name, document in documents.items():
        assert comparable(document) == reference, name
        for base, finding in zip(documents["cli-folder"]["findings"], document["findings"]):
            assert _source_index(base["path"], train_y, len(train_y) // 2) == \
                _source_index(finding["path"], train_y, len(train_y) // 2), name  # the same image, named by its input
    assert documents["api-folder-file"]["findings"] == documents["cli-folder"]["findings"]  # same input: same names
    assert documents["api-tensors"]["provenance"]["model"]["format"] == "module"


@pytest.mark.slow
def test_a_report_writes_every_output_and_leaves_the_callers_model_alone(tiny: TinyReference, tmp_path: Path) -> None:
    module = copy.deepcopy(tiny.module).train()
    before = {k: v.clone() for k, v in module.state_dict().items()}
    events: list[leakaudit.ProgressEvent] = []
    data = split_members(TINY_SPEC)
    report = leakaudit.audit(module, (data.train_images, data.train_labels), (data.holdout_images, data.holdout_labels),
                             effort="quick", **QUICK_SETTINGS, progress=events.append, gate={"fail_ssim": 0.99})
    assert module.training and all(p.requires_grad for p in module.parameters())
    assert all(torch.equal(before[k], v) for k, v in module.state_dict().items())
    assert {e.kind for e in events} >= {"phase", "advance"}
    assert report.verdict in ("pass", "warn", "fail") and int(report.exit_status) in (0, 1)
    assert report.passed == (int(report.exit_status) == 0)
    assert (
        report.leak_score is not None
        and report.leak_score.ci_low <= report.leak_score.value <= report.leak_score.ci_high
    )
    assert report.membership is not None and 0.0 <= report.membership.auc <= 1.0
    assert report.exposure in ("both", "reconstruction", "membership", "neither")
    assert report.findings and report.findings[0].rank == 1 and report.findings[0].path.startswith("images[")
    assert report.document["thresholds"]["fail_ssim"] == 0.99
    assert report.to_html().startswith("<!DOCTYPE html>") or "<html" in report.to_html()[:200]
    written = report.write(tmp_path / "out", junit=tmp_path / "junit.xml")
    names = {p.name for p in written}
    assert {"leakaudit.json", "report.html", "reconstructions.npz", "junit.xml"} <= names
    assert json.loads((tmp_path / "out" / "leakaudit.json").read_text()) == report.to_dict()


@pytest.mark.parametrize("kwargs, error, message", [
    ({"efort": "quick"}, UsageError, "unknown setting 'efort' (did you mean 'effort'?)"),
    ({"efort": "quick", "top": 0}, UsageError, "(did you mean 'effort'?); settings are the [tool.leakaudit] keys "
                                               "(see `leakaudit run --help`); top=0: 0 is not in the range x>=1"),
    ({"candidate_per_class": 3}, UsageError, "did you mean 'candidates_per_class'?"),
    ({"budget": 0}, UsageError, "budget=0: 0.0 is not in the range x>=1.0"),
    ({"effort": "fast"}, UsageError, "effort='fast': 'fast' is not one of 'quick', 'standard', 'thorough'"),
    ({"prior": "holdout"}, UsageError, "--prior holdout needs --holdout"),
    ({"gate": {"fail_sim": 0.5}}, ConfigError, "unknown key 'fail_sim' (did you mean 'fail_ssim'?)"),
    ({"fail_ssim": 2.0}, ConfigError, "fail_ssim"),
    ({"inversion": {"seed": 3}}, ConfigError, "pass seed= instead"),
    ({"format": "json"}, UsageError, "only changes what the CLI prints"),
    ({"init": "no-such-init.pt"}, UsageError, "init='no-such-init.pt': file not found"),
])
def test_settings_are_checked_as_the_cli_checks_them(tiny: TinyReference, kwargs: dict[str, Any],
                                                     error: type[Exception], message: str) -> None:
    with pytest.raises(error) as info:
        leakaudit.audit(tiny.module, tiny.train_dir, **kwargs)
    assert message in str(info.value)


def test_bad_models_and_inputs_are_library_errors(tiny: TinyReference, tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="model file not found"):
        leakaudit.audit(tmp_path / "missing.pt", tiny.train_dir)
    with pytest.raises(ModelError, match="must be a torch.nn.Module or the path"):
        leakaudit.audit(42, tiny.train_dir)
    with pytest.raises(DataError, match="give a folder, an .npz or Parquet file"):
        leakaudit.audit(tiny.module, 42)
    three = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(32 * 32, 3))
    with pytest.raises(DataError, match="has 10 class folders but the model has 3 outputs"):
        leakaudit.audit(three, tiny.train_dir, effort="quick")
    with pytest.raises(DataError, match="label 9 is outside the 3 classes"):
        leakaudit.audit(three, (torch.zeros(4, 1, 32, 32), torch.tensor([0, 1, 2, 9])), effort="quick")


def test_the_package_names_the_api_without_importing_torch() -> None:
    import subprocess
    import sys

    code = "import sys, leakaudit; print(leakaudit.__version__, 'torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out[1] == "False"
    from leakaudit.pipeline.audit import (
        run_audit,
    )  # the pipeline module shares the name; the package keeps the function

    assert callable(run_audit) and leakaudit.audit.__module__ == "leakaudit.api"


def _readme_block(section: str) -> str:
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text(encoding="utf-8")
    body = readme.split(f"\n## {section}\n", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```python\n(.*?)```", body, flags=re.S)[0]


@pytest.mark.slow
def test_the_readme_python_example_runs_as_written(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.chdir(tmp_path)
    exec(compile(_readme_block("Python"), "README.md", "exec"), {"__name__": "readme"})
    assert (tmp_path / "leakaudit-out" / "leakaudit.json").is_file()
    assert "LeakScore(" in capsys.readouterr().out


@pytest.mark.slow
def test_an_in_memory_torchscript_module_is_audited_as_its_file_is(tiny: TinyReference, quick_config: Path,
                                                                   tmp_path: Path,
                                                                   capsys: pytest.CaptureFixture[str]) -> None:
    """What ``torch.jit.load`` returns: its weights need gradients, and a copy of it holds non-leaf weights."""
    out = tmp_path / "cli"
    code, _, err = run_cli(["run", str(tiny.torchscript), "--data", str(tiny.train_dir), "--holdout",
                            str(tiny.holdout_dir), "--out", str(out), "--effort", "quick", "--config",
                            str(quick_config), "--quiet"], capsys)
    assert code in (0, 1), err
    from_file = json.loads((out / "leakaudit.json").read_text())
    module = torch.jit.load(str(tiny.torchscript))
    assert all(p.requires_grad for p in module.parameters())
    report = leakaudit.audit(module, tiny.train_dir, tiny.holdout_dir, effort="quick", **QUICK_SETTINGS)
    assert all(p.requires_grad and p.is_leaf for p in module.parameters())  # the caller's module is left as it was
    assert report.document["findings"] == from_file["findings"]
    assert comparable(report.document) == comparable(from_file)
    assert report.document["provenance"]["model"]["format"] == "module"


def test_a_module_whose_weights_are_not_leaves_is_frozen_for_the_audit(tiny: TinyReference) -> None:
    from leakaudit.model.target import TargetModel

    module = copy.deepcopy(tiny.module).requires_grad_(True)  # as trained, whatever an earlier test did to it
    scripted = torch.jit.script(module)
    clone = copy.deepcopy(scripted)  # TorchScript clones weights that need gradients through autograd
    assert not all(p.is_leaf for p in clone.parameters())
    target = TargetModel.from_module(clone, (1, 32, 32), 10, device="cpu")
    assert all(p.is_leaf and not p.requires_grad for p in target.parameters())
    x = torch.rand(3, 1, 32, 32)
    with torch.no_grad():
        assert torch.allclose(target.logits(x), tiny.module(x), atol=1e-5)
