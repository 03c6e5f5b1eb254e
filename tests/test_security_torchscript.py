"""Hostile TorchScript: code in forward, hooks, attributes, __setstate__ or forks, or in renamed entries, is refused."""

from __future__ import annotations

import warnings
import zipfile
from pathlib import Path

import pytest
import torch


from . import payloads
from .conftest import TinyReference
from .payloads.harness import assert_payload_runs, outside_folder, refused, snapshot


def test_torchscript_forward_that_maps_a_file_is_refused(tiny: TinyReference, tmp_path: Path,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    marker = tmp_path / "pwned"
    hostile = payloads.torchscript_from_file(tmp_path / "evil.pt", marker)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        live = torch.jit.load(str(hostile))
    assert_payload_runs(marker, lambda: live(torch.zeros(1, 1, 32, 32)))
    line = refused(capsys, hostile, tiny.train_dir, tmp_path / "out")
    assert "forward calls aten::from_file" in line and "refused before running" in line, line
    assert not marker.exists()


def test_torchscript_setstate_is_refused_before_loading(tiny: TinyReference, tmp_path: Path,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    marker = tmp_path / "pwned"
    hostile = payloads.torchscript_setstate(tmp_path, tmp_path / "evil.pt", marker)
    assert_payload_runs(marker, lambda: torch.jit.load(str(hostile)))
    line = refused(capsys, hostile, tiny.train_dir, tmp_path / "out")
    assert "__setstate__" in line and "refused before loading" in line, line
    assert not marker.exists()


def test_torchscript_with_a_pickle_payload_gets_a_real_message(tiny: TinyReference, tmp_path: Path,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    marker = tmp_path / "pwned"
    hostile = payloads.torchscript_pickle(tiny.torchscript, tmp_path / "evil.pt", marker)
    line = refused(capsys, hostile, tiny.train_dir, tmp_path / "out")
    assert "could not be loaded (RuntimeError: Unknown type name '__builtin__.exec'" in line, line
    assert not marker.exists()


@pytest.mark.parametrize("build", [payloads.torchscript_hook, payloads.torchscript_attribute],
                         ids=["forward hook", "class attribute"])
def test_torchscript_code_outside_forward_is_checked(build: object, tiny: TinyReference, tmp_path: Path,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    marker = tmp_path / "pwned"
    hostile = build(tmp_path / "hooked.pt", marker)  # type: ignore[operator]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        live = torch.jit.load(str(hostile))
    assert_payload_runs(marker, lambda: live(torch.zeros(1, 1, 32, 32)))
    line = refused(capsys, hostile, tiny.train_dir, tmp_path / "out")
    assert "calls aten::from_file" in line, line
    assert not marker.exists()


def test_a_duplicated_archive_entry_is_refused(tiny: TinyReference, tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    """Zip readers differ on which of two same-named entries counts: refused rather than vetting one of them."""
    marker = tmp_path / "pwned"
    evil = payloads.torchscript_setstate(tmp_path, tmp_path / "evil.pt", marker)
    with zipfile.ZipFile(evil) as archive:
        code_entry = next(n for n in archive.namelist() if "/code/" in n and n.endswith(".py"))
    with zipfile.ZipFile(tmp_path / "setstate-clean.pt") as archive:
        clean = archive.read(code_entry)  # same name: the hostile copy first, a clean decoy last
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # zipfile warns about the duplicate name
        hostile = payloads.rewrite_zip(evil, tmp_path / "decoy.pt", lambda _n, d: d, {code_entry: clean})
    line = refused(capsys, hostile, tiny.train_dir, tmp_path / "out")
    assert "appears twice" in line and code_entry in line, line
    assert not marker.exists()


@pytest.mark.parametrize("part", ["suffix", "folder"], ids=["__torch__.PY", "CODE/"])
def test_torchscript_code_in_other_letter_case_is_checked(part: str, tiny: TinyReference, tmp_path: Path,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    """PyTorch's reader finds ``code/…py`` ignoring case: the renamed code is still vetted before loading."""
    outside, before = outside_folder(tmp_path)
    marker = outside / "pwned"
    hostile = payloads.torchscript_case(tmp_path, tmp_path / "evil.pt", marker, part)
    assert_payload_runs(marker, lambda: torch.jit.load(str(hostile)))
    line = refused(capsys, hostile, tiny.train_dir, tmp_path / "out")
    assert "__setstate__" in line and "refused before loading" in line, line
    assert (".PY" if part == "suffix" else "/CODE/") in line, line
    assert not marker.exists() and snapshot(outside) == before


@pytest.mark.parametrize(("how", "named"), [("fork", "prim::fork"), ("await", "prim::awaitable")])
def test_torchscript_forked_work_is_refused(how: str, named: str, tiny: TinyReference, tmp_path: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    """A forked or deferred function's code is in a subgraph attribute: walked, and forking is refused outright."""
    outside, before = outside_folder(tmp_path)
    marker = outside / "pwned"
    hostile = payloads.torchscript_fork(tmp_path / "fork.pt", marker, how)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        live = torch.jit.load(str(hostile))
    assert_payload_runs(marker, lambda: live(torch.zeros(1, 1, 32, 32)))
    line = refused(capsys, hostile, tiny.train_dir, tmp_path / "out")
    assert f"forward calls {named}" in line and "refused before running" in line, line
    assert not marker.exists() and snapshot(outside) == before


def test_torchscript_graph_walk_enters_subgraphs(tmp_path: Path) -> None:
    """The walk reaches the forked function's own operators, so what it calls is checked, not only the fork."""
    from leakaudit.loading.torchscript import _nodes

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        module = torch.jit.load(str(payloads.torchscript_fork(tmp_path / "fork.pt", tmp_path / "pwned")))
    graph = module.forward.graph.copy()
    torch._C._jit_pass_inline(graph)
    kinds = {node.kind() for node in _nodes(graph.block())}
    assert {"prim::fork", "aten::from_file", "aten::copy_"} <= kinds, kinds
    assert not (tmp_path / "pwned").exists()


def test_torchscript_setstate_split_over_two_lines_is_refused(tiny: TinyReference, tmp_path: Path,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    """TorchScript's lexer joins a backslash-newline: ``def \\`` then ``__setstate__`` still defines it."""
    outside, before = outside_folder(tmp_path)
    marker = outside / "pwned"
    hostile = payloads.torchscript_setstate_continued(tmp_path, tmp_path / "evil.pt", marker)
    assert_payload_runs(marker, lambda: torch.jit.load(str(hostile)))
    line = refused(capsys, hostile, tiny.train_dir, tmp_path / "out")
    assert "__setstate__" in line and "refused before loading" in line, line
    assert not marker.exists() and snapshot(outside) == before
