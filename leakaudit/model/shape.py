"""What input a model file expects, found by running it: the shapes worth trying, and errors that name the size.

A file rarely says its input size; the first layer, an exported program's
placeholder, the data's own shape and square guesses are tried in turn, and a
failed attempt's message keeps the line that says what went wrong.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterator

import torch
from torch import nn

from leakaudit.model.features import fixed_batch

def _first_layer(module: nn.Module) -> tuple[str, int] | None:
    """Kind and input width of the first Conv2d/Linear layer (plain or TorchScript modules)."""
    for m in module.modules():
        kind = type(m).__name__ if not isinstance(m, torch.jit.ScriptModule) else getattr(m, "original_name", "")
        # by name: a scripted layer is not an nn.Conv2d / nn.Linear, so neither class's attributes are typed here
        if kind == "Conv2d" and hasattr(m, "in_channels"):
            return "conv", int(getattr(m, "in_channels"))
        if kind == "Linear" and hasattr(m, "in_features"):
            return "linear", int(getattr(m, "in_features"))
    return None


def _first_layer_channels(module: nn.Module) -> int | None:
    first = _first_layer(module)
    return first[1] if first is not None and first[0] == "conv" else None


def _square_input_guess(module: nn.Module) -> Iterator[tuple[int, int, int]]:
    """An MLP's first layer fixes C·H·W; square gray or RGB images are the likely reading."""
    first = _first_layer(module)
    if first is None or first[0] != "linear":
        return
    for channels in (1, 3):
        side = round((first[1] / channels) ** 0.5)
        if channels * side * side == first[1] and side >= 8:
            yield (channels, side, side)


def _export_input_shape(module: nn.Module) -> tuple[int, int, int] | None:
    if not isinstance(module, torch.fx.GraphModule):
        return None
    for node in module.graph.nodes:
        if node.op == "placeholder":
            val = node.meta.get("val")
            if val is not None and hasattr(val, "shape") and len(val.shape) == 4:
                try:
                    c, h, w = (int(s) for s in val.shape[1:])
                    return c, h, w
                except TypeError:
                    return None
    return None


def _candidate_shapes(module: nn.Module, input_size: tuple[int, int] | None,
                      hint: tuple[int, int, int] | None) -> Iterator[tuple[int, int, int]]:
    exported = _export_input_shape(module)
    if exported is not None and input_size is None:
        yield exported
        return
    size = input_size or (hint[1:] if hint else None)
    channels_first = _first_layer_channels(module)
    channel_options = [channels_first] if channels_first else ([hint[0]] if hint else []) + [1, 3]
    if size is not None:
        for c in dict.fromkeys(channel_options):
            yield (c, size[0], size[1])
    elif hint is None:
        yield from _square_input_guess(module)


_ERROR_LINE = re.compile(r"^(\w+(?:Error|Exception)): (.+)$", re.M)
_MATMUL = re.compile(r"shapes cannot be multiplied \((\d+)x(\d+) and (\d+)x(\d+)\)")


def _run_error(exc: Exception, shape: tuple[int, int, int]) -> str:
    """The line of a failed forward pass that says what went wrong (TorchScript puts it last), with the sizes."""
    text = str(exc)
    found = _ERROR_LINE.findall(text)
    name, line = found[-1] if found else (type(exc).__name__, text.splitlines()[0] if text else "")
    message = f"{name}: {line[:200]}"
    matmul = _MATMUL.search(line)
    if matmul and int(matmul.group(2)) == shape[0] * shape[1] * shape[2]:
        wanted, c = int(matmul.group(3)), shape[0]
        side = math.isqrt(wanted // c) if wanted % c == 0 else 0
        like = f" ({c}×{side}×{side}: --input-size {side} {side})" if side * side * c == wanted else ""
        message += (f"; the first layer takes {wanted} values per image{like}, "
                    f"{shape[0]}×{shape[1]}×{shape[2]} images give {int(matmul.group(2))}")
    return message


def telling(errors: list[str]) -> list[str]:
    """The attempts whose error names the size the model wants, when any does; else all of them."""
    sized = [e for e in errors if "--input-size" in e]
    return sized or errors


def infer_shape(module: nn.Module, input_size: tuple[int, int] | None, hint: tuple[int, int, int] | None,
                dev: torch.device) -> tuple[tuple[int, int, int] | None, int, list[str]]:
    errors: list[str] = []
    batch = fixed_batch(module) or 2
    for shape in _candidate_shapes(module, input_size, hint):
        try:
            with torch.no_grad():
                out = module(torch.zeros(batch, *shape, device=dev))
        except Exception as exc:
            errors.append(f"input {shape}: {_run_error(exc, shape)}")
            continue
        if isinstance(out, (tuple, list)):
            out = out[0]
        if not isinstance(out, torch.Tensor) or out.dim() != 2 or out.shape[0] != batch:
            errors.append(f"input {shape}: output is not (batch, classes) logits")
            continue
        if not torch.isfinite(out).all():
            errors.append(f"input {shape}: the model returns non-finite values")
            continue
        return shape, int(out.shape[1]), errors
    return None, 0, errors
