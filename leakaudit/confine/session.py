"""The parent's handle on the audited model: a confined worker process, or the same interface in-process.

Everything the audit does with the model goes through a ``ModelSession``:
``load`` (then ``info``), ``attack``, ``logits``. ``ConfinedSession`` runs
them in ``leakaudit.confine.worker`` and writes what the worker cannot
(checkpoints, ``checkpoints``); ``InProcessSession`` (``inprocess``) runs
them here, for in-memory modules, distributed runs (their collectives need
sockets) and where the kernel offers no confinement. Adding an operation: a
function in ``operations``, an entry in ``worker.OPERATIONS``, and a method
on both sessions.
"""

from __future__ import annotations

import signal
import subprocess
import threading
import time
import warnings
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any, TypeVar

import torch
from torch import nn

from leakaudit.confine import limits, results, sandbox, spawn
from leakaudit.confine.checkpoints import CheckpointWriter, ReferenceWriter, saved_state
from leakaudit.confine.channel import Channel, ChannelClosed, FrameError
from leakaudit.confine.inprocess import HoldsModelInfo, InProcessSession, ModelSession, StopCheck
from leakaudit.confine.operations import AttackRequest, ControlRequest, LoadRequest, ModelInfo, ReferenceRequest
from leakaudit.confine.stderr import SHOWN_LINE_CHARS, WorkerStderr
from leakaudit.confine.watchdog import KILL_GRACE_S, Watchdog, ceiling, stall_bound
from leakaudit.config import AuditSettings
from leakaudit.runtime.distributed import DistContext
from leakaudit.errors import (AuditInterrupted, BudgetCeiling, ConfigError, DataError, LeakAuditError, ModelError,
                              UnsafeModelError, UsageError)
from leakaudit.inversion import InversionCallbacks, InversionResult
from leakaudit.membership.recipe import file_table
from leakaudit.membership.references import OnModel, ReferenceRun
from leakaudit.membership.training import function_name, function_spec
from leakaudit.power.control import ControlRun, stopped_control
from leakaudit.sanitize import terminal_text

_T = TypeVar("_T")

__all__ = ["BUDGET_MARGIN_S", "MODEL_REPLY_BYTES", "REPLY_MARGIN", "ConfinedSession", "InProcessSession",
           "ModelSession", "StopCheck", "confinement_notes", "open_session"]
_ERRORS: dict[str, type[LeakAuditError]] = {c.__name__: c for c in (ModelError, UnsafeModelError, ConfigError,
                                                                      DataError, UsageError)}
_WARNINGS: dict[str, type[Warning]] = {c.__name__: c for c in (UserWarning, DeprecationWarning, FutureWarning,
                                                               RuntimeWarning, SyntaxWarning, ResourceWarning,
                                                               ImportWarning, UnicodeWarning, BytesWarning)}
REPLY_MARGIN = 1 << 20  # a tensor frame's own structure (names, pickle) beyond the tensors' bytes
MODEL_REPLY_BYTES = 1 << 30  # the most an inversion, a control or a checkpoint may send back
BUDGET_MARGIN_S = 30.0  # loading and the membership pass end at the budget plus this, counted from the start
NOT_IMPORTABLE = ("train_fn {name} has no name the model's confined worker can import it by (a lambda, a local "
                  "function or one defined in __main__): define it at the top level of a module importable from the "
                  "working directory, or pass the model as an nn.Module (which runs in this process)")


