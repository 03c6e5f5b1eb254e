"""Where a copy of the audited architecture starts: fresh weights re-drawn in place, or the ``--init`` weights.

The copy is made from the module object that loading already vetted
(``copy.deepcopy``), never by reading the file again, so nothing the file
holds runs beyond what loading allowed. Each parameter is re-drawn with its
layer type's PyTorch default initialisation, as ``reset_parameters`` does it:
Linear and Conv weights Kaiming-uniform with ``a = √5`` and biases uniform in
±1/√fan_in, norms ones and zeros with their running statistics reset.
Plain modules and TorchScript modules name their layer types; for exported
programs the type is read from the graph operation each tensor feeds. A tensor
whose layer type has no known default makes the copy unusable: the caller
reports power as not measured, with the reason. ``copy_from_init`` is the
other start, for the init-aware attack: the clone loads the ``--init``
weights, read by the same vetted loaders as the model file.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from leakaudit.errors import ModelError

LINEAR_TYPES = frozenset({"Linear", "LazyLinear", "Bilinear"})
CONV_TYPES = frozenset({"Conv1d", "Conv2d", "Conv3d", "ConvTranspose1d", "ConvTranspose2d", "ConvTranspose3d"})
NORM_TYPES = frozenset({"BatchNorm1d", "BatchNorm2d", "BatchNorm3d", "LayerNorm", "GroupNorm", "InstanceNorm1d",
                        "InstanceNorm2d", "InstanceNorm3d", "SyncBatchNorm", "RMSNorm"})
EMBEDDING_TYPES = frozenset({"Embedding"})

_ATEN = torch.ops.aten
_GRAPH_KINDS: dict[object, str] = {
    _ATEN.linear.default: "Linear", _ATEN.addmm.default: "Linear",
    _ATEN.conv1d.default: "Conv1d", _ATEN.conv2d.default: "Conv2d", _ATEN.conv3d.default: "Conv3d",
    _ATEN.convolution.default: "Conv2d",
    _ATEN.batch_norm.default: "BatchNorm2d",
    _ATEN._native_batch_norm_legit_no_training.default: "BatchNorm2d",
    _ATEN.layer_norm.default: "LayerNorm", _ATEN.group_norm.default: "GroupNorm",
    _ATEN.embedding.default: "Embedding",
}


class UnknownLayer(Exception):
    """A tensor whose layer type has no known default initialisation."""


@dataclass(frozen=True)
class Fresh:
    """The re-drawn copy and how it was made (recorded in the document)."""

    module: nn.Module
    method: str  # "arch" | "reset"
    tensors: int  # parameters and buffers re-drawn


def kaiming_bound(weight: torch.Tensor) -> float:
    """The bound of ``kaiming_uniform_(a=√5)`` on this weight: torch's own fan-in and gain."""
    fan_in, _ = nn.init._calculate_fan_in_and_fan_out(weight)
    gain = nn.init.calculate_gain("leaky_relu", math.sqrt(5))
    return math.sqrt(3.0) * gain / math.sqrt(fan_in) if fan_in > 0 else 0.0


def _redraw(kind: str, name: str, tensor: torch.Tensor, weight: torch.Tensor | None, gen: torch.Generator) -> None:
    """One tensor of a layer of ``kind`` re-drawn in place (``weight``: the layer's weight, for a bias's fan-in)."""
    leaf = name.rsplit(".", 1)[-1]
    with torch.no_grad():
        if kind in LINEAR_TYPES or kind in CONV_TYPES:
            if leaf == "weight":
                bound = kaiming_bound(tensor)
            elif leaf == "bias" and weight is not None:
                fan_in, _ = nn.init._calculate_fan_in_and_fan_out(weight)
                bound = 1.0 / math.sqrt(fan_in) if fan_in > 0 else 0.0
            else:
                raise UnknownLayer(f"{name} ({kind})")
            tensor.copy_(torch.empty(tensor.shape, dtype=torch.float32).uniform_(-bound, bound, generator=gen))
        elif kind in NORM_TYPES:
            if leaf in ("weight", "running_var"):
                tensor.fill_(1)
            elif leaf in ("bias", "running_mean", "num_batches_tracked"):
                tensor.zero_()
            else:
                raise UnknownLayer(f"{name} ({kind})")
        elif kind in EMBEDDING_TYPES and leaf == "weight":
            tensor.copy_(torch.empty(tensor.shape, dtype=torch.float32).normal_(generator=gen))
        else:
            raise UnknownLayer(f"{name} ({kind})")


