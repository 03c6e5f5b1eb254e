"""The confined worker's main loop: ``python -m leakaudit.confine.worker``, talking over stdin/stdout.

Its first message is the ``confine`` request, read before anything starts a
thread: limits, no-new-privs and Landlock go on while the worker has one
thread, so every thread it starts later (BLAS and OpenMP pools, a GPU
driver's) inherits them. Then it imports torch and the engine; the ``load``
request puts the seccomp filter on every thread, checks that each is held
(``census``), and only then opens the model file. After that it answers one
request at a time from ``OPERATIONS``; the model's own prints go to stderr,
which the parent reads, never into the frame stream.
"""

from __future__ import annotations

import os
import sys
import traceback
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class WorkerState:
    """What the worker holds between requests."""

    relay: Any
    target: Any = None
    confinement: dict[str, Any] = field(default_factory=dict)
    refusal: BaseException | None = None  # why the first step of the confinement failed: nothing may load
    pretrain_cache: Any = None  # the attack's informed pre-training, for the controls (inversion/warmstart.py)

    def cache(self) -> Any:
        """Made on first use: the worker imports torch only inside its operations."""
        if self.pretrain_cache is None:
            from leakaudit.inversion.warmstart import PretrainCache

            self.pretrain_cache = PretrainCache()
        return self.pretrain_cache


def _op_load(state: WorkerState, args: dict[str, Any]) -> dict[str, Any]:
    import torch

    from leakaudit.confine import operations, results, sandbox

    torch.set_num_threads(int(args["threads"]))
    torch.manual_seed(int(args["seed"]))  # as the in-process audit does before loading
    device = args["request"].get("device")
    if device is not None and str(device).startswith("cuda") or device is None and torch.cuda.is_available():
        torch.zeros(1, device=device or "cuda")  # open the GPU's device files before writes are denied
    _before_confinement()
    if state.refusal is not None:
        raise state.refusal
    state.confinement = sandbox.confine_threads(state.confinement)
    state.relay.send({"kind": "confined", "record": state.confinement})
    # decoded from the wire: each field's value as the parent sent it, the path and the lists rebuilt
    fields: dict[str, Any] = {k: (Path(v) if k == "path" else tuple(v) if isinstance(v, list) else v)
                              for k, v in args["request"].items()}
    request = operations.LoadRequest(**fields)
    state.target = operations.load(request)
    return {"info": results.info_fields(operations.ModelInfo.of(state.target))}


def _before_confinement() -> None:
    """What torch does lazily and cannot do under the seccomp filter: the optimiser imports ``torch._dynamo``."""
    import torch._dynamo  # noqa: F401


def _op_attack(state: WorkerState, args: dict[str, Any]) -> dict[str, Any]:
    from leakaudit.confine import operations
    from leakaudit.confine.relay import RELAY_FOLDER
    from leakaudit.inversion import InversionConfig

    prior = args.get("prior")
    request = operations.AttackRequest(
        config=InversionConfig(**args["config"]), prior=tuple(prior) if prior is not None else None,
        informed=bool(args["informed"]), init=Path(args["init"]) if args.get("init") else None,
        resume_tag=str(args.get("resume_tag", "")))
    state.relay.resume_state = args.get("resume_state")
    state.relay.install_checkpoints()
    result = operations.attack(state.target, request, state.relay.callbacks(), state.relay.should_stop,
                               RELAY_FOLDER if args.get("checkpoints") else None, pretrain_cache=state.cache())
    state.relay.flush()
    return {"result": operations.result_fields(result)}


def _op_control(state: WorkerState, args: dict[str, Any]) -> dict[str, Any]:
    from leakaudit.confine import operations
    from leakaudit.inversion import InversionConfig

    prior = args.get("prior")
    request = operations.ControlRequest(args["images"], args["labels"], InversionConfig(**args["config"]),
                                        int(args["seed"]), tuple(prior) if prior is not None else None,
                                        Path(args["init"]) if args.get("init") else None)
    run = operations.control(state.target, request, state.relay.callbacks(), state.relay.should_stop,
                             state.cache())
    state.relay.flush()
    return {"control": operations.result_fields(run)}


