"""Hostile image folders and OUT: bad images skipped or refused, and nothing written outside OUT through links."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from leakaudit.exit_codes import ExitStatus

from .conftest import TinyReference, run_cli
from .payloads.harness import REPO, outside_folder, quick_config_file, refused, run_limited, snapshot


def _folder(tmp_path: Path, tiny: TinyReference) -> Path:
    """A copy of the tiny training folder to add hostile entries to."""
    import shutil

    data = tmp_path / "data"
    shutil.copytree(tiny.train_dir, data)
    return data


def _document(result: subprocess.CompletedProcess[str]) -> dict:
    import json

    return json.loads(result.stdout)


@pytest.mark.slow
def test_hostile_image_files_are_skipped_under_a_memory_limit(tiny: TinyReference, tmp_path: Path) -> None:
    data = _folder(tmp_path, tiny)
    with open(data / "0" / "sparse.png", "wb") as fh:
        fh.truncate(6 << 30)  # 6 GiB, sparse
    deep = np.zeros((5000, 8000), dtype=np.uint16)
    Image.fromarray(deep).save(data / "1" / "deep.png")  # 40 Mpx, 16-bit, a few kilobytes
    os.mkfifo(data / "2" / "pipe.png")
    result = run_limited(["run", str(tiny.torchscript), "--data", str(data), "--out", str(tmp_path / "out"),
                       "--budget", "600", "--format", "json", "--quiet", "--config", str(quick_config_file(tmp_path)),
                       "--max-image-mb", "1"],
                      REPO)
    assert result.returncode in (ExitStatus.PASSED, ExitStatus.GATE_FAILED), result.stderr
    skipped = {s["path"]: s["reason"] for s in _document(result)["provenance"]["data"]["skipped"]}
    assert "over the 1048576-byte limit" in skipped["0/sparse.png"]  # --max-image-mb, checked before opening
    assert "too large to decode" in skipped["1/deep.png"]
    assert "a FIFO, not a regular file" in skipped["2/pipe.png"]


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


# --- links planted in OUT: nothing outside it is written, truncated or removed --------------------------------

def _planted(tmp_path: Path) -> tuple[Path, Path, dict[str, bytes]]:
    """OUT, and an outside folder with files (and a folder) that links in OUT will point at."""
    outside, _ = outside_folder(tmp_path)
    (outside / "folder").mkdir()
    for name in ("lock", "probe", "folder/resume.pt", "folder/generator.pt", "tmp", "report"):
        (outside / name).write_bytes(f"outside: {name}\n".encode())
    out = tmp_path / "out"
    out.mkdir()
    return out, outside, snapshot(outside)


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
    assert snapshot(outside) == before
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
    assert snapshot(outside) == before
    assert sorted(p.name for p in out.iterdir()) == [".leakaudit-write-test", ".leakaudit-write-test.probe",
                                                      ".leakaudit-write-test.tmp"]


def test_atomic_writes_replace_a_planted_link_and_never_write_through_one(tmp_path: Path) -> None:
    from leakaudit.report.atomic import atomic_write_text

    out, outside, before = _planted(tmp_path)
    (out / "report.html").symlink_to(outside / "report")
    atomic_write_text(out / "report.html", "new report")
    assert not (out / "report.html").is_symlink() and (out / "report.html").read_text() == "new report"
    assert snapshot(outside) == before
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
    assert snapshot(outside) == before

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
    assert snapshot(outside) == before


@pytest.mark.slow
def test_an_audit_with_a_linked_checkpoint_folder_touches_nothing_outside(tiny: TinyReference, tmp_path: Path,
                                                                          capsys: pytest.CaptureFixture[str]) -> None:
    """End to end: OUT/checkpoints links elsewhere; the audit refuses it and nothing there is written or removed."""
    out, outside, before = _planted(tmp_path)
    (out / "checkpoints").symlink_to(outside / "folder", target_is_directory=True)
    (out / ".leakaudit-write-test").symlink_to(outside / "probe")
    capsys.readouterr()
    code, _, err = run_cli(["run", str(tiny.torchscript), "--data", str(tiny.train_dir), "--out", str(out),
                            "--quiet", "--config", str(quick_config_file(tmp_path))], capsys)
    assert code == ExitStatus.ERROR, err
    assert err.strip().splitlines() == [f"leakaudit: error: {out / 'checkpoints'} is a symbolic link; leakaudit "
                                        "writes only into a folder it made there (remove the link)"], err
    assert snapshot(outside) == before
    assert (out / "checkpoints").is_symlink() and not (out / "leakaudit.json").exists()
