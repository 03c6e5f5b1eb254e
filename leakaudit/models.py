"""Load a classifier safely and expose what the inversion needs from it.

Safe by default: ``leakaudit.loading`` checks each format before its
deserialiser runs, so TorchScript archives, ``torch.export`` programs,
safetensors and state_dicts never run code from the file. A pickled
``nn.Module`` can only be loaded with ``unsafe_pickle=True``.

``TargetModel`` wraps any of these behind one interface: images in [0, 1]
pixel space go in (the model's own normalisation is applied inside), logits
come out, and ``probe`` also returns the penultimate features (the input of the
last linear layer) and BatchNorm batch statistics where they can be reached.
"""

from __future__ import annotations

import functools
import hashlib
import math
import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from leakaudit.errors import ModelError
from leakaudit.loading import FORMATS, detect_format, import_arch, load_export, load_safetensors, load_torch_save, load_torchscript
from leakaudit.sanitize import terminal_text

UNSAFE_NOTE = ("--unsafe-pickle: {path} was unpickled, so code from the file ran in this process; this audit is only "
               "as trustworthy as the file")

__all__ = ["FORMATS", "Probe", "TargetModel", "detect_format", "file_sha256", "import_arch", "load_model"]


@dataclass
class Probe:
    """One forward pass with everything the inversion losses look at."""

    logits: torch.Tensor  # (N, K)
    features: torch.Tensor | None  # (N, D) penultimate features, or None
    bn_stats: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]] = field(default_factory=list)
    # each: (batch mean (C,), batch var (C,), running mean (C,), running var (C,))


class _Tap:
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


def _batch_stats_record(tap: _Tap) -> Callable[..., torch.Tensor]:
    def record(x: torch.Tensor, running_mean: torch.Tensor, running_var: torch.Tensor) -> torch.Tensor:
        if tap.active:
            tap.bn_inputs.append((x, running_mean, running_var))
        return x

    return record


def _feature_record(tap: _Tap) -> Callable[[torch.Tensor], torch.Tensor]:
    def record(x: torch.Tensor) -> torch.Tensor:
        if tap.active:
            tap.features = x.flatten(1)
        return x

    return record


class TargetModel:
    """The frozen classifier under audit, in [0, 1] pixel space."""

    def __init__(
        self,
        forward: Callable[[torch.Tensor], torch.Tensor],
        parameters: Sequence[torch.Tensor],
        *,
        input_shape: tuple[int, int, int],
        num_classes: int,
        mean: Sequence[float] | None,
        std: Sequence[float] | None,
        device: torch.device,
        fmt: str,
        tap: _Tap,
        feature_note: str | None,
        path: Path | None = None,
        sha256: str | None = None,
    ) -> None:
        self._forward = forward
        self._parameters = list(parameters)
        self._tap = tap
        self.input_shape = input_shape
        self.num_classes = num_classes
        self.device = device
        self.format = fmt
        self.path = path
        self.sha256 = sha256
        self.feature_note = feature_note  # why features are unavailable, or None
        self.load_notes: list[str] = []  # what every output must say about how the file was loaded
        channels = input_shape[0]
        self.mean = torch.tensor(list(mean) if mean is not None else [0.0] * channels, device=device).view(1, -1, 1, 1)
        self.std = torch.tensor(list(std) if std is not None else [1.0] * channels, device=device).view(1, -1, 1, 1)

    @property
    def has_features(self) -> bool:
        return self.feature_note is None

    @functools.cached_property
    def has_batchnorm(self) -> bool:
        """Whether BatchNorm statistics are reachable (one probe pass, then remembered: the model is frozen)."""
        return bool(self.probe(torch.zeros(2, *self.input_shape, device=self.device)).bn_stats)

    def parameters(self) -> list[torch.Tensor]:
        """The classifier's weights (frozen: requires_grad is off unless asked)."""
        return self._parameters

    def normalise(self, x01: torch.Tensor) -> torch.Tensor:
        return (x01 - self.mean) / self.std

    def logits(self, x01: torch.Tensor) -> torch.Tensor:
        """(N, C, H, W) in [0, 1] → (N, K) logits."""
        return self._forward(self.normalise(x01))

    def probe(self, x01: torch.Tensor) -> Probe:
        """Logits plus penultimate features and BatchNorm statistics."""
        self._tap.reset()
        self._tap.active = True
        try:
            logits = self._forward(self.normalise(x01))
        finally:
            self._tap.active = False
        features = self._tap.features if self.has_features else None
        stats = self._tap.stats()
        self._tap.reset()
        return Probe(logits=logits, features=features, bn_stats=stats)

    @classmethod
    def from_module(
        cls,
        module: nn.Module,
        input_shape: tuple[int, int, int],
        num_classes: int | None = None,
        *,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
        device: torch.device | str | None = None,
        fmt: str = "module",
    ) -> TargetModel:
        """Wrap an in-memory module (plain, TorchScript or exported)."""
        dev = torch.device(device) if device is not None else _default_device()
        module = module.to(dev)
        _set_eval(module)
        for p in module.parameters():
            p.requires_grad_(False)
        forward, tap, note = _instrument(module, input_shape, dev)
        k = num_classes if num_classes is not None else _count_classes(forward, input_shape, dev)
        return cls(forward, list(module.parameters()), input_shape=input_shape, num_classes=k, mean=mean, std=std,
                   device=dev, fmt=fmt, tap=tap, feature_note=note)