def _op_references(state: WorkerState, args: dict[str, Any]) -> dict[str, Any]:
    from leakaudit.confine import operations
    from leakaudit.membership.recipe import recipe_from_mapping
    from leakaudit.membership.training import import_function

    spec = args.get("train_fn")
    ids = args.get("model_ids")
    request = operations.ReferenceRequest(args["images"], args["labels"], args["masks"],
                                          recipe_from_mapping(args["recipe"]), int(args["seed"]),
                                          Path(args["init"]) if args.get("init") else None,
                                          model_ids=tuple(int(i) for i in ids) if ids is not None else None,
                                          train_fn=import_function(str(spec)) if spec else None)
    callbacks = state.relay.callbacks()
    report = bool(args.get("report_models"))

    def stop() -> bool:  # polled between batches: also the watchdog's sign of progress
        state.relay.alive()
        return bool(state.relay.should_stop())

    def on_model(model: Any, done: int, planned: int) -> None:
        if report:  # the finished model's signals, for the parent's checkpoint (the worker writes nothing)
            state.relay.send({"kind": "checkpoint", "name": "reference", "model": operations.result_fields(model)})
        if callbacks.on_step is not None:
            callbacks.on_step(done, planned, {})
        state.relay.flush()

    run = operations.train_references(state.target, request, stop, on_model)
    state.relay.flush()
    return {"references": operations.result_fields(run)}


def _op_logits(state: WorkerState, args: dict[str, Any]) -> dict[str, Any]:
    from leakaudit.confine import operations

    return {"logits": operations.logits(state.target, args["images"], state.relay.alive)}


# name → operation; each takes the worker's state and the request's serialisable arguments
OPERATIONS: dict[str, Callable[[WorkerState, dict[str, Any]], dict[str, Any]]] = {
    "load": _op_load,
    "attack": _op_attack,
    "logits": _op_logits,
    "control": _op_control,
    "references": _op_references,
}


def _error(exc: BaseException) -> dict[str, Any]:
    from leakaudit.errors import LeakAuditError

    text = f"{exc}"
    if isinstance(exc, MemoryError) or "can't allocate memory" in text or "not enough memory" in text.lower():
        return {"kind": "error", "type": "memory", "message": text[:2000]}
    if isinstance(exc, LeakAuditError):
        return {"kind": "error", "type": type(exc).__name__, "message": text[:4000]}
    return {"kind": "error", "type": "internal", "message": f"{type(exc).__name__}: {text}"[:4000],
            "traceback": traceback.format_exc()[-8000:]}


def _die_with_parent() -> None:
    """``PR_SET_PDEATHSIG``: a parent killed outright takes the worker with it, even one stuck in the model."""
    if sys.platform == "linux":
        import ctypes
        import signal

        ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGKILL), 0, 0, 0)
        if os.getppid() == 1:  # the parent died before the call
            os._exit(1)


def _confine_process(request: dict[str, Any]) -> tuple[dict[str, Any], BaseException | None]:
    """The first step of the confinement (``sandbox.confine_process``); its failure is kept for ``load``."""
    import tempfile

    from leakaudit.confine import sandbox

    tempfile.tempdir = "/nonexistent/leakaudit-worker"  # torch asks for one; nothing may be written anyway
    try:
        readable = [Path(str(p)) for p in request.get("readable", [])]
        return sandbox.confine_process(readable, request.get("memory_bytes"), bool(request.get("gpu"))), None
    except Exception as exc:
        return {"worker": True}, exc


def main() -> int:
    """Serve requests until ``close`` or the end of the stream."""
    _die_with_parent()
    channel_in, channel_out = os.dup(0), os.dup(1)
    os.dup2(2, 1)  # the model's prints go to stderr
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    os.close(devnull)
    sys.stdout = sys.stderr
    from leakaudit.confine.channel import Channel, ChannelClosed  # no torch, no thread

    channel = Channel(channel_in, channel_out)
    try:
        first = channel.recv()
    except ChannelClosed:
        return 0
    if first.get("kind") != "confine":
        return 0  # closed before anything was asked
    record, refusal = _confine_process(first)
    import torch  # noqa: F401  from here on, threads may start: they inherit the confinement

    import leakaudit.confine.operations  # noqa: F401
    import leakaudit.confine.results  # noqa: F401
    from leakaudit.confine.relay import Relay

    state = WorkerState(relay=Relay(channel), confinement=record, refusal=refusal)
    warnings.showwarning = state.relay.warning  # the model's warnings reach the audit's own warning display
    channel.send({"kind": "ready"})
    while True:
        try:
            request = channel.recv()
        except ChannelClosed:
            return 0
        if request["kind"] == "close":
            return 0
        if request["kind"] != "call":
            continue  # a stop that arrived between calls
        state.relay.stopped = False
        try:
            reply = {"kind": "result", **OPERATIONS[request["op"]](state, request.get("args", {}))}
        except BaseException as exc:  # every failure is a reply; the parent decides what it means
            reply = _error(exc)
        try:
            state.relay.send(reply)
        except ChannelClosed:
            return 0


if __name__ == "__main__":
    sys.exit(main())