def _kind(module: nn.Module) -> str:
    """A module's layer type: TorchScript keeps the Python class name as ``original_name``."""
    if isinstance(module, torch.jit.ScriptModule):
        return str(getattr(module, "original_name", type(module).__name__))
    return type(module).__name__


def _reset_modules(root: nn.Module, gen: torch.Generator) -> int:
    """Every module's own tensors re-drawn by its type; raises UnknownLayer for the first it cannot."""
    count = 0
    for prefix, module in root.named_modules():
        kind = _kind(module)
        own = [*module.named_parameters(recurse=False), *module.named_buffers(recurse=False)]
        weight = dict(module.named_parameters(recurse=False)).get("weight")
        for name, tensor in own:
            _redraw(kind, f"{prefix}.{name}" if prefix else name, tensor, weight, gen)
            count += 1
    return count


def _graph_kinds(module: torch.fx.GraphModule) -> dict[str, str]:
    """Exported programs: each parameter or buffer's layer type, from the operation it feeds."""
    kinds: dict[str, str] = {}
    for node in module.graph.nodes:
        if node.op != "call_function" or node.target not in _GRAPH_KINDS:
            continue
        kind = _GRAPH_KINDS[node.target]
        for arg in node.args:
            if isinstance(arg, torch.fx.Node) and arg.op == "get_attr":
                kinds.setdefault(str(arg.target), kind)
    return kinds


def _reset_graph(module: torch.fx.GraphModule, gen: torch.Generator) -> int:
    """Re-draw an exported program's state by the layer types its graph shows."""
    kinds = _graph_kinds(module)
    tensors: dict[str, torch.Tensor] = dict(module.named_parameters())
    tensors.update(dict(module.named_buffers()))
    count = 0
    for name in sorted(tensors):
        tensor = tensors[name]
        kind = kinds.get(name)
        if kind is None and name.endswith("num_batches_tracked"):
            kind = "BatchNorm2d"
        if kind is None:
            raise UnknownLayer(f"{name} (no graph operation with a known default initialisation)")
        prefix = name.rsplit(".", 1)[0] if "." in name else ""
        weight = tensors.get(f"{prefix}.weight" if prefix else "weight")
        leaf = name.rsplit(".", 1)[-1]
        if kind in LINEAR_TYPES and tensor.dim() == 1 and leaf not in ("weight", "bias"):
            raise UnknownLayer(f"{name} ({kind})")
        if kind in NORM_TYPES and leaf not in ("weight", "bias", "running_mean", "running_var", "num_batches_tracked"):
            raise UnknownLayer(f"{name} ({kind})")
        _redraw(kind, name, tensor, weight if weight is not tensor else None, gen)
        count += 1
    return count


def _strip_taps(module: nn.Module) -> None:
    """Drop the recording hooks and graph nodes ``model_features.instrument`` added to the loaded module."""
    if isinstance(module, torch.fx.GraphModule):
        graph = module.graph
        for node in list(graph.nodes):
            if node.op == "call_function" and getattr(node.target, "__module__", "") == "leakaudit.model.features" \
                    and not node.users:
                graph.erase_node(node)
        module.recompile()
        return
    if isinstance(module, torch.jit.ScriptModule):
        return
    for sub in module.modules():
        sub._forward_pre_hooks.clear()
        sub._forward_hooks.clear()


def fresh_copy(module: nn.Module, seed: int, arch: Callable[[], nn.Module] | None = None) -> Fresh:
    """A copy of ``module`` with fresh weights: ``arch()`` when given, else every tensor re-drawn.

    Raises ``UnknownLayer`` when a tensor has no known default initialisation.
    """
    gen = torch.Generator().manual_seed(seed)
    if arch is not None:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            built = arch()
        device = next((p.device for p in module.parameters()), torch.device("cpu"))
        built = built.to(device)
        return Fresh(built, "arch", sum(1 for _ in built.parameters()) + sum(1 for _ in built.buffers()))
    clone = copy.deepcopy(module)
    _strip_taps(clone)
    count = _reset_graph(clone, gen) if isinstance(clone, torch.fx.GraphModule) else _reset_modules(clone, gen)
    return Fresh(clone, "reset", count)


def copy_from_init(module: nn.Module, init: Path) -> nn.Module:
    """A copy of ``module`` holding the initial weights of the ``--init`` file."""
    from leakaudit.inversion.initaware import load_initial_state  # the init-aware mode imports the engine

    copied = copy.deepcopy(module)
    try:
        copied.load_state_dict(load_initial_state(init))
    except RuntimeError as exc:
        raise ModelError(f"--init does not fit the model: {str(exc).splitlines()[0]}") from None
    return copied