def _set_eval(module: nn.Module) -> None:
    """Eval mode; exported programs refuse ``.eval()`` and are already traced in it."""
    try:
        module.eval()
    except (NotImplementedError, RuntimeError):
        pass


def _fixed_batch(module: nn.Module) -> int | None:
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


def _batched(forward: Callable[[torch.Tensor], torch.Tensor], batch: int, tap: _Tap) -> Callable[[torch.Tensor], torch.Tensor]:
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


def _default_device() -> torch.device:
    return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")


def _count_classes(forward: Callable[[torch.Tensor], torch.Tensor], shape: tuple[int, int, int], dev: torch.device) -> int:
    with torch.no_grad():
        out = forward(torch.zeros(2, *shape, device=dev))
    return int(out.shape[1])


# --- feature taps -------------------------------------------------------------

def _instrument(module: nn.Module, shape: tuple[int, int, int], dev: torch.device) -> tuple[Callable[[torch.Tensor], torch.Tensor], _Tap, str | None]:
    """Choose how to reach features for this kind of module; verify the choice."""
    tap = _Tap()
    if isinstance(module, torch.jit.ScriptModule):
        forward, note = _instrument_script(module, tap)
    elif isinstance(module, torch.fx.GraphModule):
        forward, note = _instrument_graph(module, tap)
        batch = _fixed_batch(module)
        if batch is not None:
            forward = _batched(forward, batch, tap)
    else:
        forward, note = _instrument_hooks(module, tap)
    if note is None:
        note = _verify_features(module, forward, tap, shape, dev)
    return forward, tap, note


def _instrument_hooks(module: nn.Module, tap: _Tap) -> tuple[Callable[[torch.Tensor], torch.Tensor], str | None]:
    linears = [m for m in module.modules() if isinstance(m, nn.Linear)]
    record_bn = _batch_stats_record(tap)
    for m in module.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats:
            m.register_forward_pre_hook(lambda mod, args: (record_bn(args[0], mod.running_mean, mod.running_var),))
    if not linears:
        return module, "the model has no nn.Linear layer whose input could serve as penultimate features"
    record = _feature_record(tap)
    linears[-1].register_forward_pre_hook(lambda mod, args: (record(args[0]),))
    return module, None


