"""``torch.export`` programs (.pt2): the archive is vetted entry by entry before torch reads it.

``torch.export.load`` would unpickle (running code) a weight or constant whose
config says ``use_pickle``, any ``opaque_obj_*`` or ``custom_obj_*`` constant,
sample inputs that do not load with ``weights_only=True``, and a legacy weights
file; it would load native code from ``data/aotinductor/``; and it hands
symbolic-shape strings to ``sympy.sympify``, which evaluates them. So before
calling it, this module accepts only an archive made of entries it knows
(an allowlist of the layout of archive version 0, as PyTorch 2.14 writes it):
plain tensor payloads, JSON configs that say no pickle, sample inputs that load
with ``weights_only=True``, and a graph whose every operator passes
``leakaudit.loading.ops`` and whose every shape expression is plain arithmetic.
Anything else, including a format version not listed here, is refused.
Torch's reader finds entries ignoring letter case, so names that differ only
in case are refused as duplicates (``limits.open_zip``) and every config or
sample-input entry the layout admits is vetted, not only the expected name.
"""

from __future__ import annotations

import ast
import io
import json
import operator
import re
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from leakaudit.errors import ModelError, UnsafeModelError
from leakaudit.loading.limits import check_unique_names, check_zip_sizes, open_zip
from leakaudit.loading.ops import EXPORT_NAMESPACES, op_problem
from leakaudit.sanitize import terminal_text

VETTED_VERSIONS = {"archive_format": {"pt2"}, "archive_version": {"0"}, ".data/version": {"6"}}
_NAME = r"[A-Za-z0-9_]+"
ENTRY_PATTERNS = tuple(re.compile(p) for p in (
    r"archive_format", r"archive_version", r"byteorder", r"\.data/version", r"\.data/serialization_id",
    rf"models/{_NAME}\.json", rf"data/weights/{_NAME}_weights_config\.json", r"data/weights/weight_\d+",
    rf"data/constants/{_NAME}_constants_config\.json", r"data/constants/tensor_\d+",
    rf"data/sample_inputs/{_NAME}\.pt", r"extra/[^/]+",
))
PYTHON_TARGETS = {"_operator.getitem": operator.getitem}
_OP_TARGET = re.compile(r"torch\.ops\.([A-Za-z0-9_]+)\.([A-Za-z0-9_]+)\.([A-Za-z0-9_]+)")
# Symbolic shapes, as PyTorch writes them (``Symbol('s31', positive=True, integer=True)``, ``s0 + 1``):
# symbols, numbers, arithmetic, comparisons, and calls of these sympy and PyTorch functions only.
SYMPY_CALLS = frozenset({
    "Symbol", "Integer", "Rational", "Float", "Add", "Mul", "Pow", "Mod", "Max", "Min", "Abs", "Eq", "Ne", "Lt", "Le",
    "Gt", "Ge", "And", "Or", "Not", "Piecewise", "floor", "ceiling", "FloorDiv", "CleanDiv", "PythonMod",
    "IntTrueDiv", "FloatTrueDiv", "ToFloat", "TruncToInt", "CeilToInt", "FloorToInt", "RoundToInt",
    "ModularIndexing", "Identity",
})
SYMPY_NAMES = frozenset({"oo", "zoo", "nan", "True", "False"})
_SYMBOL = re.compile(r"[a-z]+\d+")
_EXPR_NODES = (ast.Expression, ast.BinOp, ast.UnaryOp, ast.Compare, ast.BoolOp, ast.operator, ast.unaryop,
               ast.cmpop, ast.boolop, ast.expr_context, ast.Tuple)
MAX_JSON_BYTES = 64 << 20  # a ViT-B/16 program is ~1 MB of JSON


def _refuse(path: Path, entry: str, problem: str) -> UnsafeModelError:
    return UnsafeModelError(f"{terminal_text(path)}: .pt2 entry {terminal_text(entry)}: {problem}; "
                            "refused before loading")


def _root(path: Path, names: list[str]) -> str:
    roots = {name.split("/", 1)[0] for name in names}
    if len(roots) != 1 or any("/" not in name for name in names):
        raise ModelError(f"{terminal_text(path)}: not a .pt2 archive (its entries are not under one folder)")
    return roots.pop()


