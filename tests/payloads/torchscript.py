"""Hostile TorchScript: code in forward, hooks, attributes, __setstate__ and forks, renamed entries, floods."""

from __future__ import annotations

import warnings
import zipfile
from pathlib import Path

import torch
from torch import nn

from .archives import payload_pickle, rewrite_zip


def scripted(module: nn.Module, path: Path) -> Path:
    """``module`` compiled by TorchScript and saved at ``path``: a model file as a user would hand it over."""
    torch.jit.save(torch.jit.script(module), str(path))
    return path


class FromFileForward(nn.Module):
    """A classifier whose forward maps ``marker`` into a shared tensor and writes into it (creating the file)."""

    def __init__(self, marker: str) -> None:
        super().__init__()
        self.marker = marker
        self.flatten = nn.Flatten()
        self.head = nn.Linear(1024, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mapped = torch.from_file(self.marker, shared=True, size=4, dtype=torch.uint8)
        mapped.fill_(65)
        return self.head(self.flatten(x)) + mapped.sum() * 0


class Inner(nn.Module):
    def __init__(self, marker: str) -> None:
        super().__init__()
        self.evil = FromFileForward(marker)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.evil(x)


def torchscript_from_file(path: Path, marker: Path) -> Path:
    """TorchScript whose forward (in a submodule) calls ``aten::from_file`` on the marker."""
    return scripted(Inner(str(marker)), path)


class Plain(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.zeros(10, 1024))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.flatten(1) @ self.w.t()

    @torch.jit.export
    def __getstate__(self) -> tuple[torch.Tensor, bool]:
        return (self.w, self.training)

    @torch.jit.export
    def __setstate__(self, state: tuple[torch.Tensor, bool]) -> None:
        self.w = state[0]
        self.training = state[1]


def torchscript_setstate(scratch: Path, path: Path, marker: Path) -> Path:
    """TorchScript whose ``__setstate__`` (run by torch.jit.load itself) maps and writes the marker."""
    clean = scratch / "setstate-clean.pt"
    torch.jit.save(torch.jit.script(Plain()), str(clean))
    hostile = (f'    _0 = torch.from_file("{marker}", True, 4, dtype=0)\n'
               "    _1 = torch.fill_(_0, 65)\n"
               "    self.w = torch.add((state)[0], torch.sum(_1), alpha=0)\n")

    def edit(name: str, data: bytes) -> bytes:
        if name.endswith(".py") and b"def __setstate__" in data:
            return data.replace(b"    self.w = (state)[0]\n", hostile.encode())
        return data
    return rewrite_zip(clean, path, edit)


def torchscript_pickle(clean: Path, path: Path, marker: Path) -> Path:
    """A TorchScript archive whose data.pkl is a code-running pickle."""
    return rewrite_zip(clean, path, lambda n, d: payload_pickle(marker) if n.endswith("/data.pkl") else d)


def torchscript_setstate_continued(scratch: Path, path: Path, marker: Path) -> Path:
    """The ``__setstate__`` payload with ``def`` and the name on two lines, joined by a backslash."""
    evil = torchscript_setstate(scratch, scratch / "setstate-continued.pt", marker)
    return rewrite_zip(evil, path, lambda n, d: d.replace(b"def __setstate__", b"def \\\n  __setstate__")
                       if n.endswith(".py") else d)


def torchscript_case(scratch: Path, path: Path, marker: Path, part: str) -> Path:
    """The ``__setstate__`` payload with its code entry's name in other letter case (``.PY`` or ``CODE/``).

    PyTorch's zip reader finds ``code/…py`` ignoring case, so the renamed code is still what it compiles.
    """
    evil = torchscript_setstate(scratch, scratch / f"setstate-{part}.pt", marker)

    def rename(name: str) -> str:
        if part == "suffix" and name.endswith(".py"):
            return name[:-3] + ".PY"
        if part == "folder" and name.endswith(".py"):  # the debug entry stays in code/: the archive still looks
            return name.replace("/code/", "/CODE/")    # like TorchScript to a case-sensitive check
        return name
    with zipfile.ZipFile(evil) as src, zipfile.ZipFile(path, "w") as dst:
        for info in src.infolist():
            dst.writestr(rename(info.filename), src.read(info))
    return path


def _marker_hook(module: nn.Module, inputs: tuple[torch.Tensor], output: torch.Tensor) -> torch.Tensor:
    mapped = torch.from_file(module.marker, shared=True, size=4, dtype=torch.uint8)
    mapped.fill_(66)
    return output + mapped.sum() * 0


class Hooked(nn.Module):
    def __init__(self, marker: str) -> None:
        super().__init__()
        self.marker = marker
        self.head = nn.Linear(1024, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(x.flatten(1))


def torchscript_hook(path: Path, marker: Path) -> Path:
    """TorchScript whose forward is clean but whose forward hook maps and writes the marker."""
    module = Hooked(str(marker))
    module.register_forward_hook(_marker_hook)
    return scripted(module, path)


class MarkerScaler:
    """A TorchScript class held as an attribute; its method maps and writes the marker."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def apply(self, x: torch.Tensor) -> torch.Tensor:
        mapped = torch.from_file(self.marker, shared=True, size=4, dtype=torch.uint8)
        mapped.fill_(67)
        return x + mapped.float().sum() * 0


class WithAttribute(nn.Module):
    def __init__(self, marker: str) -> None:
        super().__init__()
        self.scaler = MarkerScaler(marker)
        self.head = nn.Linear(1024, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.scaler.apply(x).flatten(1))


def torchscript_attribute(path: Path, marker: Path) -> Path:
    torch.jit.script(MarkerScaler)
    return scripted(WithAttribute(str(marker)), path)


def _scribble(x: torch.Tensor, path: str) -> torch.Tensor:
    """Writes four bytes into ``path`` through a shared file mapping (creating it), returns ``x``."""
    mapped = torch.from_file(path, shared=True, size=4, dtype=torch.uint8)
    mapped.copy_(torch.tensor([72, 73, 10, 0], dtype=torch.uint8))
    return x + mapped.float().sum() * 0  # used, so the JIT keeps the write


class Forking(nn.Module):
    """A classifier whose forward forks the file write: the forked function lives in a subgraph attribute."""

    def __init__(self, marker: str) -> None:
        super().__init__()
        self.marker = marker
        self.head = nn.Linear(1024, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        future = torch.jit.fork(_scribble, x, self.marker)
        return self.head(torch.jit.wait(future).flatten(1))


class Awaiting(Forking):
    """The same through an awaitable (a deferred call, also held in a subgraph)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        deferred = torch.jit._awaitable(_scribble, x, self.marker)
        return self.head(torch.jit._awaitable_wait(deferred).flatten(1))


def torchscript_fork(path: Path, marker: Path, how: str = "fork") -> Path:
    """TorchScript whose forward writes the marker from a forked (or awaited) function."""
    module = Forking(str(marker)) if how == "fork" else Awaiting(str(marker))
    return scripted(module, path)


class Shouting(nn.Module):
    """A model whose forward warns and raises with terminal escape sequences in the text."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        warnings.warn("\x1b[2J\x1b[1;1H all good")
        raise RuntimeError("\x1b[32m PASS")


def torchscript_shouting(path: Path) -> Path:
    return scripted(Shouting(), path)


class Chatty(nn.Module):
    """A working classifier whose forward warns ``times`` times per call (the same text): a flood on the terminal."""

    def __init__(self, times: int) -> None:
        super().__init__()
        self.times = times
        self.head = nn.Linear(1024, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for i in range(self.times):
            warnings.warn("\x1b[2J\x1b[1;1H all good")
        return self.head(x.flatten(1))


def torchscript_chatty(path: Path, times: int = 3) -> Path:
    return scripted(Chatty(times), path)