def _script_leaves(module: torch.jit.ScriptModule) -> list[torch.jit.ScriptModule]:
    """Flatten nested Sequentials of a scripted module into the order they run."""
    leaves: list[torch.jit.ScriptModule] = []
    for child in module.children():
        if getattr(child, "original_name", "") == "Sequential":
            leaves.extend(_script_leaves(child))
        else:
            leaves.append(child)
    return leaves


def _instrument_script(module: torch.jit.ScriptModule, tap: _Tap) -> tuple[Callable[[torch.Tensor], torch.Tensor], str | None]:
    """TorchScript hides its graph from hooks: run its own forward graph with the tapped values as extra outputs.

    The same weights give the same features in every format only if the tap is
    the same tensor: the input of the last linear operation, and every
    BatchNorm's input with its running statistics, as the plain module's hooks
    see them. Where the graph cannot be tapped (those operations sit inside
    control flow), the children are re-run in order instead.
    """
    tapped = _graph_tap(module, tap)
    return (tapped, None) if tapped is not None else _chain_children(module, tap)


def _graph_tap(module: torch.jit.ScriptModule, tap: _Tap) -> Callable[[torch.Tensor], torch.Tensor] | None:
    """A copy of the inlined forward graph that returns (logits, features, *BN inputs and running statistics)."""
    graph = module.inlined_graph.copy()
    nodes = list(graph.nodes())  # the top level only: values inside blocks cannot become outputs
    linears = [n for n in nodes if n.kind() == "aten::linear"]
    outputs = list(graph.outputs())
    if not linears or len(outputs) != 1:
        return None
    norms = [n for n in nodes if n.kind() == "aten::batch_norm"
             and all(isinstance(n.inputsAt(i).type(), torch._C.TensorType) for i in (3, 4))]
    values = [outputs[0], linears[-1].inputsAt(0)]
    for norm in norms:
        values += [norm.inputsAt(0), norm.inputsAt(3), norm.inputsAt(4)]
    packed = graph.create("prim::TupleConstruct", values)
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
        logits, features, *norm_values = function(module._c, x)
        record(features)
        for i in range(0, len(norm_values), 3):
            record_bn(*norm_values[i: i + 3])
        return logits

    return forward


def _chain_children(module: torch.jit.ScriptModule, tap: _Tap) -> tuple[Callable[[torch.Tensor], torch.Tensor], str | None]:
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
    last_linear = len(names) - 1 - names[::-1].index("Linear")
    record = _feature_record(tap)
    record_bn = _batch_stats_record(tap)

    def chained(x: torch.Tensor) -> torch.Tensor:
        for i, (leaf, name) in enumerate(zip(leaves, names)):
            if name == "Linear" and x.dim() > 2:
                x = x.flatten(1)
            if i == last_linear:
                x = record(x)
            if name.startswith("BatchNorm"):
                record_bn(x, leaf.running_mean, leaf.running_var)
            x = leaf(x)
        return x

    chained.__leakaudit_module__ = module  # type: ignore[attr-defined]
    return chained, None


def _instrument_graph(module: torch.fx.GraphModule, tap: _Tap) -> tuple[Callable[[torch.Tensor], torch.Tensor], str | None]:
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
        last = linears[-1]
        feat = last.args[1] if last.target == torch.ops.aten.addmm.default else last.args[0]
        with graph.inserting_before(last):
            graph.call_function(_feature_record(tap), (feat,))
    else:
        note = "exported program: no linear operation, so penultimate features are unreachable"
    module.recompile()
    return module, note


def _verify_features(module: nn.Module, forward: Callable[[torch.Tensor], torch.Tensor], tap: _Tap, shape: tuple[int, int, int], dev: torch.device) -> str | None:
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


# --- loading ------------------------------------------------------------------

def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _load_module(path: Path, fmt: str, arch: str | None, unsafe_pickle: bool, device: torch.device) -> tuple[nn.Module, str]:
    """Dispatch to the format's loader; each applies its checks before deserialising (``leakaudit.loading``)."""
    if fmt == "torchscript":
        return load_torchscript(path, device), fmt
    if fmt == "export":
        return load_export(path), fmt
    if fmt == "safetensors":
        return load_safetensors(path, arch), fmt
    return load_torch_save(path, arch, unsafe_pickle)