def _check_layout(path: Path, archive: zipfile.ZipFile, root: str) -> None:
    for info in archive.infolist():
        entry = info.filename[len(root) + 1:]
        if info.is_dir():
            continue
        if not any(p.fullmatch(entry) for p in ENTRY_PATTERNS):
            raise _refuse(path, info.filename, "not part of the .pt2 layout leakaudit has vetted (it may hold "
                                               "pickled objects or native code)")
        if entry in VETTED_VERSIONS:
            value = archive.read(info).decode("utf-8", "replace").strip()
            if value not in VETTED_VERSIONS[entry]:
                raise _refuse(path, info.filename, f"format version {value!r} is not one leakaudit has vetted")


def _read_json(path: Path, archive: zipfile.ZipFile, name: str) -> Any:
    if archive.getinfo(name).file_size > MAX_JSON_BYTES:
        raise _refuse(path, name, "implausibly large")
    try:
        return json.loads(archive.read(name))
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        raise ModelError(f"{terminal_text(path)}: {terminal_text(name)} is not valid JSON ({exc})") from None


def _check_payloads(path: Path, archive: zipfile.ZipFile, name: str, prefix: str) -> None:
    config = _read_json(path, archive, name)
    entries = config.get("config") if isinstance(config, dict) else None
    if not isinstance(entries, dict):
        raise _refuse(path, name, "no payload table")
    folder = name.rsplit("/", 1)[0]
    for fqn, meta in entries.items():
        where = f"{name} [{fqn}]"
        file = str(meta.get("path_name", "")) if isinstance(meta, dict) else ""
        if not re.fullmatch(rf"{prefix}\d+", file):
            raise _refuse(path, where, f"payload {file!r} is not a plain tensor (an opaque or custom object, "
                                       "which torch unpickles)")
        if meta.get("use_pickle") is not False:
            raise _refuse(path, where, "a pickled payload (use_pickle), which would run code when loaded")
        if f"{folder}/{file}" not in archive.NameToInfo:
            raise ModelError(f"{terminal_text(path)}: {terminal_text(where)} names a missing payload")


def _check_sample_inputs(path: Path, archive: zipfile.ZipFile, name: str) -> None:
    data = archive.read(name)
    if not zipfile.is_zipfile(io.BytesIO(data)):  # a bare pickle stream allocates what it declares
        raise _refuse(path, name, "sample inputs that are a bare pickle stream, not a torch.save archive (they "
                                  "would not load with weights_only=True, and torch would retry unsafely)")
    with zipfile.ZipFile(io.BytesIO(data)) as nested:
        check_unique_names(path, nested)
        check_zip_sizes(path, nested, len(data), f" ({terminal_text(name)})")
    try:
        loaded = torch.load(io.BytesIO(data), weights_only=True)
    except Exception as exc:  # any refusal of the safe loader: torch would retry unsafely
        raise _refuse(path, name, f"sample inputs that do not load with weights_only=True "
                                  f"({type(exc).__name__}); torch would unpickle them unsafely") from None
    if not isinstance(loaded, (tuple, dict)):
        raise _refuse(path, name, f"sample inputs are a {type(loaded).__name__}, not a tuple or dict")


