"""Weights-only files (state_dict, safetensors) and the architecture they are loaded into.

A state_dict is read by ``torch.load(weights_only=True)``, PyTorch's
restricted unpickler that builds only tensors and plain containers, after the
zip archive's declared sizes are checked. A safetensors header is checked
against the file's size before any tensor is read. The legacy (non-zip)
``torch.save`` stream is refused: the sizes it declares are allocated before
they can be checked. A full pickle runs only with ``unsafe_pickle``.
"""

from __future__ import annotations

import importlib
import json
import math
import os
import pickle
import re
import struct
import sys
import warnings
import zipfile
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from leakaudit.errors import ModelError, UnsafeModelError
from leakaudit.loading.limits import check_declared_total, open_zip
from leakaudit.sanitize import terminal_text

SAFETENSORS_DTYPE_BYTES = {"BOOL": 1, "U8": 1, "I8": 1, "F8_E5M2": 1, "F8_E4M3": 1, "I16": 2, "U16": 2, "F16": 2,
                           "BF16": 2, "I32": 4, "U32": 4, "F32": 4, "I64": 8, "U64": 8, "F64": 8}
MAX_SAFETENSORS_HEADER = 16 << 20  # thousands of tensors take ~1 MB
MAX_HEADER_DEPTH = 16  # a header is a table of tables of lists (depth 3); deeper is not a safetensors file


def import_arch(spec: str) -> Callable[[], nn.Module]:
    """Import ``module.path:callable`` (from the working directory) and return the callable."""
    if ":" not in spec:
        raise ModelError(f"--arch must look like module.path:callable, got {spec!r}")
    module_name, _, attr = spec.partition(":")
    cwd = os.getcwd()
    added = cwd not in sys.path
    if added:
        sys.path.insert(0, cwd)
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:
        raise ModelError(f"--arch {spec}: cannot import {module_name!r} ({type(exc).__name__}: {exc})") from None
    finally:
        if added:
            sys.path.remove(cwd)
    target: object = module
    for part in attr.split("."):
        target = getattr(target, part, None)
        if target is None:
            raise ModelError(f"--arch {spec}: {module_name!r} has no attribute {attr!r}")
    if not callable(target):
        raise ModelError(f"--arch {spec}: {attr!r} is not callable")
    return target


def _keys(keys: list[str]) -> str:
    return ", ".join(terminal_text(k) for k in keys[:8]) + (" …" if len(keys) > 8 else "")


def build_from_state_dict(state: dict[str, torch.Tensor], arch: str | None, path: Path) -> nn.Module:
    """The ``--arch`` module with ``state`` loaded into it; every mismatch named."""
    if arch is None:
        raise ModelError(
            f"{terminal_text(path)} holds only weights (a state_dict); say which architecture they belong to "
            "with --arch module.path:callable (a function or class that returns the nn.Module)"
        )
    factory = import_arch(arch)
    try:
        module = factory()
    except Exception as exc:
        raise ModelError(f"--arch {arch}: calling it failed ({type(exc).__name__}: {exc})") from None
    if not isinstance(module, nn.Module):
        raise ModelError(f"--arch {arch}: returned {type(module).__name__}, not an nn.Module")
    own = module.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    mismatched = [f"{terminal_text(k)} {tuple(state[k].shape)} vs {tuple(own[k].shape)}"
                  for k in own if k in state and own[k].shape != state[k].shape]
    if missing or unexpected or mismatched:
        parts = []
        if missing:
            parts.append("missing keys: " + _keys(missing))
        if unexpected:
            parts.append("unexpected keys: " + _keys(unexpected))
        if mismatched:
            parts.append("shape mismatch (file vs arch): " + "; ".join(mismatched[:8]))
        raise ModelError(f"the weights in {terminal_text(path)} do not fit --arch {arch}: " + " | ".join(parts))
    module.load_state_dict(state)
    return module


def unwrap_state_dict(obj: object, path: Path) -> dict[str, torch.Tensor]:
    """The tensors of a plain or wrapped (``{"state_dict": …}``) checkpoint."""
    if isinstance(obj, dict):
        for key in ("state_dict", "model_state_dict", "model"):
            inner = obj.get(key)
            if isinstance(inner, dict) and inner and all(isinstance(v, torch.Tensor) for v in inner.values()):
                return inner
        if obj and all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items()):
            return obj
    raise ModelError(f"{terminal_text(path)}: the file loads, but holds {type(obj).__name__}, "
                     "not a state_dict of tensors")


_JSON_STRING = re.compile(rb'"(?:[^"\\]|\\.)*"', re.S)
_JSON_BRACKET = re.compile(rb"[\[\]{}]")


def json_depth(data: bytes) -> int:
    """How deeply ``data``'s arrays and objects nest, counted without parsing (brackets in strings ignored)."""
    depth = deepest = 0
    for bracket in _JSON_BRACKET.findall(_JSON_STRING.sub(b"", data)):
        depth += 1 if bracket in (b"[", b"{") else -1
        deepest = max(deepest, depth)
    return deepest


