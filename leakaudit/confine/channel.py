"""Length-prefixed frames over a pair of pipes, decoded without pickle's code execution.

The worker is untrusted, so what the parent reads is parsed by two safe
decoders only: JSON for small messages (progress, errors) and
``torch.load(weights_only=True)`` for frames that carry tensors (tensors,
dicts, lists, str, int, float, bool, None). A frame starts with one codec byte
and an 8-byte length; the parent refuses a frame larger than ``MAX_FRAME``.
"""

from __future__ import annotations

import io
import json
import os
import select
import struct
from typing import Any

MAX_FRAME = 8 << 30  # a reply bigger than this is a misbehaving worker, not a result
MAX_JSON = 1 << 20
_HEADER = struct.Struct(">cQ")
JSON, TENSORS = b"J", b"T"


class ChannelClosed(Exception):
    """The other end went away (exited, was killed, or closed its pipe)."""


class FrameError(Exception):
    """A frame that does not decode: the other end broke the protocol."""


def encode(message: dict[str, Any]) -> bytes:
    """One frame: JSON when the message is plain data, else ``torch.save``."""
    try:
        payload, codec = json.dumps(message, allow_nan=True).encode("utf-8"), JSON
    except TypeError:  # tensors (or bytes) inside: the tensor codec
        import torch  # here, not at the top: the worker confines itself before anything imports torch

        buffer = io.BytesIO()
        torch.save(message, buffer)
        payload, codec = buffer.getvalue(), TENSORS
    return _HEADER.pack(codec, len(payload)) + payload


def decode(codec: bytes, payload: bytes) -> dict[str, Any]:
    """A frame's message, through the safe decoder its codec names."""
    try:
        if codec == JSON:
            message = json.loads(payload.decode("utf-8"))
        elif codec == TENSORS:
            import torch

            message = torch.load(io.BytesIO(payload), map_location="cpu", weights_only=True)
        else:
            raise FrameError(f"unknown frame codec {codec!r}")
    except FrameError:
        raise
    except Exception as exc:  # any decoding failure is a broken protocol, never code that runs
        raise FrameError(f"undecodable frame ({type(exc).__name__}: {exc})") from None
    if not isinstance(message, dict) or not isinstance(message.get("kind"), str):
        raise FrameError("a frame that is not a message")
    return message


class Channel:
    """Reading and writing frames on two file descriptors."""

    def __init__(self, read_fd: int, write_fd: int, max_frame: int = MAX_FRAME) -> None:
        self.read_fd = read_fd
        self.write_fd = write_fd
        self.max_frame = max_frame

    def send(self, message: dict[str, Any]) -> None:
        data = memoryview(encode(message))
        try:
            while data:
                written = os.write(self.write_fd, data)
                data = data[written:]
        except (BrokenPipeError, OSError) as exc:
            raise ChannelClosed(str(exc)) from None

    def readable(self, timeout_s: float) -> bool:
        """Whether a frame (or the end of the stream) is waiting, within ``timeout_s``."""
        ready, _, _ = select.select([self.read_fd], [], [], max(0.0, timeout_s))
        return bool(ready)

    def recv(self, timeout_s: float | None = None) -> dict[str, Any]:
        """The next message; with ``timeout_s``, a frame that stops arriving midway for that long is an error."""
        codec, length = _HEADER.unpack(self._read_exactly(_HEADER.size, timeout_s))
        if length > (MAX_JSON if codec == JSON else self.max_frame):
            raise FrameError(f"a frame of {length} bytes is over the limit")
        return decode(codec, self._read_exactly(length, timeout_s))

    def _read_exactly(self, n: int, timeout_s: float | None) -> bytes:
        chunks, left = [], n
        while left:
            if timeout_s is not None and not self.readable(timeout_s):
                raise FrameError(f"a frame stopped arriving for {timeout_s:.0f} s")
            try:
                chunk = os.read(self.read_fd, min(left, 1 << 24))
            except OSError as exc:
                raise ChannelClosed(str(exc)) from None
            if not chunk:
                raise ChannelClosed("end of stream")
            chunks.append(chunk)
            left -= len(chunk)
        return b"".join(chunks)