def _walk(value: Any) -> Iterator[tuple[str, Any]]:
    """Every (key, value) pair of a JSON document, at any depth (iteratively: depth is the file's to choose)."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            for key, inner in item.items():
                yield key, inner
                stack.append(inner)
        elif isinstance(item, list):
            stack.extend(item)


def target_problem(target: str) -> str | None:
    """Why a serialized call target may not run, or None."""
    if target in PYTHON_TARGETS:
        return None
    match = _OP_TARGET.fullmatch(target)
    if match is None:
        return "is not a PyTorch operator"
    return op_problem(f"{match.group(1)}::{match.group(2)}", EXPORT_NAMESPACES)


def _check_program(path: Path, archive: zipfile.ZipFile, name: str) -> None:
    program = _read_json(path, archive, name)
    for key, value in _walk(program):
        if key in ("target", "as_operator") and isinstance(value, str):
            problem = target_problem(value)
            if problem is not None:
                raise _refuse(path, name, f"the graph calls {value!r}, which {problem}")
        elif key == "expr_str" and isinstance(value, str) and not _plain_expression(value):
            raise _refuse(path, name, f"shape expression {value[:80]!r} is not plain arithmetic (sympy would "
                                      "evaluate it as Python)")


def _plain_node(node: ast.AST) -> bool:
    if isinstance(node, ast.Call):
        return isinstance(node.func, ast.Name) and node.func.id in SYMPY_CALLS
    if isinstance(node, ast.Name):
        return node.id in SYMPY_CALLS or node.id in SYMPY_NAMES or bool(_SYMBOL.fullmatch(node.id))
    if isinstance(node, ast.Constant):
        value = node.value
        return isinstance(value, (int, float, bool)) or (isinstance(value, str) and bool(_SYMBOL.fullmatch(value)))
    if isinstance(node, ast.keyword):
        return node.arg is not None and node.arg.isidentifier() and not node.arg.startswith("_")
    return isinstance(node, _EXPR_NODES)


def _plain_expression(text: str) -> bool:
    """Whether ``text`` parses (without running) to arithmetic on symbols and known sympy calls only."""
    if len(text) > 10_000:
        return False
    try:
        tree = ast.parse(text, mode="eval")
    except (SyntaxError, ValueError):
        return False
    return all(_plain_node(node) for node in ast.walk(tree))


def check_archive(path: Path) -> None:
    """Refuse, before ``torch.export.load`` sees it, any .pt2 that could run code while loading."""
    with open_zip(path) as archive:
        names = archive.namelist()
        root = _root(path, names)
        _check_layout(path, archive, root)
        models = [n for n in names if re.fullmatch(rf"{re.escape(root)}/models/{_NAME}\.json", n)]
        if [n.rsplit("/", 1)[1] for n in models] != ["model.json"]:
            raise ModelError(f"{terminal_text(path)}: a .pt2 archive should hold exactly one program, "
                             "models/model.json")
        for kind, prefix in (("weights", "weight_"), ("constants", "tensor_")):
            config = f"{root}/data/{kind}/model_{kind}_config.json"
            if config not in archive.NameToInfo:
                raise ModelError(f"{terminal_text(path)}: {config} is missing")
            # Every config the layout admits, not only the expected name: torch's reader finds names ignoring
            # case, so an entry that is not the expected one could still be the one torch reads.
            pattern = re.compile(rf"{re.escape(root)}/data/{kind}/{_NAME}_{kind}_config\.json")
            for name in names:
                if pattern.fullmatch(name):
                    _check_payloads(path, archive, name, prefix)
        if f"{root}/data/sample_inputs/model.pt" not in archive.NameToInfo:
            raise ModelError(f"{terminal_text(path)}: {root}/data/sample_inputs/model.pt is missing")
        for name in names:
            if re.fullmatch(rf"{re.escape(root)}/data/sample_inputs/{_NAME}\.pt", name):
                _check_sample_inputs(path, archive, name)
        _check_program(path, archive, models[0])


def check_graph(path: Path, program: torch.export.ExportedProgram) -> None:
    """After loading: every call in every graph (submodules' too) is an allowed operator (the archive check, again,
    on the real graphs)."""
    for module in program.graph_module.modules():
        if not isinstance(module, torch.fx.GraphModule):
            continue
        for node in module.graph.nodes:
            if node.op in ("placeholder", "output", "get_attr"):
                continue
            target = node.target
            if node.op == "call_function" and target is operator.getitem:
                continue
            if isinstance(target, torch._ops.HigherOrderOperator):
                name = target.name()  # type: ignore[no-untyped-call]  # torch leaves HigherOrderOperator.name bare
                raise UnsafeModelError(f"{terminal_text(path)}: the exported graph calls higher-order operator "
                                       f"torch.ops.higher_order.{terminal_text(name)}, which runs submodule "
                                       "graphs (namespace 'higher_order' is not one leakaudit allows)")
            if node.op != "call_function" or not isinstance(target, torch._ops.OpOverload):
                raise UnsafeModelError(f"{terminal_text(path)}: the exported graph has a {node.op} node "
                                       f"{terminal_text(str(target))}, which is not a PyTorch operator")
            problem = op_problem(target._schema.name, EXPORT_NAMESPACES)
            if problem is not None:
                raise UnsafeModelError(f"{terminal_text(path)}: the exported graph calls {target._schema.name}, "
                                       f"which {problem}")


def load_export(path: Path) -> torch.nn.Module:
    """Vet the archive, load it, vet the graph, and return the runnable module."""
    check_archive(path)
    try:
        program = torch.export.load(str(path))
    except Exception as exc:
        first = str(exc).splitlines()[0][:200] if str(exc) else ""
        raise ModelError(f"{terminal_text(path)}: torch.export program could not be loaded "
                         f"({type(exc).__name__}: {terminal_text(first)})") from None
    check_graph(path, program)
    return program.module()