class ConfinedSession(HoldsModelInfo):
    """The model in a confined worker; the worker starts at once, so its imports overlap the parent's work."""

    def __init__(self, readable: list[Path], budget_s: float | None, seed: int, threads: int,
                 on_note: Callable[[str], None] | None = None, should_stop: StopCheck | None = None,
                 gpu: bool = False) -> None:
        self.readable = readable
        self.stall_s = stall_bound(budget_s)
        self.seed, self.threads = seed, threads
        self.deadline = time.monotonic() + budget_s + BUDGET_MARGIN_S if budget_s is not None else None
        self.on_note = on_note or (lambda _: None)
        # a stop while loading or in the membership pass ends the worker
        self.should_stop = should_stop or (lambda: False)
        self.memory_bytes = limits.memory_limit()
        self.confinement: dict[str, Any] = {"worker": True}
        self.census: list[dict[str, Any]] = []  # every thread of the worker as it confined itself
        self._stderr = WorkerStderr()
        # the worker's first message, read before it imports anything that starts a thread (``worker.main``); the
        # CLI sends it to a worker it starts before its own imports (``spawn.prestart``), which is then taken here
        first = {"kind": "confine", "readable": [str(p) for p in readable], "memory_bytes": self.memory_bytes,
                 "gpu": gpu}
        self._proc = spawn.take(first)
        assert self._proc.stdin is not None and self._proc.stdout is not None and self._proc.stderr is not None
        self._channel = Channel(self._proc.stdout.fileno(), self._proc.stdin.fileno())
        threading.Thread(target=self._stderr.read, args=(self._proc.stderr,), name="leakaudit-worker-stderr",
                         daemon=True).start()
        self._phase = "starting the model's worker"

    # --- operations ---------------------------------------------------------------

    def load(self, request: LoadRequest) -> ModelInfo:
        from leakaudit.model.target import detect_format, file_sha256

        path = Path(str(request.path))
        readable = path.is_file() and path.stat().st_size > 0  # else the worker's load says what is wrong
        fmt, sha256 = (detect_format(path), file_sha256(path)) if readable else ("", "")  # the parent's own
        args = {"request": {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(request).items()},
                "seed": self.seed, "threads": self.threads}
        reply = self._call("load", args, "loading the model", reply_bytes=REPLY_MARGIN)
        if reply is None:
            raise AuditInterrupted("stopped while the model was loading")
        info = self._checked(results.model_info, reply.get("info"))
        self._info = self._checked(results.with_provenance, info, request, fmt, sha256)
        return self._info

    def attack(self, request: AttackRequest, callbacks: InversionCallbacks, should_stop: StopCheck,
               checkpoint_dir: Path | None) -> InversionResult:
        args = {"config": asdict(request.config), "prior": list(request.prior) if request.prior is not None else None,
                "informed": request.informed, "init": str(request.init) if request.init else None,
                "resume_tag": request.resume_tag, "checkpoints": checkpoint_dir is not None,
                "resume_state": saved_state(checkpoint_dir)}
        writer = CheckpointWriter(checkpoint_dir, request)
        reply = self._call("attack", args, "the inversion", callbacks, should_stop, ceiling(request.config.budget_s),
                           writer)
        if reply is None:
            return _stopped_result(self.info)
        return self._checked(results.inversion_result, reply.get("result"), self.info)

    def logits(self, images: torch.Tensor) -> torch.Tensor:
        reply = self._call("logits", {"images": images.contiguous()}, "the membership pass",
                           reply_bytes=len(images) * self.info.num_classes * 4 + REPLY_MARGIN)
        if reply is None:
            return torch.zeros(len(images), self.info.num_classes)
        return self._checked(results.logits, reply.get("logits"), len(images), self.info.num_classes)

    def run_control(self, request: ControlRequest, callbacks: InversionCallbacks, should_stop: StopCheck) -> ControlRun:
        args = {"images": request.images.contiguous(), "labels": request.labels.contiguous(),
                "config": asdict(request.config), "seed": request.seed,
                "prior": list(request.prior) if request.prior is not None else None,
                "init": str(request.init) if request.init is not None else None}
        reply = self._call("control", args, "the positive control", callbacks, should_stop,
                           ceiling(request.config.budget_s))
        if reply is None:
            return stopped_control()
        return self._checked(results.control_run, reply.get("control"), self.info)

    def train_references(self, request: ReferenceRequest, callbacks: InversionCallbacks,
                         should_stop: StopCheck, on_model: OnModel | None = None) -> ReferenceRun:
        """``on_model``: each finished model's signals, sent by the worker as it finishes (the checkpoints)."""
        spec = None
        if request.train_fn is not None:
            spec = function_spec(request.train_fn)
            if spec is None:
                raise ConfigError(NOT_IMPORTABLE.format(name=function_name(request.train_fn)))
        args = {"images": request.images.contiguous(), "labels": request.labels.contiguous(),
                "masks": request.masks.contiguous(), "recipe": file_table(request.recipe), "seed": request.seed,
                "init": str(request.init) if request.init is not None else None,
                "model_ids": list(request.model_ids) if request.model_ids is not None else None,
                "train_fn": spec, "report_models": on_model is not None}
        models, n = len(request.masks), len(request.images)
        writer = ReferenceWriter(on_model, n, self.info.num_classes, request.recipe.flips, models)
        reply = self._call("references", args, "the reference models", callbacks, should_stop,
                           ceiling(request.budget_s), writer)
        if reply is None:
            empty = torch.zeros(0, dtype=torch.float64)
            return ReferenceRun(torch.zeros(0, n, self.info.num_classes), None, empty, empty, empty, empty, empty,
                                0, "stopped")
        return self._checked(results.reference_run, reply.get("references"), models, n, self.info.num_classes,
                             request.recipe.flips)

    def close(self) -> None:
        """Ask the worker to leave; end it if it does not. After a stop request it is ended at once: it holds
        nothing the audit keeps, and a stop must not wait for its interpreter to wind down."""
        if self._proc.poll() is None and self.should_stop():
            self._proc.kill()
            self._proc.wait()
        if self._proc.poll() is None:
            try:
                self._channel.send({"kind": "close"})
                self._proc.wait(timeout=KILL_GRACE_S)
            except (ChannelClosed, subprocess.TimeoutExpired):
                self._end()
        for stream in (self._proc.stdin, self._proc.stdout):
            if stream is not None:
                stream.close()
        self._show_stderr()

    # --- the loop -----------------------------------------------------------------

    def _call(self, op: str, args: dict[str, Any], phase: str, callbacks: InversionCallbacks | None = None,
              should_stop: StopCheck | None = None, ceiling_s: float | None = None,
              writer: CheckpointWriter | ReferenceWriter | None = None,
              reply_bytes: int = MODEL_REPLY_BYTES) -> dict[str, Any] | None:
        """Send one request and serve the worker until it replies; None when a stop ended it.

        ``ceiling_s``: the operation's own ceiling; without one it ends where the audit's budget does (plus
        ``BUDGET_MARGIN_S``). Messages keep the stall bound away, never the ceiling. ``reply_bytes``: the most a
        tensor frame may hold during this call.
        """
        self._phase = phase
        self._send({"kind": "call", "op": op, "args": args}, phase)
        if ceiling_s is None and self.deadline is not None:
            ceiling_s = max(0.0, self.deadline - time.monotonic())
        dog = Watchdog(self.stall_s, ceiling_s)
        stop = should_stop or self.should_stop
        while True:
            self._show_stderr()
            if stop() and dog.stop_asked is None:
                if should_stop is None:  # only the attack polls for a stop request: end the others at once
                    self._end()
                    return None
                dog.ask_stop()
                self._send({"kind": "stop"}, phase)
            verdict = dog.verdict()
            if verdict is not None:
                self._end()
                if verdict == "stop":
                    return None
                raise (BudgetCeiling if verdict == "ceiling" else ModelError)(self._stopped_line(verdict, dog))
            if not self._channel.readable(0.1):
                continue
            try:
                message = self._channel.recv(timeout_s=self.stall_s, max_bytes=reply_bytes)
            except ChannelClosed:
                raise ModelError(self._died_line()) from None
            except FrameError as exc:
                self._end()
                raise ModelError(f"the model's worker broke the protocol during {self._phase} ({exc}); "
                                 "stopped it") from None
            dog.heard()
            kind = message["kind"]
            if kind == "result":
                return message
            if kind == "error":
                self._raise(message)
            try:
                self._serve(message, callbacks, writer)
            except results.ReplyError as exc:
                self._end()
                raise ModelError(f"the model's worker sent a malformed message during {self._phase} ({exc}); "
                                 "stopped it") from None

    def _serve(self, message: dict[str, Any], callbacks: InversionCallbacks | None,
               writer: CheckpointWriter | ReferenceWriter | None) -> None:
        kind, name = message["kind"], message.get("name")
        if kind == "confined" and "landlock_abi" not in self.confinement:  # sent before the model is opened, once
            record = message.get("record")
            record = _plain(record) if isinstance(record, dict) else {"worker": True}
            census = record.pop("census", [])
            self.census = census if isinstance(census, list) else []
            self.confinement = record
        elif kind == "warning":
            category = _WARNINGS.get(str(message.get("category")), UserWarning)
            warnings.warn(str(message.get("message", ""))[:2000], category, stacklevel=1)
        elif kind == "checkpoint" and writer is not None:
            writer.write(message)
        elif kind == "event" and callbacks is not None:
            if name == "start" and callbacks.on_start:
                callbacks.on_start(results.integer(message.get("planned")))
            elif name == "phase":
                self._phase = f"the inversion ({terminal_text(str(message.get('phase')))[:80]})"
                if callbacks.on_phase:
                    callbacks.on_phase(str(message.get("phase")))
            elif name == "step" and callbacks.on_step:
                losses = message.get("losses") or {}
                if not isinstance(losses, dict):
                    raise results.ReplyError("losses")
                callbacks.on_step(results.integer(message.get("step")), results.integer(message.get("planned")),
                                  {str(k): float(v) for k, v in losses.items() if isinstance(v, (int, float))})

    def _raise(self, message: dict[str, Any]) -> None:
        text = terminal_text(str(message.get("message", "")))
        kind = message.get("type")
        if kind == "memory":
            limit = f" (limit {limits.gib(self.memory_bytes)} GiB)" if self.memory_bytes else ""
            raise ModelError(f"the model's worker ran out of memory{limit} during {self._phase}")
        if kind in _ERRORS:
            raise _ERRORS[str(kind)](text)
        error = ModelError(f"the model's worker failed during {self._phase}: {text}")
        trace = message.get("traceback")
        if isinstance(trace, str) and trace:  # shown by --debug, under the audit's own traceback
            error.add_note("the worker's traceback:\n" + "\n".join(terminal_text(line) for line in trace.splitlines()))
        raise error

    def _checked(self, check: Callable[..., _T], *values: Any) -> _T:
        """``check`` over the worker's untrusted reply fields (any type: a wrong one is a malformed reply)."""
        try:
            return check(*values)
        except (results.ReplyError, TypeError, ValueError, AttributeError) as exc:
            self._end()
            raise ModelError(f"the model's worker sent a malformed reply during {self._phase} ({exc}); "
                             "stopped it") from None

    def _send(self, message: dict[str, Any], phase: str) -> None:
        try:
            self._channel.send(message)
        except ChannelClosed:
            raise ModelError(self._died_line()) from None

    def _stopped_line(self, verdict: str, dog: Watchdog) -> str:
        if verdict == "stalled":
            return f"the model's forward pass made no progress for {dog.stall_s:.0f} s during {self._phase}; stopped it"
        return (f"the model's worker ran past the budget's ceiling ({dog.ceiling_s:.0f} s) during {self._phase}; "
                "stopped it: the audit is incomplete")

    def _died_line(self) -> str:
        try:
            code = self._proc.wait(timeout=KILL_GRACE_S)
        except subprocess.TimeoutExpired:
            self._end()
            code = self._proc.returncode
        self._stderr_drain()
        how = f"was killed by {signal.Signals(-code).name}" if code is not None and code < 0 else f"exited ({code})"
        last = " | ".join(terminal_text(line)[:SHOWN_LINE_CHARS] for line in self._stderr.last)
        oom = " (the memory limit, or the system running out of memory?)" if code == -signal.SIGKILL else ""
        return f"the model's worker {how}{oom} during {self._phase}" + (f"; its last output: {last}" if last else "")

    def _stderr_drain(self) -> None:
        for _ in range(20):  # the reader thread gets a moment to see the worker's last words
            if self._proc.stderr is None or self._proc.stderr.closed:
                return
            threading.Event().wait(0.01)

    def _end(self) -> None:
        """SIGTERM, then SIGKILL after a grace period."""
        if self._proc.poll() is not None:
            return
        self._proc.terminate()
        try:
            self._proc.wait(timeout=KILL_GRACE_S)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait()

    def _show_stderr(self) -> None:
        for line in self._stderr.take():
            self.on_note(f"model: {terminal_text(line)[:SHOWN_LINE_CHARS]}")