def check_safetensors_header(path: Path) -> None:
    """Every tensor's declared byte range lies inside the file and matches its shape."""
    size = path.stat().st_size
    with path.open("rb") as fh:
        (header_len,) = struct.unpack("<Q", fh.read(8))
        if header_len > min(size - 8, MAX_SAFETENSORS_HEADER):
            raise ModelError(f"{terminal_text(path)}: safetensors header declares {header_len} bytes, "
                             f"more than the file holds")
        raw = fh.read(header_len)
    depth = json_depth(raw)
    if depth > MAX_HEADER_DEPTH:
        raise ModelError(f"{terminal_text(path)}: safetensors header is nested deeper than {MAX_HEADER_DEPTH} "
                         f"levels ({depth}); refused before parsing")
    try:
        header = json.loads(raw)
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        raise ModelError(f"{terminal_text(path)}: safetensors header is not valid JSON "
                         f"({terminal_text(exc)})") from None
    if not isinstance(header, dict):
        raise ModelError(f"{terminal_text(path)}: safetensors header is not a table of tensors")
    body = size - 8 - header_len
    total = 0
    for name, meta in header.items():
        if name == "__metadata__":
            continue
        try:
            start, end = (int(v) for v in meta["data_offsets"])
            nbytes = math.prod(int(d) for d in meta["shape"]) * SAFETENSORS_DTYPE_BYTES[meta["dtype"]]
        except (KeyError, TypeError, ValueError):
            raise ModelError(f"{terminal_text(path)}: safetensors entry {terminal_text(name)!s} is malformed") from None
        if not 0 <= start <= end <= body or end - start != nbytes:
            raise ModelError(f"{terminal_text(path)}: safetensors tensor {terminal_text(name)!s} declares "
                             f"{nbytes} bytes at [{start}, {end}) in a body of {body}; refused before allocating")
        total += nbytes
    check_declared_total(path, total, "the safetensors file")


def read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    """A safetensors file's tensors, after its header is checked against the file."""
    try:
        from safetensors.torch import load_file  # only for .safetensors files; a missing package is a clear error
    except ImportError:
        raise ModelError("safetensors files need the 'safetensors' package") from None
    check_safetensors_header(path)
    try:
        return load_file(str(path), device="cpu")
    except Exception as exc:
        raise ModelError(f"{terminal_text(path)}: safetensors file could not be read "
                         f"({type(exc).__name__}: {terminal_text(exc)})") from None


def load_safetensors(path: Path, arch: str | None) -> nn.Module:
    return build_from_state_dict(read_safetensors(path), arch, path)


def _pickle_global(exc: Exception) -> str:
    text = str(exc)
    marker = "Unsupported global: GLOBAL "
    if marker in text:
        return terminal_text(text.split(marker, 1)[1].split()[0])
    return "objects that are not plain tensors"


def _unsafe_refusal(path: Path, why: str) -> UnsafeModelError:
    return UnsafeModelError(
        f"{terminal_text(path)} {why}. Export the model as TorchScript, torch.export (.pt2) or a state_dict with "
        "--arch, or, only if you trust where the file came from, pass --unsafe-pickle (the file's code then runs)"
    )


class _NeedsUnpickling(Exception):
    """The file is a full pickle; only ``unsafe_pickle`` may load it."""


def _read_weights_only(path: Path, unsafe_pickle: bool) -> object:
    if not zipfile.is_zipfile(path):
        if unsafe_pickle:
            raise _NeedsUnpickling
        raise _unsafe_refusal(path, "is a bare pickle stream (not the zip archive torch.save has written since "
                                    "PyTorch 1.6): it may run code, and the sizes it declares cannot be checked "
                                    "before they are allocated")
    open_zip(path).close()  # declared sizes and unique names, whoever called
    try:
        return torch.load(str(path), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        if not unsafe_pickle:
            raise _unsafe_refusal(path, f"is a full pickled object (it references {_pickle_global(exc)}); "
                                        "loading it would run code from the file") from None
        raise _NeedsUnpickling from None
    except (RuntimeError, EOFError, OSError, ValueError, zipfile.BadZipFile) as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ModelError(f"{terminal_text(path)}: not a readable model file (truncated or corrupt?): "
                         f"{terminal_text(first)}") from None


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """A ``torch.save`` file's tensors, read weights-only (a full pickle is refused)."""
    return unwrap_state_dict(_read_weights_only(path, unsafe_pickle=False), path)


def load_torch_save(path: Path, arch: str | None, unsafe_pickle: bool) -> tuple[nn.Module, str]:
    """A ``torch.save`` file: weights only, unless the user accepted running its code."""
    try:
        obj = _read_weights_only(path, unsafe_pickle)
    except _NeedsUnpickling:
        return load_unsafe(path, arch), "pickle"
    return build_from_state_dict(unwrap_state_dict(obj, path), arch, path), "state_dict"


def load_unsafe(path: Path, arch: str | None) -> nn.Module:
    """Only reached with --unsafe-pickle: the user has accepted running the file's code."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            obj = torch.load(str(path), map_location="cpu", weights_only=False)
    except Exception as exc:
        raise ModelError(f"{terminal_text(path)}: unpickling failed "
                         f"({type(exc).__name__}: {terminal_text(exc)})") from None
    if isinstance(obj, nn.Module):
        return obj
    if isinstance(obj, dict):
        for value in obj.values():
            if isinstance(value, nn.Module):
                return value
        return build_from_state_dict(unwrap_state_dict(obj, path), arch, path)
    raise ModelError(f"{terminal_text(path)}: unpickled a {type(obj).__name__}, not a model")
