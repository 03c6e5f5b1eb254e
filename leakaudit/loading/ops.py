"""Which operators a model file's graph may call: an allowlist by namespace, with named exceptions.

Why an allowlist: a model's graph is checked before it runs, and a graph
runs whatever operators the installed PyTorch (or a library it loaded)
registers. A denylist would trust every operator nobody thought of, including
those a future PyTorch adds; an allowlist refuses them until someone looks.

The allowed namespaces are ``aten`` and ``prim`` (TorchScript's control flow
and value handling), plus ``prims`` in exported programs: they hold the
operators built into PyTorch that compute on tensors and values. Every other
namespace is refused: custom libraries (``torch.ops.load_library``), and
PyTorch's own ``c10d`` (network), ``profiler``, ``cuda`` (streams, events)
and the like, which do something other than compute.

Inside the allowed namespaces a few operators reach outside the process's
tensors and are refused by name or by schema: anything taking a ``Storage``
(``set_`` can point a tensor at any memory), any ``filename`` argument
(``from_file`` maps a file, shared, so writes to the tensor write the file;
``save`` writes one), printing (model text on the terminal), RPC,
Python callbacks, work on other threads (``fork``, ``wait``, awaitables), and
global state (seeds, grad mode, caches). Warnings (``aten::warn``) stay allowed:
PyTorch's own attention and softmax layers warn in TorchScript; the CLI shows
each distinct one once, and none with ``--quiet``. Exported programs may call no
higher-order operator (``torch.ops.higher_order.*``: ``cond``, ``map``, …):
their namespace is not an allowed one.
"""

from __future__ import annotations

import functools

import torch

ALLOWED_NAMESPACES = frozenset({"aten", "prim"})
EXPORT_NAMESPACES = frozenset({"aten", "prims"})

REFUSED = {
    "aten::from_file": "maps a file into a tensor (writes to the tensor change the file)",
    "aten::save": "writes a file",
    "aten::_print": "prints to the terminal",
    "prim::Print": "prints to the terminal",
    "prim::PythonOp": "calls Python code",
    "prim::IgnoredPythonOp": "calls Python code",
    "prim::rpc_async": "calls another process",
    "prim::rpc_sync": "calls another process",
    "prim::rpc_remote": "calls another process",
    "aten::manual_seed": "changes the process's random state",
    "aten::seed": "changes the process's random state",
    "aten::set_grad_enabled": "changes the process's autograd mode",
    "aten::_cufft_set_plan_cache_max_size": "changes a process-wide cache",
    "aten::record_stream": "changes memory ownership across streams",
    "aten::set_data": "replaces a tensor's storage",
    # Work on other threads: a forked function's code sits in a subgraph the caller's inlining does not reach,
    # and a classifier has no reason to fork or await.
    "prim::fork": "runs a function on another thread",
    "prim::awaitable": "defers a function to run later",
    "prim::awaitable_nowait": "defers a function to run later",
    "prim::awaitable_wait": "runs a deferred function",
    "aten::wait": "waits on work run on another thread",
    # Left after inlining only when the callee is not known statically (an interface): the check cannot see it.
    "prim::CallMethod": "calls a method whose code the check cannot see",
    "prim::CallFunction": "calls a function whose code the check cannot see",
}


@functools.cache
def _schemas() -> dict[str, list[torch._C.FunctionSchema]]:
    table: dict[str, list[torch._C.FunctionSchema]] = {}
    for schema in torch._C._jit_get_all_schemas():
        table.setdefault(schema.name, []).append(schema)
    return table


def _schema_problem(name: str) -> str | None:
    for schema in _schemas().get(name, []):
        for arg in list(schema.arguments) + list(schema.returns):
            if "Storage" in str(arg.type):
                return "takes a raw Storage (can point a tensor at any memory)"
            if arg.name in ("filename", "path", "file"):
                return "takes a file name"
    return None


def op_problem(name: str, namespaces: frozenset[str] = ALLOWED_NAMESPACES) -> str | None:
    """Why operator ``ns::name`` may not run, or None when it only computes."""
    namespace = name.split("::", 1)[0]
    if namespace not in namespaces:
        return f"operator namespace '{namespace}' is not one that only computes on tensors"
    base = name.split(".", 1)[0]
    if base in REFUSED:
        return REFUSED[base]
    return _schema_problem(base)