def _stopped_result(info: ModelInfo) -> InversionResult:
    """What a stopped worker leaves: nothing (the audit stops right after)."""
    return InversionResult(images=torch.zeros(0, *info.input_shape), targets=torch.zeros(0, dtype=torch.int64),
                           confidence=torch.zeros(0), mode="stopped", threat_model="", steps=0, planned_steps=0,
                           seconds=0.0, completed_fraction=0.0, complete=False, interrupted=True)



def _plain(value: Any) -> Any:
    """JSON-safe data only (the record goes into the findings document)."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value if isinstance(value, (str, int, float, bool)) or value is None else str(value)



def open_session(settings: AuditSettings, dist: DistContext, threads: int,
                 on_note: Callable[[str], None] | None = None, should_stop: StopCheck | None = None) -> ModelSession:
    """The confined worker where this machine offers confinement, else in-process (refused by --require-confinement)."""
    if isinstance(settings.model, nn.Module):  # the caller's own object: nothing untrusted to confine
        session = InProcessSession("an in-memory module, the caller's own object", dist=dist)
        session.confinement["caller_object"] = True  # nothing from a stranger runs: no note of its own
        return session
    reason = "a distributed run (its collectives need sockets)" if dist.is_distributed else sandbox.unavailable_reason()
    if reason is not None:
        if settings.require_confinement:
            raise UsageError(f"--require-confinement: the model cannot run confined here: {reason}")
        spawn.discard()
        return InProcessSession(reason, dist=dist)
    code_from_cwd = settings.arch is not None or settings.unsafe_pickle or settings.train_fn is not None
    if settings.train_fn is not None and function_spec(settings.train_fn) is None:  # refused before the attack
        raise ConfigError(NOT_IMPORTABLE.format(name=function_name(settings.train_fn)))
    readable = sandbox.readable_paths(settings.model, settings.init, code_from_cwd)
    return ConfinedSession(readable, settings.budget, settings.seed, threads, on_note, should_stop,
                           sandbox.gpu_wanted(settings.device))


def confinement_notes(model: ModelSession) -> list[str]:
    """What every output must say when the model ran unconfined."""
    record = model.confinement
    if record.get("worker") or record.get("caller_object"):
        return []
    return [f"The model ran unconfined, in the audit's own process: {record.get('reason')}. Code in the model file "
            "(a TorchScript forward, an --unsafe-pickle load) could read, write and connect with your permissions."]
