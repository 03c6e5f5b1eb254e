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


class _Reader(io.RawIOBase):
    """A frame's bytes as a file, without copying them (``io.BytesIO`` would copy a ``bytearray``)."""

    def __init__(self, payload: bytes | bytearray) -> None:
        self._view, self._at = memoryview(payload), 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def readinto(self, target: Any) -> int:
        n = min(len(target), len(self._view) - self._at)
        target[:n] = self._view[self._at:self._at + n]
        self._at += n
        return n

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._at, io.SEEK_END: len(self._view)}[whence]
        self._at = max(0, base + offset)
        return self._at

    def tell(self) -> int:
        return self._at


def decode(codec: bytes, payload: bytes | bytearray) -> dict[str, Any]:
    """A frame's message, through the safe decoder its codec names."""
    try:
        if codec == JSON:
            message = json.loads(payload.decode("utf-8"))
        elif codec == TENSORS:
            import torch

            # torch.load reads any binary file object; its annotation names IO[bytes] only
            message = torch.load(_Reader(payload), map_location="cpu", weights_only=True)  # type: ignore[arg-type]
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

    def recv(self, timeout_s: float | None = None, max_bytes: int | None = None) -> dict[str, Any]:
        """The next message; with ``timeout_s``, a frame that stops arriving midway for that long is an error.

        ``max_bytes``: the most a tensor frame may hold now (what the operation under way can return), checked
        from the header before anything of the frame is read.
        """
        codec, length = _HEADER.unpack(self._read_exactly(_HEADER.size, timeout_s))
        limit = MAX_JSON if codec == JSON else min(self.max_frame, max_bytes or self.max_frame)
        if length > limit:
            raise FrameError(f"a frame of {length} bytes is over the limit of {limit}")
        return decode(codec, self._read_exactly(length, timeout_s))

    def _read_exactly(self, n: int, timeout_s: float | None) -> bytearray:
        buffer = bytearray(n)  # filled in place: the frame is in memory once while it arrives
        view, got = memoryview(buffer), 0
        while got < n:
            if timeout_s is not None and not self.readable(timeout_s):
                raise FrameError(f"a frame stopped arriving for {timeout_s:.0f} s")
            try:
                read = os.readv(self.read_fd, [view[got:got + (1 << 24)]])
            except OSError as exc:
                raise ChannelClosed(str(exc)) from None
            if not read:
                raise ChannelClosed("end of stream")
            got += read
        return buffer
