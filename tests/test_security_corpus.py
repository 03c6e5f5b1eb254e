"""Hostile inputs, built here: nothing in them runs, nothing outside OUT is touched, nothing hangs or bloats.

Each model case is a live payload (shown to create its marker through plain
PyTorch) that ``leakaudit run`` must refuse with exit 2, one line naming the
problem, and no marker. Memory cases run the CLI in a subprocess under an
address-space limit, so a regression fails instead of swapping.
"""

from __future__ import annotations

import os
import resource
import subprocess
import sys
import warnings
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from leakaudit.exit_codes import ExitStatus

from . import payloads
from .conftest import QUICK_INVERSION, TinyReference, run_cli

REPO = Path(__file__).resolve().parents[1]
# Importing torch reserves ~3 GiB of address space here; 2 GiB more is room for an audit, not for a bomb.
ADDRESS_SPACE = 5 << 30


def refused(capsys: pytest.CaptureFixture[str], model: Path, data: Path, out: Path, *extra: str) -> str:
    """Run the CLI on a hostile model: exit 2, exactly one line on stderr, no outputs; returns that line."""
    capsys.readouterr()  # what building the payload printed is not the CLI's
    code, stdout, err = run_cli(["run", str(model), "--data", str(data), "--out", str(out), "--quiet", *extra], capsys)
    assert code == ExitStatus.ERROR, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("leakaudit: error: "), err
    assert "\x1b" not in err and stdout == ""
    assert not (out / "leakaudit.json").exists()
    return lines[0]


