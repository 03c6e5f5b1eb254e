"""Weights alone, from a file of any vetted format: what ``--init`` reads.

An initial-weights file is as untrusted as the model file, so it goes
through the same loaders and the same checks (declared sizes, archive code,
graphs, the ``.pt2`` layout, the safetensors header); only its tensors are
kept. A full pickle is refused: there is no ``--unsafe-pickle`` for it.
"""

from __future__ import annotations

from pathlib import Path

import torch

from leakaudit.errors import ModelError
from leakaudit.loading.detect import detect_format
from leakaudit.loading.pt2 import load_export
from leakaudit.loading.torchscript import load_torchscript
from leakaudit.loading.weights import read_safetensors, read_state_dict
from leakaudit.sanitize import terminal_text


def load_state(path: Path) -> dict[str, torch.Tensor]:
    """The tensors of a TorchScript module, an exported program, a safetensors file or a state_dict, on the CPU."""
    fmt = detect_format(path)
    if fmt == "torchscript":
        state = load_torchscript(path, torch.device("cpu")).state_dict()
    elif fmt == "export":
        state = load_export(path).state_dict()
    elif fmt == "safetensors":
        state = read_safetensors(path)
    else:
        state = read_state_dict(path)
    if not state:
        raise ModelError(f"{terminal_text(path)}: holds no tensors")
    return {name: tensor.detach() for name, tensor in state.items()}
