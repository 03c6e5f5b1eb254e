"""Hostile exported programs (.pt2): pickle paths, unvetted operators or entries, case twins: refused before loading."""

from __future__ import annotations

import zipfile
from pathlib import Path

import pytest
import torch


from . import payloads
from .conftest import TinyReference
from .payloads.harness import assert_payload_runs, outside_folder, refused, snapshot


@pytest.mark.parametrize(
    ("case", "named"),
    [
        ("pickled weight", "use_pickle"),
        ("sample inputs", "weights_only=True"),
        ("sample inputs archive", "weights_only=True"),
        ("opaque constant", "opaque_obj_0"),
    ],
)
def test_pt2_pickle_paths_are_refused(case: str, named: str, clean_pt2: Path, tiny: TinyReference, tmp_path: Path,
                                      capsys: pytest.CaptureFixture[str]) -> None:
    marker = tmp_path / "pwned"
    build = {"pickled weight": payloads.pt2_pickled_weight, "sample inputs": payloads.pt2_sample_inputs,
             "sample inputs archive": payloads.pt2_sample_inputs_archive,
             "opaque constant": payloads.pt2_opaque_constant}[case]
    hostile = build(clean_pt2, tmp_path / "hostile.pt2", marker)
    if case != "opaque constant":  # the opaque constant's config is refused by torch's deserialiser after it ran
        assert_payload_runs(marker, lambda: torch.export.load(str(hostile)))
    line = refused(capsys, hostile, tiny.train_dir, tmp_path / "out")
    assert named in line and "refused before loading" in line, line
    assert not marker.exists()


def test_pt2_opaque_constant_payload_is_live(clean_pt2: Path, tmp_path: Path) -> None:
    from torch.export.pt2_archive._package import _load_constants, PT2ArchiveReader

    marker = tmp_path / "pwned"
    hostile = payloads.pt2_opaque_constant(clean_pt2, tmp_path / "hostile.pt2", marker)
    assert_payload_runs(marker, lambda: _load_constants(PT2ArchiveReader(str(hostile)), "model"))


@pytest.mark.parametrize(
    ("edit", "named"),
    [
        (lambda clean, target: payloads.pt2_graph_target(clean, target, "torch.ops.aten.relu.default",
                                                          "torch.ops.aten.from_file.default"), "aten.from_file"),
        (lambda clean, target: payloads.pt2_graph_target(clean, target, "torch.ops.aten.relu.default",
                                                          "torch.os.system"), "torch.os.system"),
        (lambda clean, target: payloads.pt2_graph_target(clean, target, "torch.ops.aten.relu.default",
                                                          "torch.ops.mylib.relu.default"), "'mylib'"),
        (lambda clean, target: payloads.pt2_extra_entry(clean, target, "data/aotinductor/model/model.so", b"\x7fELF"),
         "data/aotinductor/model/model.so"),
        (lambda clean, target: payloads.pt2_extra_entry(clean, target, "data/weights/model.pt", b"legacy"),
         "data/weights/model.pt"),
        (lambda clean, target: payloads.pt2_version(clean, target, b"1"), "version '1'"),
    ],
    ids=["from_file op", "python callable", "custom library op", "native code", "legacy weights", "future version"],
)
def test_pt2_unvetted_content_is_refused(edit: object, named: str, clean_pt2: Path, tiny: TinyReference,
                                         tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    hostile = edit(clean_pt2, tmp_path / "hostile.pt2")  # type: ignore[operator]
    line = refused(capsys, hostile, tiny.train_dir, tmp_path / "out")
    assert named in line, line


def test_pt2_shape_expression_that_runs_code_is_refused(tiny: TinyReference, tmp_path: Path,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    marker = tmp_path / "pwned"
    clean = payloads.exported_dynamic(tiny.module, tmp_path / "dynamic.pt2")
    hostile = payloads.pt2_shape_expression(clean, tmp_path / "hostile.pt2", marker)
    assert_payload_runs(marker, lambda: torch.export.load(str(hostile)))
    line = refused(capsys, hostile, tiny.train_dir, tmp_path / "out")
    assert "shape expression" in line and "open(" in line and "refused before loading" in line, line
    assert not marker.exists()


@pytest.mark.parametrize("kind", ["weights", "constants", "sample_inputs"])
def test_pt2_entries_that_differ_only_in_case_are_refused(kind: str, clean_pt2: Path, tiny: TinyReference,
                                                          tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A twin of a vetted entry, named in other case, is what PyTorch's reader may read instead: refused."""
    outside, before = outside_folder(tmp_path)
    marker = outside / "pwned"
    hostile = payloads.pt2_case_twin(clean_pt2, tmp_path / "hostile.pt2", marker, kind)
    assert_payload_runs(marker, lambda: torch.export.load(str(hostile)))
    line = refused(capsys, hostile, tiny.train_dir, tmp_path / "out")
    assert "differ only in letter case" in line and f"data/{kind}/MODEL" in line, line
    assert not marker.exists() and snapshot(outside) == before


def test_pt2_every_config_the_layout_admits_is_vetted(clean_pt2: Path, tmp_path: Path) -> None:
    """A config under another model's name is vetted too (a reader that folds or maps names could read it)."""
    from leakaudit.errors import UnsafeModelError
    from leakaudit.loading.pt2 import check_archive

    hostile = payloads.pt2_case_twin(clean_pt2, tmp_path / "twin.pt2", tmp_path / "pwned", "weights")
    renamed = tmp_path / "other.pt2"
    with zipfile.ZipFile(hostile) as src, zipfile.ZipFile(renamed, "w") as dst:
        for info in src.infolist():
            dst.writestr(info.filename.replace("MODEL_weights", "other_weights"), src.read(info))
    with pytest.raises(UnsafeModelError, match="other_weights_config.json.*use_pickle"):
        check_archive(renamed)


class _Branching(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.head = torch.nn.Linear(1024, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.flatten(1)
        return torch.cond(flat.sum() > 0, lambda t: self.head(t).relu(), lambda t: self.head(t), (flat,))


def test_pt2_higher_order_operators_are_refused(tiny: TinyReference, tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    """A higher-order operator runs submodule graphs: refused in the archive, and again on the loaded graph."""
    from leakaudit.errors import UnsafeModelError
    from leakaudit.loading.pt2 import check_graph

    program = torch.export.export(_Branching().eval(), (torch.zeros(4, 1, 32, 32),))
    torch.export.save(program, str(tmp_path / "cond.pt2"))
    line = refused(capsys, tmp_path / "cond.pt2", tiny.train_dir, tmp_path / "out")
    assert "torch.ops.higher_order.cond" in line and "refused before loading" in line, line
    with pytest.raises(UnsafeModelError, match="higher-order operator torch.ops.higher_order.cond"):
        check_graph(tmp_path / "cond.pt2", program)
    submodules = [m for m in program.graph_module.modules() if isinstance(m, torch.fx.GraphModule)]
    assert len(submodules) == 3  # the program and both branches: the check walks every one
