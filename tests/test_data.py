"""Image folders: class order, formats, odd files, provenance hash."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from leakaudit.data.folders import load_image_folder, peek_shape
from leakaudit.errors import DataError
from leakaudit.zoo import bundled_images

from .conftest import TinyReference


def _digit(i: int) -> np.ndarray:
    images, _, _ = bundled_images("digits")
    return images[i, 0].numpy()  # (32, 32) uint8


def test_classes_follow_sorted_folder_names(tiny: TinyReference) -> None:
    images = load_image_folder(tiny.train_dir, channels=1, size=(32, 32))
    assert images.classes == tuple(str(d) for d in range(10))
    assert len(images) == 30
    assert images.images.dtype == torch.uint8 and images.images.shape == (30, 1, 32, 32)
    for i, path in enumerate(images.paths):
        assert path.split("/")[0] == images.classes[int(images.labels[i])]


def test_pixels_survive_the_round_trip(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    Image.fromarray(_digit(0)).save(tmp_path / "a" / "x.png")
    Image.fromarray(_digit(1)).save(tmp_path / "b" / "y.bmp")
    images = load_image_folder(tmp_path, channels=1, size=(32, 32))
    assert np.array_equal(images.images[0, 0].numpy(), _digit(0))
    assert np.array_equal(images.images[1, 0].numpy(), _digit(1))


def test_every_supported_format_and_mode(tmp_path: Path) -> None:
    cls = tmp_path / "c"
    cls.mkdir()
    gray = Image.fromarray(_digit(3))
    gray.save(cls / "gray.png")
    gray.convert("RGB").save(cls / "rgb.jpg", quality=95)
    gray.save(cls / "gray.tiff")
    gray.save(cls / "gray.webp", lossless=True)
    rgba = gray.convert("RGBA")
    rgba.putalpha(255)
    rgba.save(cls / "alpha.png")
    gray.convert("P").save(cls / "palette.png")
    wide = (_digit(3).astype(np.uint16) * 257)
    Image.fromarray(wide).save(cls / "sixteen.png")
    for channels in (1, 3):
        images = load_image_folder(tmp_path, channels=channels, size=(32, 32))
        assert len(images) == 7, images.skipped
        assert images.images.shape[1] == channels
        reference = images.images[images.paths.index("c/gray.png")].float()
        for i, path in enumerate(images.paths):
            diff = (images.images[i].float() - reference).abs().mean().item()
            assert diff < 3.0, f"{path} differs from the PNG by {diff}"


def test_resize_to_the_model_input(tmp_path: Path) -> None:
    (tmp_path / "c").mkdir()
    Image.fromarray(_digit(5)).resize((64, 48)).save(tmp_path / "c" / "big.png")
    images = load_image_folder(tmp_path, channels=3, size=(28, 20))
    assert images.images.shape == (1, 3, 28, 20)


def test_corrupt_and_empty_files_are_skipped_and_recorded(tmp_path: Path) -> None:
    (tmp_path / "c").mkdir()
    Image.fromarray(_digit(2)).save(tmp_path / "c" / "good.png")
    (tmp_path / "c" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    (tmp_path / "c" / "empty.jpg").write_bytes(b"")
    (tmp_path / "c" / "notes.txt").write_text("not an image, not counted")
    images = load_image_folder(tmp_path, channels=1, size=(32, 32))
    assert images.paths == ("c/good.png",)
    reasons = {s.path: s.reason for s in images.skipped}
    assert set(reasons) == {"c/broken.png", "c/empty.jpg"}
    assert "0 bytes" in reasons["c/empty.jpg"]
    with pytest.raises(DataError, match="broken.png"):
        load_image_folder(tmp_path, channels=1, size=(32, 32), strict=True)


def test_nothing_readable_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "x.png").write_bytes(b"garbage")
    with pytest.raises(DataError, match="none of the 1 image files"):
        load_image_folder(tmp_path, channels=1, size=(32, 32))


@pytest.mark.parametrize("layout", ["missing", "file", "no-classes", "empty-classes"])
def test_unusable_folders(tmp_path: Path, layout: str) -> None:
    root = tmp_path / "data"
    if layout == "file":
        root.write_text("x")
    elif layout == "no-classes":
        root.mkdir()
        Image.fromarray(_digit(0)).save(root / "loose.png")
    elif layout == "empty-classes":
        (root / "a").mkdir(parents=True)
    message = {"missing": "not found", "file": "not a folder", "no-classes": "no class folders",
               "empty-classes": "no image files"}[layout]
    with pytest.raises(DataError, match=message):
        load_image_folder(root, channels=1, size=(32, 32))


def test_symlinks_outside_the_folder_are_refused(tmp_path: Path) -> None:
    outside = tmp_path / "secret.png"
    Image.fromarray(_digit(7)).save(outside)
    root = tmp_path / "data"
    (root / "c").mkdir(parents=True)
    Image.fromarray(_digit(1)).save(root / "c" / "inside.png")
    os.symlink(outside, root / "c" / "link.png")
    os.symlink(root / "c" / "inside.png", root / "c" / "alias.png")
    images = load_image_folder(root, channels=1, size=(32, 32))
    assert set(images.paths) == {"c/inside.png", "c/alias.png"}
    assert [s.path for s in images.skipped] == ["c/link.png"]
    assert "outside" in images.skipped[0].reason


def test_decompression_bomb_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "c").mkdir()
    Image.new("L", (7000, 6000)).save(tmp_path / "c" / "huge.png")
    with pytest.raises(DataError, match="decompression-bomb"):
        load_image_folder(tmp_path, channels=1, size=(32, 32), strict=True)


def test_unicode_and_html_names(tmp_path: Path) -> None:
    cls = tmp_path / "<script>ß猫"
    cls.mkdir()
    Image.fromarray(_digit(4)).save(cls / "ünï<b>.png")
    images = load_image_folder(tmp_path, channels=1, size=(32, 32))
    assert images.classes == ("<script>ß猫",)
    assert images.paths == ("<script>ß猫/ünï<b>.png",)


def test_manifest_hash_tracks_paths_and_content(tiny: TinyReference, tmp_path: Path) -> None:
    copy = tmp_path / "copy"
    shutil.copytree(tiny.train_dir, copy)
    first = load_image_folder(tiny.train_dir, channels=1, size=(32, 32)).manifest_sha256
    assert load_image_folder(copy, channels=1, size=(32, 32)).manifest_sha256 == first
    victim = sorted((copy / "3").iterdir())[0]
    Image.fromarray(_digit(9)).save(victim)
    assert load_image_folder(copy, channels=1, size=(32, 32)).manifest_sha256 != first


def test_holdout_must_use_training_classes(tiny: TinyReference, tmp_path: Path) -> None:
    (tmp_path / "zebra").mkdir()
    Image.fromarray(_digit(0)).save(tmp_path / "zebra" / "z.png")
    with pytest.raises(DataError, match="not in the training data: zebra"):
        load_image_folder(tmp_path, channels=1, size=(32, 32), classes=("0", "1"))


def test_peek_shape(tiny: TinyReference, tmp_path: Path) -> None:
    assert peek_shape(tiny.train_dir) == (1, 32, 32)
    assert peek_shape(tmp_path / "nothing") is None


def test_a_class_folder_linked_outside_the_data_is_skipped_and_recorded(tmp_path: Path) -> None:
    elsewhere = tmp_path / "private"
    elsewhere.mkdir()
    Image.fromarray(_digit(5)).save(elsewhere / "secret.png")
    root = tmp_path / "data"
    (root / "a").mkdir(parents=True)
    Image.fromarray(_digit(1)).save(root / "a" / "x.png")
    os.symlink(elsewhere, root / "b")
    os.symlink(elsewhere, root / "a" / "nested")
    images = load_image_folder(root, channels=1, size=(32, 32))
    assert images.classes == ("a", "b")  # the class index stays what torchvision assigns
    assert images.paths == ("a/x.png",)
    reasons = {s.path: s.reason for s in images.skipped}
    assert "outside the data folder" in reasons["b/"] and "not followed" in reasons["a/nested/"]


def test_special_and_oversized_files_are_skipped_without_blocking(tmp_path: Path) -> None:
    cls = tmp_path / "c"
    cls.mkdir()
    Image.fromarray(_digit(2)).save(cls / "ok.png")
    os.mkfifo(cls / "a-pipe.png")  # reading it would block forever; sorted first
    Image.fromarray(np.tile(_digit(2), (8, 8))).save(cls / "big.png")
    limit = (cls / "big.png").stat().st_size - 1
    images = load_image_folder(tmp_path, channels=1, size=(32, 32), max_file_bytes=limit)
    assert images.paths == ("c/ok.png",)
    reasons = {s.path: s.reason for s in images.skipped}
    assert reasons["c/a-pipe.png"] == "a FIFO, not a regular file"
    assert f"over the {limit}-byte limit" in reasons["c/big.png"]
    assert peek_shape(tmp_path) == (1, 256, 256)  # big.png: the FIFO before it was passed over
    with pytest.raises(DataError, match="a-pipe.png: a FIFO"):
        load_image_folder(tmp_path, channels=1, size=(32, 32), strict=True)


def test_undecodable_names_are_skipped_and_shown_escaped(tmp_path: Path) -> None:
    cls = tmp_path / "c"
    cls.mkdir()
    Image.fromarray(_digit(2)).save(cls / "ok.png")
    Image.fromarray(_digit(3)).save(os.fsdecode(bytes(cls) + b"/caf\xe9\x1b.png"))
    images = load_image_folder(tmp_path, channels=1, size=(32, 32))
    assert images.paths == ("c/ok.png",)
    assert [s.path for s in images.skipped] == ["c/caf\\xe9\\x1b.png"]
    os.mkdir(bytes(tmp_path) + b"/\xff")
    with pytest.raises(DataError, match=r"class folder name \\xff is not valid UTF-8"):
        load_image_folder(tmp_path, channels=1, size=(32, 32))


def test_deep_images_are_refused_from_the_header(tmp_path: Path) -> None:
    (tmp_path / "c").mkdir()
    Image.fromarray(np.zeros((3000, 3000), dtype=np.uint16)).save(tmp_path / "c" / "deep.png")  # 9 Mpx
    Image.new("RGBA", (5000, 4000)).save(tmp_path / "c" / "wide.png")  # 20 Mpx, 80 MB decoded
    Image.fromarray(_digit(2)).save(tmp_path / "c" / "ok.png")
    images = load_image_folder(tmp_path, channels=1, size=(32, 32))
    assert images.paths == ("c/deep.png", "c/ok.png")
    reasons = {s.path: s.reason for s in images.skipped}
    assert "too large to decode" in reasons["c/wide.png"] and "64 MiB" in reasons["c/wide.png"]
    assert "deep.png" not in reasons  # 18 MB decoded: within the limit