@pytest.fixture(scope="module")
def clean_pt2(tiny: TinyReference, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return payloads.exported(tiny.module, tmp_path_factory.mktemp("pt2") / "clean.pt2")


def _live(marker: Path, load: object) -> None:
    """The payload is real: plain PyTorch runs it (the marker appears), then the marker is removed."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            load()  # type: ignore[operator]
        except Exception:
            pass  # some payloads break the load after running
    assert marker.exists(), "the payload did not run under plain PyTorch: the test would prove nothing"
    marker.unlink()


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
        _live(marker, lambda: torch.export.load(str(hostile)))
    line = refused(capsys, hostile, tiny.train_dir, tmp_path / "out")
    assert named in line and "refused before loading" in line, line
    assert not marker.exists()


def test_pt2_opaque_constant_payload_is_live(clean_pt2: Path, tmp_path: Path) -> None:
    from torch.export.pt2_archive._package import _load_constants, PT2ArchiveReader

    marker = tmp_path / "pwned"
    hostile = payloads.pt2_opaque_constant(clean_pt2, tmp_path / "hostile.pt2", marker)
    _live(marker, lambda: _load_constants(PT2ArchiveReader(str(hostile)), "model"))


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
    _live(marker, lambda: torch.export.load(str(hostile)))
    line = refused(capsys, hostile, tiny.train_dir, tmp_path / "out")
    assert "shape expression" in line and "open(" in line and "refused before loading" in line, line
    assert not marker.exists()


def test_torchscript_forward_that_maps_a_file_is_refused(tiny: TinyReference, tmp_path: Path,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    marker = tmp_path / "pwned"
    hostile = payloads.torchscript_from_file(tmp_path / "evil.pt", marker)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        live = torch.jit.load(str(hostile))
    _live(marker, lambda: live(torch.zeros(1, 1, 32, 32)))
    line = refused(capsys, hostile, tiny.train_dir, tmp_path / "out")
    assert "forward calls aten::from_file" in line and "refused before running" in line, line
    assert not marker.exists()


def test_torchscript_setstate_is_refused_before_loading(tiny: TinyReference, tmp_path: Path,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    marker = tmp_path / "pwned"
    hostile = payloads.torchscript_setstate(tmp_path, tmp_path / "evil.pt", marker)
    _live(marker, lambda: torch.jit.load(str(hostile)))
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


def test_config_file_cannot_switch_on_pickle_loading(tiny: TinyReference, tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    marker = tmp_path / "pwned"
    hostile = tmp_path / "weights.pth"
    torch.save({"state_dict": tiny.module.state_dict(), "extra": payloads.Payload(marker)}, hostile)
    (tmp_path / "pyproject.toml").write_text("[tool.leakaudit]\nunsafe_pickle = true\n")
    monkeypatch.chdir(tmp_path)
    line = refused(capsys, hostile, tiny.train_dir, tmp_path / "out", "--arch", "tests.conftest:tiny_architecture")
    assert "'unsafe_pickle' cannot be set in a configuration file" in line and "--unsafe-pickle" in line, line
    assert not marker.exists()


def test_escape_sequences_in_tensor_keys_never_reach_the_terminal(tiny: TinyReference, tmp_path: Path,
                                                                   capsys: pytest.CaptureFixture[str]) -> None:
    state = dict(tiny.module.state_dict())
    state["\x1b[2J\x1b[1;1H\u2714 PASS: all good\x07"] = torch.zeros(1)
    hostile = tmp_path / "weights.pth"
    torch.save(state, hostile)
    line = refused(capsys, hostile, tiny.train_dir, tmp_path / "out", "--arch", "tests.conftest:tiny_architecture")
    assert "unexpected keys: \\x1b[2J\\x1b[1;1H\u2714 PASS: all good\\x07" in line, line


def _limited(args: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (ADDRESS_SPACE, ADDRESS_SPACE))

    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "-m", "leakaudit", *args], cwd=cwd, env=env, preexec_fn=limit,
                          capture_output=True, text=True, timeout=300)


@pytest.mark.slow
@pytest.mark.parametrize(("build", "named"), [(payloads.zip_bomb_state_dict, "inflates"),
                                               (payloads.safetensors_overclaim, "refused before allocating")],
                         ids=["state_dict zip bomb", "safetensors header"])
def test_memory_bombs_in_model_files(build: object, named: str, tiny: TinyReference, tmp_path: Path) -> None:
    hostile = build(tmp_path / "bomb.bin")  # type: ignore[operator]
    result = _limited(["run", str(hostile), "--data", str(tiny.train_dir), "--out", str(tmp_path / "out"), "--quiet",
                       "--arch", "tests.conftest:tiny_architecture"], REPO)
    assert result.returncode == ExitStatus.ERROR, result.stderr
    assert named in result.stderr and result.stderr.count("\n") == 1, result.stderr


def _folder(tmp_path: Path, tiny: TinyReference) -> Path:
    """A copy of the tiny training folder to add hostile entries to."""
    import shutil

    data = tmp_path / "data"
    shutil.copytree(tiny.train_dir, data)
    return data


@pytest.mark.slow
def test_hostile_image_files_are_skipped_under_a_memory_limit(tiny: TinyReference, tmp_path: Path) -> None:
    data = _folder(tmp_path, tiny)
    with open(data / "0" / "sparse.png", "wb") as fh:
        fh.truncate(6 << 30)  # 6 GiB, sparse
    deep = np.zeros((5000, 8000), dtype=np.uint16)
    Image.fromarray(deep).save(data / "1" / "deep.png")  # 40 Mpx, 16-bit, a few kilobytes
    os.mkfifo(data / "2" / "pipe.png")
    result = _limited(["run", str(tiny.torchscript), "--data", str(data), "--out", str(tmp_path / "out"),
                       "--budget", "600", "--format", "json", "--quiet", "--config", str(_quick_config(tmp_path)),
                       "--max-image-mb", "1"],
                      REPO)
    assert result.returncode in (ExitStatus.PASSED, ExitStatus.GATE_FAILED), result.stderr
    skipped = {s["path"]: s["reason"] for s in _document(result)["provenance"]["data"]["skipped"]}
    assert "over the 1048576-byte limit" in skipped["0/sparse.png"]  # --max-image-mb, checked before opening
    assert "too large to decode" in skipped["1/deep.png"]
    assert "a FIFO, not a regular file" in skipped["2/pipe.png"]


def _quick_config(tmp_path: Path) -> Path:
    path = tmp_path / "quick.toml"
    path.write_text(QUICK_INVERSION)
    return path


def _document(result: subprocess.CompletedProcess[str]) -> dict:
    import json

    return json.loads(result.stdout)


def test_out_may_not_overlap_the_image_folders(tiny: TinyReference, tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    import shutil

    data = _folder(tmp_path, tiny)
    copy = shutil.copytree(tiny.holdout_dir, tmp_path / "holdout")
    for out, holdout in ((data / "report", None), (tmp_path, None), (copy / "0" / "res", copy)):
        extra = ["--holdout", str(holdout)] if holdout else []
        line = refused(capsys, tiny.torchscript, data, out, *extra)
        assert "overlap" in line and "--out" in line, line
    assert sorted(p.name for p in data.iterdir()) == [str(d) for d in range(10)]  # nothing was written into it


@pytest.mark.slow
def test_unsafe_pickle_says_so_everywhere(tiny: TinyReference, tmp_path: Path,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    import json

    from .conftest import tiny_architecture

    module = tiny_architecture()  # a fresh module: the shared one may carry hooks other tests attached
    module.load_state_dict(tiny.module.state_dict())
    model = tmp_path / "full.pt"
    torch.save(module, model)
    out = tmp_path / "out"
    code, _, err = run_cli(["run", str(model), "--data", str(tiny.train_dir), "--out", str(out), "--unsafe-pickle",
                            "--budget", "600", "--config", str(_quick_config(tmp_path)),
                            "--junit", str(tmp_path / "j.xml"),
                            "--markdown", str(tmp_path / "s.md")], capsys)
    assert code in (ExitStatus.PASSED, ExitStatus.GATE_FAILED), err
    assert "warning: --unsafe-pickle given" in err and "runs code from the file" in err
    document = json.loads((out / "leakaudit.json").read_text())
    assert any("code from the file ran" in note for note in document["summary"]["notes"])
    assert "code from the file ran" in (out / "report.html").read_text()
    assert "--unsafe-pickle" in (tmp_path / "s.md").read_text()
    assert "code from it ran" in (tmp_path / "j.xml").read_text()


def test_model_warnings_and_errors_reach_the_terminal_escaped(tiny: TinyReference, tmp_path: Path,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    hostile = payloads.torchscript_shouting(tmp_path / "loud.pt")
    capsys.readouterr()
    code, _, err = run_cli(["run", str(hostile), "--data", str(tiny.train_dir), "--out", str(tmp_path / "o")],
                           capsys)
    assert code == ExitStatus.ERROR and "\x1b" not in err, err
    assert "warning: UserWarning: \\x1b[2J\\x1b[1;1H all good" in err, err


@pytest.mark.parametrize("quiet", [False, True], ids=["default", "--quiet"])
def test_a_model_warning_in_a_loop_is_shown_once_and_not_under_quiet(quiet: bool, tiny: TinyReference,
                                                                     tmp_path: Path,
                                                                     capsys: pytest.CaptureFixture[str]) -> None:
    """``aten::warn`` stays allowed (attention layers warn in TorchScript), but it cannot flood the terminal."""
    chatty = payloads.torchscript_chatty(tmp_path / "chatty.pt")
    with warnings.catch_warnings(record=True) as caught:  # the payload is real: every forward pass warns
        warnings.simplefilter("always")
        torch.jit.load(str(chatty))(torch.zeros(1, 1, 32, 32))
    assert any("all good" in str(w.message) for w in caught)
    capsys.readouterr()
    code, _, err = run_cli(["run", str(chatty), "--data", str(tiny.train_dir), "--out", str(tmp_path / "o"),
                            "--config", str(_quick_config(tmp_path)), *(["--quiet"] if quiet else [])], capsys)
    assert code in (ExitStatus.PASSED, ExitStatus.GATE_FAILED), err
    assert "\x1b" not in err, err
    warned = [line for line in err.splitlines() if "UserWarning" in line]
    if quiet:
        assert err == "", err  # --quiet: only errors
    else:
        assert warned == ["leakaudit: warning: UserWarning: \\x1b[2J\\x1b[1;1H all good"], err


@pytest.mark.parametrize("build", [payloads.torchscript_hook, payloads.torchscript_attribute],
                         ids=["forward hook", "class attribute"])
def test_torchscript_code_outside_forward_is_checked(build: object, tiny: TinyReference, tmp_path: Path,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    marker = tmp_path / "pwned"
    hostile = build(tmp_path / "hooked.pt", marker)  # type: ignore[operator]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        live = torch.jit.load(str(hostile))
    _live(marker, lambda: live(torch.zeros(1, 1, 32, 32)))
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


def _outside(tmp_path: Path) -> tuple[Path, dict[str, bytes]]:
    """A folder outside OUT with a file in it, and what it holds: every test checks it is left as it was."""
    outside = tmp_path / "outside"
    outside.mkdir(exist_ok=True)
    (outside / "keep.txt").write_bytes(b"outside OUT\n")
    return outside, _snapshot(outside)


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): (p.read_bytes() if p.is_file() else b"<dir>")
            for p in sorted(folder.rglob("*"))}


@pytest.mark.parametrize("part", ["suffix", "folder"], ids=["__torch__.PY", "CODE/"])
def test_torchscript_code_in_other_letter_case_is_checked(part: str, tiny: TinyReference, tmp_path: Path,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    """PyTorch's reader finds ``code/…py`` ignoring case: the renamed code is still vetted before loading."""
    outside, before = _outside(tmp_path)
    marker = outside / "pwned"
    hostile = payloads.torchscript_case(tmp_path, tmp_path / "evil.pt", marker, part)
    _live(marker, lambda: torch.jit.load(str(hostile)))
    line = refused(capsys, hostile, tiny.train_dir, tmp_path / "out")
    assert "__setstate__" in line and "refused before loading" in line, line
    assert (".PY" if part == "suffix" else "/CODE/") in line, line
    assert not marker.exists() and _snapshot(outside) == before


@pytest.mark.parametrize("kind", ["weights", "constants", "sample_inputs"])
def test_pt2_entries_that_differ_only_in_case_are_refused(kind: str, clean_pt2: Path, tiny: TinyReference,
                                                          tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A twin of a vetted entry, named in other case, is what PyTorch's reader may read instead: refused."""
    outside, before = _outside(tmp_path)
    marker = outside / "pwned"
    hostile = payloads.pt2_case_twin(clean_pt2, tmp_path / "hostile.pt2", marker, kind)
    _live(marker, lambda: torch.export.load(str(hostile)))
    line = refused(capsys, hostile, tiny.train_dir, tmp_path / "out")
    assert "differ only in letter case" in line and f"data/{kind}/MODEL" in line, line
    assert not marker.exists() and _snapshot(outside) == before


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


@pytest.mark.parametrize(("how", "named"), [("fork", "prim::fork"), ("await", "prim::awaitable")])
def test_torchscript_forked_work_is_refused(how: str, named: str, tiny: TinyReference, tmp_path: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    """A forked or deferred function's code is in a subgraph attribute: walked, and forking is refused outright."""
    outside, before = _outside(tmp_path)
    marker = outside / "pwned"
    hostile = payloads.torchscript_fork(tmp_path / "fork.pt", marker, how)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        live = torch.jit.load(str(hostile))
    _live(marker, lambda: live(torch.zeros(1, 1, 32, 32)))
    line = refused(capsys, hostile, tiny.train_dir, tmp_path / "out")
    assert f"forward calls {named}" in line and "refused before running" in line, line
    assert not marker.exists() and _snapshot(outside) == before


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


def test_init_file_is_vetted_like_the_model(tiny: TinyReference, tmp_path: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    """``--init`` goes through the model's loaders: a TorchScript ``__setstate__`` never runs."""
    outside, before = _outside(tmp_path)
    marker = outside / "pwned"
    hostile = payloads.torchscript_setstate(tmp_path, tmp_path / "init.pt", marker)
    _live(marker, lambda: torch.jit.load(str(hostile)))
    capsys.readouterr()
    out = tmp_path / "out"
    code, _, err = run_cli(["run", str(tiny.torchscript), "--data", str(tiny.train_dir), "--holdout",
                            str(tiny.holdout_dir), "--init", str(hostile), "--out", str(out), "--quiet",
                            "--config", str(_quick_config(tmp_path))], capsys)
    assert code == ExitStatus.ERROR, err
    assert f"--init {hostile}" in err and "__setstate__" in err and "refused before loading" in err, err
    assert not marker.exists() and _snapshot(outside) == before
    assert not (out / "leakaudit.json").exists()


@pytest.mark.parametrize("case", ["from_file forward", "fork", "case twin", "full pickle", "bare pickle"])
def test_init_file_refusals_are_the_models(case: str, clean_pt2: Path, tmp_path: Path) -> None:
    from leakaudit.errors import ModelError
    from leakaudit.inversion.initaware import load_initial_state

    marker = tmp_path / "pwned"
    init = tmp_path / "init.bin"
    if case == "from_file forward":
        payloads.torchscript_from_file(init, marker)
        named = "calls aten::from_file"
    elif case == "fork":
        payloads.torchscript_fork(init, marker)
        named = "calls prim::fork"
    elif case == "case twin":
        payloads.pt2_case_twin(clean_pt2, init, marker, "weights")
        named = "differ only in letter case"
    elif case == "full pickle":
        torch.save({"w": torch.zeros(2), "x": payloads.Payload(marker)}, init)
        named = "full pickled object"
    else:
        init.write_bytes(payloads.payload_pickle(marker))
        named = "bare pickle stream"
    with pytest.raises(ModelError, match="^--init ") as caught:
        load_initial_state(init)
    assert named in str(caught.value), caught.value
    assert not marker.exists()


def test_init_file_may_be_any_model_format(tiny: TinyReference, clean_pt2: Path, tmp_path: Path) -> None:
    from safetensors.torch import save_file

    from leakaudit.inversion.initaware import load_initial_state

    first = next(p for p in tiny.module.state_dict().values() if p.dim() == 2)
    save_file({k: v.contiguous() for k, v in tiny.module.state_dict().items()}, str(tmp_path / "init.safetensors"))
    for path in (tiny.state_dict, tiny.torchscript, clean_pt2, tmp_path / "init.safetensors"):
        state = load_initial_state(path)
        assert torch.equal(next(v for v in state.values() if v.dim() == 2), first), path


# --- links planted in OUT: nothing outside it is written, truncated or removed --------------------------------


def _planted(tmp_path: Path) -> tuple[Path, Path, dict[str, bytes]]:
    """OUT, and an outside folder with files (and a folder) that links in OUT will point at."""
    outside, _ = _outside(tmp_path)
    (outside / "folder").mkdir()
    for name in ("lock", "probe", "folder/resume.pt", "folder/generator.pt", "tmp", "report"):
        (outside / name).write_bytes(f"outside: {name}\n".encode())
    out = tmp_path / "out"
    out.mkdir()
    return out, outside, _snapshot(outside)


def test_the_lock_is_never_opened_through_a_link(tmp_path: Path) -> None:
    from leakaudit.errors import OutputError
    from leakaudit.runtime.outlock import LOCK_NAME, output_lock

    out, outside, before = _planted(tmp_path)
    (out / LOCK_NAME).symlink_to(outside / "lock")
    with pytest.raises(OutputError, match="is a symbolic link"):
        with output_lock(out):
            pass
    (out / LOCK_NAME).unlink()
    os.link(outside / "lock", out / LOCK_NAME)
    with pytest.raises(OutputError, match="hard link"):
        with output_lock(out):
            pass
    assert _snapshot(outside) == before
    (out / LOCK_NAME).unlink()
    with output_lock(out):  # a real lock still works, and a stale lock file of its own is reused
        assert (out / LOCK_NAME).read_text().strip() == str(os.getpid())


def test_the_write_probe_never_writes_through_a_link(tmp_path: Path) -> None:
    from leakaudit.pipeline.inputs import check_output_folder

    out, outside, before = _planted(tmp_path)
    (out / ".leakaudit-write-test").symlink_to(outside / "probe")  # the name the probe once used
    for name in ("probe", "tmp"):
        (out / f".leakaudit-write-test.{name}").symlink_to(outside / name)
    check_output_folder(out)
    assert _snapshot(outside) == before
    assert sorted(p.name for p in out.iterdir()) == [".leakaudit-write-test", ".leakaudit-write-test.probe",
                                                      ".leakaudit-write-test.tmp"]


def test_atomic_writes_replace_a_planted_link_and_never_write_through_one(tmp_path: Path) -> None:
    from leakaudit.report.atomic import atomic_write_text

    out, outside, before = _planted(tmp_path)
    (out / "report.html").symlink_to(outside / "report")
    atomic_write_text(out / "report.html", "new report")
    assert not (out / "report.html").is_symlink() and (out / "report.html").read_text() == "new report"
    assert _snapshot(outside) == before
    assert [p.name for p in out.iterdir()] == ["report.html"]  # no temporary file left


def test_checkpoints_never_go_through_a_linked_folder(tmp_path: Path) -> None:
    from leakaudit.errors import OutputError
    from leakaudit.inversion.config import InversionConfig
    from leakaudit.inversion.engine import Checkpointer
    from leakaudit.inversion.generator import ConditionalGenerator
    from leakaudit.inversion.resume import RESUME_FILE, clear_state, load_state, save_state

    out, outside, before = _planted(tmp_path)
    folder = out / "checkpoints"
    folder.symlink_to(outside / "folder", target_is_directory=True)
    for call in (lambda: save_state(folder, "key", "next", {"x": torch.zeros(1)}),
                 lambda: load_state(folder, "key"), lambda: clear_state(folder)):
        with pytest.raises(OutputError, match="checkpoints is a symbolic link"):
            call()
    generator = ConditionalGenerator((1, 8, 8), 2, width=4)
    with pytest.raises(OutputError, match="checkpoints is a symbolic link"):
        Checkpointer(folder, InversionConfig()).save(generator, step=0, phase="train", force=True)
    assert _snapshot(outside) == before

    folder.unlink()  # a real folder with links planted at the checkpoint's names and temporary names
    folder.mkdir()
    (folder / RESUME_FILE).symlink_to(outside / "folder" / "resume.pt")
    (folder / "generator.pt.tmp").symlink_to(outside / "tmp")
    (folder / "resume.pt.tmp").symlink_to(outside / "tmp")
    assert load_state(folder, "key") is None  # a link is not a checkpoint of ours
    save_state(folder, "key", "next", {"x": torch.ones(1)})
    Checkpointer(folder, InversionConfig()).save(generator, step=0, phase="train", force=True)
    assert load_state(folder, "key")["next_phase"] == "next"
    clear_state(folder)
    assert not (folder / RESUME_FILE).exists() and (folder / "generator.pt").is_file()
    assert _snapshot(outside) == before


@pytest.mark.slow
def test_an_audit_with_a_linked_checkpoint_folder_touches_nothing_outside(tiny: TinyReference, tmp_path: Path,
                                                                          capsys: pytest.CaptureFixture[str]) -> None:
    """End to end: OUT/checkpoints links elsewhere; the audit refuses it and nothing there is written or removed."""
    out, outside, before = _planted(tmp_path)
    (out / "checkpoints").symlink_to(outside / "folder", target_is_directory=True)
    (out / ".leakaudit-write-test").symlink_to(outside / "probe")
    capsys.readouterr()
    code, _, err = run_cli(["run", str(tiny.torchscript), "--data", str(tiny.train_dir), "--out", str(out),
                            "--quiet", "--config", str(_quick_config(tmp_path))], capsys)
    assert code == ExitStatus.ERROR, err
    assert err.strip().splitlines() == [f"leakaudit: error: {out / 'checkpoints'} is a symbolic link; leakaudit "
                                        "writes only into a folder it made there (remove the link)"], err
    assert _snapshot(outside) == before
    assert (out / "checkpoints").is_symlink() and not (out / "leakaudit.json").exists()


# --- smaller holes -----------------------------------------------------------------------------------------


def test_reports_carry_no_raw_control_character() -> None:
    """ESC, BEL, C1 controls from folder and file names are shown escaped in HTML, Markdown and JUnit alike."""
    import re
    from datetime import date

    from leakaudit.gate.verdict import GateSettings, apply_gate
    from leakaudit.report import render_html
    from leakaudit.report.junit import render_junit
    from leakaudit.report.markdown import render_markdown

    from .scenarios import scenario

    classes = ("0", "1", "2", "bell\x07\x1b[2Jclear", "c1\x9b31m\x85", "del\x7f\x00nul", "6", "7", "8", "9")
    s = scenario(leaky=True, train_per_class=1, classes=classes)
    doc = apply_gate(s.document, GateSettings(), today=date(2026, 11, 28))
    for finding in doc["findings"]:
        finding["path"] = f"{finding['path']}\x1b]0;title\x07"
    for condition in doc["gate"]["conditions"]:
        condition["message"] = f"{condition['message']} \x1b[31m\x9b\x7f"
    raw = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f]")
    html, md, junit = render_html(doc, s.arrays), render_markdown(doc), render_junit(doc)
    for name, text in (("html", html), ("markdown", md), ("junit", junit)):
        assert not raw.search(text), (name, raw.findall(text)[:5])
    assert "bell\\x07\\x1b[2Jclear" in html and "\\x1b]0;title\\x07" in html
    assert "\\x1b[31m\\x9b\\x7f" in junit
    assert "\\x9b31m" in md or "\\\\x9b31m" in md


def test_a_deeply_nested_safetensors_header_is_a_clear_error(tmp_path: Path) -> None:
    import json
    import struct

    from leakaudit.errors import ModelError
    from leakaudit.loading.weights import check_safetensors_header

    header = b"[" * 200_000 + b"]" * 200_000
    path = tmp_path / "deep.safetensors"
    path.write_bytes(struct.pack("<Q", len(header)) + header)
    with pytest.raises(ModelError, match="nested deeper than"):
        check_safetensors_header(path)
    flat = json.dumps(["not", "a", "table"]).encode()
    path.write_bytes(struct.pack("<Q", len(flat)) + flat)
    with pytest.raises(ModelError, match="not a table of tensors"):
        check_safetensors_header(path)


def test_a_deeply_nested_safetensors_header_fails_the_cli_cleanly(tiny: TinyReference, tmp_path: Path,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    import struct

    header = b'{"a": ' + b"[" * 200_000 + b"]" * 200_000 + b"}"
    path = tmp_path / "deep.safetensors"
    path.write_bytes(struct.pack("<Q", len(header)) + header)
    line = refused(capsys, path, tiny.train_dir, tmp_path / "out", "--arch", "tests.conftest:tiny_architecture")
    assert "nested deeper than" in line and "internal error" not in line, line


def test_torchscript_setstate_split_over_two_lines_is_refused(tiny: TinyReference, tmp_path: Path,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    """TorchScript's lexer joins a backslash-newline: ``def \\`` then ``__setstate__`` still defines it."""
    outside, before = _outside(tmp_path)
    marker = outside / "pwned"
    hostile = payloads.torchscript_setstate_continued(tmp_path, tmp_path / "evil.pt", marker)
    _live(marker, lambda: torch.jit.load(str(hostile)))
    line = refused(capsys, hostile, tiny.train_dir, tmp_path / "out")
    assert "__setstate__" in line and "refused before loading" in line, line
    assert not marker.exists() and _snapshot(outside) == before


def _cli(args: list[str], cwd: Path, env: dict[str, str], timeout: float = 600) -> subprocess.CompletedProcess[str]:
    """The installed CLI in a subprocess, one thread, from ``cwd`` with ``env`` added."""
    return subprocess.run([str(Path(sys.executable).parent / "leakaudit"), *args], capture_output=True, text=True,
                          cwd=cwd, env={**os.environ, "OMP_NUM_THREADS": "1", "CI": "1", **env}, timeout=timeout)


@pytest.mark.slow
def test_a_pickled_module_on_pythonpath_is_audited_and_cannot_forge_its_provenance(tiny: TinyReference,
                                                                                  tmp_path: Path) -> None:
    import hashlib
    import json

    from .conftest import tiny_architecture

    work = tmp_path / "work"
    work.mkdir()
    trained = tiny_architecture()
    trained.load_state_dict(tiny.module.state_dict())
    model = payloads.forging_pickle(work, trained)
    out = tmp_path / "out"
    result = _cli(["run", "kit.pt", "--data", str(tiny.train_dir), "--out", str(out), "--unsafe-pickle",
                   "--budget", "600", "--config", str(_quick_config(tmp_path)), "--markdown", str(tmp_path / "s.md"),
                   "--junit", str(tmp_path / "j.xml")], work, {"PYTHONPATH": str(work)})
    assert result.returncode in (ExitStatus.PASSED, ExitStatus.GATE_FAILED), result.stderr
    assert "FORGING the model's provenance" in result.stderr  # the payload ran, in the worker
    document = json.loads((out / "leakaudit.json").read_text())
    model_record = document["provenance"]["model"]
    assert model_record["format"] == "pickle"
    assert model_record["sha256"] == hashlib.sha256(model.read_bytes()).hexdigest()
    assert any("code from the file ran" in note for note in document["summary"]["notes"])
    assert "--unsafe-pickle" in (tmp_path / "s.md").read_text()
    assert "code from it ran" in (tmp_path / "j.xml").read_text()


EPS = b"""%!PS-Adobe-3.0 EPSF-3.0
%%BoundingBox: 0 0 8 8
newpath 0 0 moveto 8 8 lineto stroke
showpage
"""


def test_an_image_in_a_format_the_readme_does_not_list_is_refused_by_name(tiny: TinyReference, tmp_path: Path,
                                                                           capsys: pytest.CaptureFixture[str]) -> None:
    data = _folder(tmp_path, tiny)
    (data / "3" / "evil.png").write_bytes(EPS)
    with Image.open(data / "3" / "evil.png") as img:  # by content, Pillow alone would take it as PostScript
        assert img.format == "EPS"
    line = refused(capsys, tiny.torchscript, data, tmp_path / "out")
    assert "evil.png: a PostScript (EPS) file; leakaudit reads only PNG, JPEG, BMP, WebP and TIFF images" in line
