"""TorchScript archives: the code is checked twice, as text before loading and as graphs before running.

``torch.jit.load`` compiles the archive's ``code/`` (found by names compared
ignoring letter case, so ``CODE/x.PY`` is code too: every entry whose folded
name ends in ``.py`` is checked) and runs any
``__setstate__`` it defines while loading, so an archive that defines one is
refused before loading. After loading, every method of the module and of
each submodule is inlined and each operator it calls, in nested blocks and in
subgraph attributes alike, is held against the allowlist in
``leakaudit.loading.ops``; nothing runs until all pass. The
archive's pickles are read by TorchScript's own unpickler, which builds only
tensors and TorchScript types.
"""

from __future__ import annotations

import re
import warnings
import zipfile
from collections.abc import Iterator
from pathlib import Path

import torch

from leakaudit.errors import ModelError, UnsafeModelError
from leakaudit.loading.limits import folded, open_zip
from leakaudit.loading.ops import op_problem
from leakaudit.sanitize import terminal_text

# The name anywhere, not only after ``def ``: TorchScript's lexer joins ``def \`` + newline + ``__setstate__``,
# and no code a classifier needs mentions it otherwise.
_SETSTATE = re.compile(rb"__setstate__")
MAX_CODE_BYTES = 64 << 20


def check_archive(path: Path) -> None:
    """Refuse, before loading, an archive whose code would run while it loads."""
    with open_zip(path) as archive:
        for info in archive.infolist():
            if not folded(info.filename).endswith(".py"):  # torch finds code/…py ignoring letter case
                continue
            if info.file_size > MAX_CODE_BYTES:
                raise ModelError(f"{terminal_text(path)}: code entry {terminal_text(info.filename)} "
                                 "is implausibly large")
            if _SETSTATE.search(archive.read(info)):
                raise UnsafeModelError(
                    f"{terminal_text(path)}: {terminal_text(info.filename)} defines (or names) __setstate__, which "
                    "TorchScript runs while loading; refused before loading"
                )


def _nodes(block: torch._C.Block) -> Iterator[torch._C.Node]:
    """Every node, in nested blocks (``if``, loops) and in subgraph attributes (``prim::fork``'s function) too.

    Subgraphs are not inlined with their owner, so each is inlined here before it is walked.
    """
    for node in block.nodes():
        yield node
        for inner in node.blocks():
            yield from _nodes(inner)
        for name in node.attributeNames():
            kind = node.kindOf(name)
            graphs = [node.g(name)] if kind == "g" else list(node.gs(name)) if kind == "gs" else []
            for graph in graphs:
                inlined = graph.copy()
                torch._C._jit_pass_inline(inlined)
                yield from _nodes(inlined.block())


def _methods(module: torch.jit.ScriptModule) -> Iterator[tuple[str, torch._C.Graph]]:
    for name, sub in module.named_modules():
        owner = name or "<root>"
        for method in sub._c._method_names():
            yield f"{owner}.{method}", sub._c._get_method(method).graph
        for hook in list(sub._c._get_forward_pre_hooks()) + list(sub._c._get_forward_hooks()):
            yield f"{owner}.{hook.name}", hook.graph


def check_graphs(path: Path, module: torch.jit.ScriptModule) -> None:
    """Every operator any method can reach is one that only computes; else refuse, naming it."""
    for where, graph in _methods(module):
        inlined = graph.copy()
        torch._C._jit_pass_inline(inlined)
        for node in _nodes(inlined.block()):
            kind = node.kind()
            problem = op_problem(kind)
            if problem is not None:
                raise UnsafeModelError(
                    f"{terminal_text(path)}: TorchScript method {terminal_text(where)} calls {terminal_text(kind)}, "
                    f"which {problem}; refused before running"
                )


def _load_message(exc: BaseException) -> str:
    text = str(exc).strip()
    first = text.splitlines()[0].strip() if text else ""
    if not first:
        return (f"{type(exc).__name__} without a message (TorchScript refuses pickled objects that are not "
                "tensors or TorchScript types, e.g. a pickle that would run code)")
    return f"{type(exc).__name__}: {first[:300]}"


def load_torchscript(path: Path, device: torch.device) -> torch.jit.ScriptModule:
    """Load after the archive check, then check every graph before anything runs."""
    check_archive(path)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # TorchScript is deprecated, not unsafe
            module: torch.jit.ScriptModule = torch.jit.load(  # type: ignore[no-untyped-call]  # torch leaves it bare
                str(path), map_location=device)
    except (RuntimeError, ValueError, OSError, zipfile.BadZipFile, torch.jit.Error) as exc:
        raise ModelError(
            f"{terminal_text(path)}: TorchScript archive could not be loaded ({terminal_text(_load_message(exc))})"
        ) from None
    check_graphs(path, module)
    return module
