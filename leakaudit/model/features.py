"""Reaching a loaded classifier's penultimate features and BatchNorm batch statistics, whatever its format.

Plain modules get forward hooks, TorchScript modules are run leaf by leaf,
exported programs are read from their graph; each choice is verified with
one forward pass, and a note says why features are missing when they are.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import cast

import torch
from torch import nn

class Tap:
    """Collects tensors seen during one forward pass (features, BN inputs)."""

    def __init__(self) -> None:
        self.features: torch.Tensor | None = None
        self.bn_inputs: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []
        self.active = False

    def reset(self) -> None:
        self.features = None
        self.bn_inputs = []

    def stats(self) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]]:
        out = []
        for x, running_mean, running_var in self.bn_inputs:
            dims = [0] + list(range(2, x.dim()))
            out.append((x.mean(dims), x.var(dims, unbiased=False), running_mean, running_var))
        return out


def _batch_stats_record(tap: Tap) -> Callable[..., torch.Tensor]:
    def record(x: torch.Tensor, running_mean: torch.Tensor, running_var: torch.Tensor) -> torch.Tensor:
        if tap.active:
            tap.bn_inputs.append((x, running_mean, running_var))
        return x

    return record


def _feature_record(tap: Tap) -> Callable[[torch.Tensor], torch.Tensor]:
    def record(x: torch.Tensor) -> torch.Tensor:
        if tap.active:
            tap.features = x.flatten(1)
        return x

    return record


def fixed_batch(module: nn.Module) -> int | None:
    """Batch size an exported program was traced with, if it is static."""
    if not isinstance(module, torch.fx.GraphModule):
        return None
    for node in module.graph.nodes:
        if node.op == "placeholder":
            val = node.meta.get("val")
            if val is not None and hasattr(val, "shape") and len(val.shape) == 4 and isinstance(val.shape[0], int):
                return int(val.shape[0])
            return None
    return None


def _batched(forward: Callable[[torch.Tensor], torch.Tensor], batch: int,
             tap: Tap) -> Callable[[torch.Tensor], torch.Tensor]:
    """Run a static-batch program on any batch: pad the last chunk, drop the padding.

    What the tap records is gathered across chunks so a probe sees the whole batch.
    """

    def run(x: torch.Tensor) -> torch.Tensor:
        outs: list[torch.Tensor] = []
        features: list[torch.Tensor] = []
        bn: list[list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]] = []
        for start in range(0, x.shape[0], batch):
            chunk = x[start : start + batch]
            n = chunk.shape[0]
            if n < batch:
                chunk = torch.cat([chunk, chunk[:1].expand(batch - n, *chunk.shape[1:])])
            tap.reset()
            outs.append(forward(chunk)[:n])
            if tap.features is not None:
                features.append(tap.features[:n])
            bn.append([(inp[:n], rm, rv) for inp, rm, rv in tap.bn_inputs])
        tap.features = torch.cat(features) if features else None
        tap.bn_inputs = [
            (torch.cat([chunk_bn[i][0] for chunk_bn in bn]), bn[0][i][1], bn[0][i][2]) for i in range(len(bn[0]))
        ] if bn else []
        return torch.cat(outs)

    return run


def instrument(module: nn.Module, shape: tuple[int, int, int], dev: torch.device,
               linear: int = -1) -> tuple[Callable[[torch.Tensor], torch.Tensor], Tap, str | None]:
    """Choose how to reach features for this kind of module; verify the choice.

    The features are the input of the ``linear``-th linear layer: the last one
    (penultimate features) unless told; the init-aware mode taps the first.
    Hooks are registered on ``module`` itself: pass a copy when that matters.
    """
    tap = Tap()
    if isinstance(module, torch.jit.ScriptModule):
        forward, note = _instrument_script(module, tap, linear)
    elif isinstance(module, torch.fx.GraphModule):
        forward, note = _instrument_graph(module, tap, linear)
        batch = fixed_batch(module)
        if batch is not None:
            forward = _batched(forward, batch, tap)
    else:
        forward, note = _instrument_hooks(module, tap, linear)
    if note is None:
        note = _verify_features(module, forward, tap, shape, dev)
    return forward, tap, note


def _instrument_hooks(module: nn.Module, tap: Tap,
                      linear: int) -> tuple[Callable[[torch.Tensor], torch.Tensor], str | None]:
    linears = [m for m in module.modules() if isinstance(m, nn.Linear)]
    record_bn = _batch_stats_record(tap)
    for m in module.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats:
            m.register_forward_pre_hook(lambda mod, args: (record_bn(args[0], mod.running_mean, mod.running_var),))
    if not linears:
        return module, "the model has no nn.Linear layer whose input could serve as penultimate features"
    record = _feature_record(tap)
    linears[linear].register_forward_pre_hook(lambda mod, args: (record(args[0]),))
    return module, None


def _script_leaves(module: torch.jit.ScriptModule) -> list[torch.jit.ScriptModule]:
    """Flatten nested Sequentials of a scripted module into the order they run."""
    leaves: list[torch.jit.ScriptModule] = []
    # a scripted module's children are scripted too (torch types children() as plain modules)
    for child in cast(Iterator[torch.jit.ScriptModule], module.children()):
        if getattr(child, "original_name", "") == "Sequential":
            leaves.extend(_script_leaves(child))
        else:
            leaves.append(child)
    return leaves


def _instrument_script(module: torch.jit.ScriptModule, tap: Tap,
                       linear: int) -> tuple[Callable[[torch.Tensor], torch.Tensor], str | None]:
    """TorchScript hides its graph from hooks: run its own forward graph with the tapped values as extra outputs.

    The same weights give the same features in every format only if the tap is
    the same tensor: the input of the last linear operation, and every
    BatchNorm's input with its running statistics, as the plain module's hooks
    see them. Where the graph cannot be tapped (those operations sit inside
    control flow), the children are re-run in order instead.
    """
    tapped = _graph_tap(module, tap, linear)
    return (tapped, None) if tapped is not None else _chain_children(module, tap, linear)


def _graph_tap(module: torch.jit.ScriptModule, tap: Tap, linear: int) -> Callable[[torch.Tensor], torch.Tensor] | None:
    """A copy of the inlined forward graph that returns (logits, features, *BN inputs and running statistics)."""
    graph = module.inlined_graph.copy()
    nodes = list(graph.nodes())  # the top level only: values inside blocks cannot become outputs
    linears = [n for n in nodes if n.kind() == "aten::linear"]
    outputs = list(graph.outputs())
    if not linears or len(outputs) != 1:
        return None
    norms = [n for n in nodes if n.kind() == "aten::batch_norm"
             and all(isinstance(n.inputsAt(i).type(), torch._C.TensorType) for i in (3, 4))]
    values = [outputs[0], linears[linear].inputsAt(0)]
    for norm in norms:
        values += [norm.inputsAt(0), norm.inputsAt(3), norm.inputsAt(4)]
    packed = graph.create("prim::TupleConstruct", values)  # type: ignore[call-arg]  # the stub omits num_outputs=1
    graph.appendNode(packed)
    packed.output().setType(torch._C.TupleType([v.type() for v in values]))
    graph.eraseOutput(0)
    graph.registerOutput(packed.output())
    try:
        function = torch._C._create_function_from_graph("forward_with_taps", graph)
    except RuntimeError:
        return None
    record = _feature_record(tap)
    record_bn = _batch_stats_record(tap)

    def forward(x: torch.Tensor) -> torch.Tensor:
        logits: torch.Tensor
        logits, features, *norm_values = function(module._c, x)
        record(features)
        for i in range(0, len(norm_values), 3):
            record_bn(*norm_values[i: i + 3])
        return logits

    return forward


def _chain_children(module: torch.jit.ScriptModule, tap: Tap,
                    linear: int) -> tuple[Callable[[torch.Tensor], torch.Tensor], str | None]:
    """Re-run a scripted module's children in order (the fallback of ``_instrument_script``).

    This works when the module is a chain of its children (``nn.Sequential``,
    or a forward that applies its children one after another, with flattening
    between convolutional and linear parts). The chain is verified against the
    module's own output before it is trusted.
    """
    leaves = _script_leaves(module)
    names = [getattr(leaf, "original_name", "") for leaf in leaves]
    if "Linear" not in names:
        return module, "TorchScript model: no Linear layer among its children, so penultimate features are unreachable"
    tapped = [i for i, name in enumerate(names) if name == "Linear"][linear]
    record = _feature_record(tap)
    record_bn = _batch_stats_record(tap)

    def chained(x: torch.Tensor) -> torch.Tensor:
        for i, (leaf, name) in enumerate(zip(leaves, names)):
            if name == "Linear" and x.dim() > 2:
                x = x.flatten(1)
            if i == tapped:
                x = record(x)
            if name.startswith("BatchNorm"):
                record_bn(x, leaf.running_mean, leaf.running_var)
            x = leaf(x)
        return x

    chained.__leakaudit_module__ = module  # type: ignore[attr-defined]  # a function's own attribute, set at run time
    return chained, None


def _instrument_graph(module: torch.fx.GraphModule, tap: Tap,
                      linear: int) -> tuple[Callable[[torch.Tensor], torch.Tensor], str | None]:
    """Exported programs are FX graphs: insert recording calls after the right nodes."""
    graph = module.graph
    linear_targets = {torch.ops.aten.linear.default, torch.ops.aten.addmm.default}
    bn_targets = {torch.ops.aten.batch_norm.default, torch.ops.aten._native_batch_norm_legit_no_training.default}
    linears = [n for n in graph.nodes if n.op == "call_function" and n.target in linear_targets]
    record_bn = _batch_stats_record(tap)
    for node in [n for n in graph.nodes if n.op == "call_function" and n.target in bn_targets]:
        x, running_mean, running_var = node.args[0], node.args[3], node.args[4]
        with graph.inserting_before(node):
            graph.call_function(record_bn, (x, running_mean, running_var))
    note = None
    if linears:
        last = linears[linear]
        feat = last.args[1] if last.target == torch.ops.aten.addmm.default else last.args[0]
        with graph.inserting_before(last):
            graph.call_function(_feature_record(tap), (feat,))
    else:
        note = "exported program: no linear operation, so penultimate features are unreachable"
    module.recompile()
    return module, note


def _verify_features(module: nn.Module, forward: Callable[[torch.Tensor], torch.Tensor], tap: Tap,
                     shape: tuple[int, int, int], dev: torch.device) -> str | None:
    """Check that the tapped path reproduces the model's logits on a sample batch."""
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(4, *shape, generator=gen).to(dev)
    try:
        with torch.no_grad():
            # Only the TorchScript chain re-implements the forward pass; hooks
            # and graph insertions run the model's own code.
            reference = module(x) if isinstance(module, torch.jit.ScriptModule) else forward(x)
            tap.reset()
            tap.active = True
            out = forward(x)
            tap.active = False
    except Exception as exc:  # the chain does not compose: features unreachable
        tap.active = False
        return f"penultimate features unreachable ({type(exc).__name__} when re-running the layers in order)"
    if not torch.allclose(out, reference, rtol=1e-4, atol=1e-5):
        return "penultimate features unreachable (the layers run in order do not reproduce the model's output)"
    if tap.features is None:
        return "penultimate features unreachable (the last linear layer is not on the forward path)"
    tap.reset()
    return None