def _first_layer(module: nn.Module) -> tuple[str, int] | None:
    """Kind and input width of the first Conv2d/Linear layer (plain or TorchScript modules)."""
    for m in module.modules():
        kind = type(m).__name__ if not isinstance(m, torch.jit.ScriptModule) else getattr(m, "original_name", "")
        if kind == "Conv2d" and hasattr(m, "in_channels"):
            return "conv", int(m.in_channels)
        if kind == "Linear" and hasattr(m, "in_features"):
            return "linear", int(m.in_features)
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
                    return tuple(int(s) for s in val.shape[1:])  # type: ignore[return-value]
                except TypeError:
                    return None
    return None


def _candidate_shapes(module: nn.Module, input_size: tuple[int, int] | None, hint: tuple[int, int, int] | None) -> Iterator[tuple[int, int, int]]:
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


def load_model(
    path: str | Path,
    *,
    arch: str | None = None,
    unsafe_pickle: bool = False,
    input_size: tuple[int, int] | None = None,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    shape_hint: tuple[int, int, int] | None = None,
    device: str | torch.device | None = None,
) -> TargetModel:
    """Load a model file safely and validate it with one forward pass.

    ``shape_hint`` (C, H, W) is the data's native shape, tried when neither
    the file nor ``input_size`` says what the model expects.
    """
    path = Path(path)
    shown = terminal_text(path)
    if not path.exists():
        raise ModelError(f"model file not found: {shown}")
    if not path.is_file():
        raise ModelError(f"model path is not a regular file: {shown}")
    if path.stat().st_size == 0:
        raise ModelError(f"model file is empty: {shown}")
    dev = torch.device(device) if device is not None else _default_device()
    fmt = detect_format(path)
    if arch is not None and fmt in ("torchscript", "export"):
        arch = None  # the file carries its own architecture
    module, fmt = _load_module(path, fmt, arch, unsafe_pickle, dev)
    module = module.to(dev) if not isinstance(module, torch.fx.GraphModule) else module
    _set_eval(module)
    shape, num_classes, errors = _infer_shape(module, input_size, shape_hint, dev)
    if shape is None:
        raise ModelError(
            f"{shown}: could not run the model on any plausible input "
            f"({terminal_text('; '.join(_telling(errors))) or 'no input size known'}); "
            "pass --input-size H W"
        )
    if num_classes < 2:
        raise ModelError(f"{shown}: the model returns {num_classes} output(s); a classifier with at least 2 classes is needed")
    for name, values in (("--mean", mean), ("--std", std)):
        if values is not None and len(values) not in (1, shape[0]):
            raise ModelError(f"{name} has {len(values)} values, the model takes {shape[0]} channel(s)")
    if std is not None and any(s <= 0 for s in std):
        raise ModelError("--std values must be positive")
    mean_full = list(mean) * shape[0] if mean is not None and len(mean) == 1 else mean
    std_full = list(std) * shape[0] if std is not None and len(std) == 1 else std
    target = TargetModel.from_module(module, shape, num_classes, mean=mean_full, std=std_full, device=dev, fmt=fmt)
    target.path = path
    target.sha256 = file_sha256(path)
    if fmt == "pickle":
        target.load_notes.append(UNSAFE_NOTE.format(path=shown))
    return target


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


def _telling(errors: list[str]) -> list[str]:
    """The attempts whose error names the size the model wants, when any does; else all of them."""
    sized = [e for e in errors if "--input-size" in e]
    return sized or errors


def _infer_shape(module: nn.Module, input_size: tuple[int, int] | None, hint: tuple[int, int, int] | None, dev: torch.device) -> tuple[tuple[int, int, int] | None, int, list[str]]:
    errors: list[str] = []
    batch = _fixed_batch(module) or 2
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
