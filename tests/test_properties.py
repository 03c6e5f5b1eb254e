"""Property tests: hostile bytes and odd shapes only ever produce the documented errors."""

from __future__ import annotations

import io
import string
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from leakaudit.config import file_keys, read_config
from leakaudit.data.folders import decode_image
from leakaudit.errors import ConfigError, DataError

FAST = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@FAST
@given(st.binary(max_size=2048), st.sampled_from([1, 3]), st.tuples(st.integers(1, 40), st.integers(1, 40)))
def test_random_bytes_never_escape_as_other_errors(data: bytes, channels: int, size: tuple[int, int]) -> None:
    try:
        out = decode_image(data, channels, size)
    except DataError:
        return
    assert out.shape == (channels, *size) and out.dtype == np.uint8


def _png(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


@FAST
@given(
    st.integers(1, 64), st.integers(1, 64), st.sampled_from(["L", "RGB", "RGBA", "LA"]),
    st.sampled_from([1, 3]), st.tuples(st.integers(1, 48), st.integers(1, 48)), st.integers(0, 2**32 - 1),
)
def test_any_real_image_becomes_the_model_shape(height: int, width: int, mode: str, channels: int,
                                                size: tuple[int, int], seed: int) -> None:
    depth = {"L": 1, "RGB": 3, "RGBA": 4, "LA": 2}[mode]
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 256, size=(height, width, depth), dtype=np.uint8)
    if mode == "L":
        image = Image.fromarray(pixels[..., 0])
    elif mode == "LA":
        image = Image.fromarray(pixels[..., 0]).convert("LA")
    else:
        image = Image.fromarray(pixels)  # RGB or RGBA, from the depth
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    out = decode_image(buffer.getvalue(), channels, size)
    assert out.shape == (channels, *size) and out.dtype == np.uint8


@FAST
@given(st.binary(max_size=512))
def test_truncated_png_is_a_data_error(tail: bytes) -> None:
    whole = _png(np.arange(256, dtype=np.uint8).reshape(16, 16))
    cut = whole[: len(whole) // 2] + tail
    try:
        decode_image(cut, 1, (8, 8))
    except DataError:
        pass


toml_keys = st.text(alphabet=string.ascii_letters + "_-", min_size=1, max_size=20)
toml_values = st.one_of(st.integers(-10, 10), st.floats(allow_nan=False, allow_infinity=False), st.booleans(),
                        st.text(max_size=20))


@FAST
@given(st.text(max_size=400))
def test_random_config_text_is_a_config_error_or_parsed(tmp_path_factory: pytest.TempPathFactory, text: str) -> None:
    path = tmp_path_factory.mktemp("cfg") / "c.toml"
    path.write_text(text, encoding="utf-8")
    try:
        config = read_config(path)
    except ConfigError:
        return
    assert isinstance(config.defaults, dict) and isinstance(config.warnings, tuple)


@FAST
@given(st.dictionaries(toml_keys, toml_values, max_size=8))
def test_every_key_is_used_or_warned_about(tmp_path_factory: pytest.TempPathFactory, table: dict) -> None:
    import json

    lines = [f"{json.dumps(k)} = {json.dumps(v) if not isinstance(v, bool) else str(v).lower()}"
             for k, v in table.items()]
    path = tmp_path_factory.mktemp("cfg") / "c.toml"
    path.write_text("\n".join(lines), encoding="utf-8")
    try:
        config = read_config(path, run_keys=file_keys())
    except ConfigError:
        return
    for key in table:
        normal = key.replace("-", "_")
        used = normal in config.read_keys
        warned = any(repr(key) in w for w in config.warnings)
        assert used or warned, key


def test_binary_config_file_is_a_config_error(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(ConfigError, match="not UTF-8"):
        read_config(path)
