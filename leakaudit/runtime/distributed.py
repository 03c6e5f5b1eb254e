"""The collectives one audit needs across several processes (and machines), over ``torch.distributed``.

``torchrun --nproc-per-node N -m leakaudit run …`` starts N copies of the CLI;
each builds a ``DistContext`` from torchrun's environment and the pipeline uses
it at the few places where ranks must cooperate:

- **inversion, data-parallel**: every rank draws the full per-step batch from
  the shared seed (so all random streams stay in lockstep), keeps its
  class-balanced share (``batch_share``), and the generator's gradients are
  summed with each rank's share as its weight (``average_gradients``), so the
  step equals the full-batch step for every per-sample loss term. Stop and
  budget decisions are agreed every step (``any_flags``): ranks never disagree
  on how many collectives follow.
- **matching, sharded**: rank r scores the candidates against its contiguous,
  chunk-aligned share of the images (``shard``); the shards' results are
  concatenated per image and merged per candidate
  (``leakaudit.matching.sharded.sharded_best_matches``).
  Every pair is scored by the same kernel on the same chunk as in one process,
  so the merged result equals the single-process result exactly.
- **reference models (membership), by model**: model i trains on rank
  i % world, seeded by its number, so it is the model one process trains;
  rank 0 sends the list of models to train (those no checkpoint holds) and
  gathers every rank's models (``all_gather_object``;
  ``leakaudit.pipeline.membership.train_share``). The other ranks wait for it
  while rank 0 alone runs the positive control.
- **outputs**: rank 0 alone writes, after the last collective (the gather of
  the reference models, or of the matching results without them), i.e. after
  every rank has finished its share.

Failure: a rank that raises exits 2 with its rank in the message; torchrun
then stops the others, and a rank blocked in a collective with a dead peer
gets an error (or the process-group timeout, ``LEAKAUDIT_DIST_TIMEOUT``
seconds) instead of hanging. Since no rank reaches the final gather, no report
is written. ``torchrun`` itself exits 1 for any failed worker, whatever its
code; ``leakaudit.cli.launcher.launch`` runs the same elastic agent and maps the workers' codes back
to leakaudit's (0 passed, 1 gate failed, 2 error naming the rank, 130).

One process not launched by torchrun gets ``DistContext.single()``, under which
every helper here is the identity: the single-process path is unchanged.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import socket
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.distributed as tdist

from leakaudit.errors import LeakAuditError

ENV_TIMEOUT = "LEAKAUDIT_DIST_TIMEOUT"
DEFAULT_TIMEOUT_S = 1800.0  # torch's own default; a hung (not dead) peer is detected after this


class DistributedError(LeakAuditError):
    """A rank failed, died or stopped answering; the whole run ends (exit 2)."""


class PeerLostError(DistributedError):
    """This rank is fine but lost its peers: a consequence of another rank's failure, not its cause."""


def rank_prefix() -> str:
    """``"rank 1 of 2: "`` under torchrun with several processes, else ``""``: for error lines."""
    try:
        world = int(os.environ.get("WORLD_SIZE", "1"))
        rank = int(os.environ.get("RANK", "0"))
    except ValueError:
        return ""
    return f"rank {rank} of {world}: " if world > 1 else ""


@dataclass
class DistContext:
    """Who this process is in the run, and the collectives the pipeline needs.

    ``stage`` names what the ranks are doing, for error messages.
    """

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    backend: str | None = None
    stage: str = "the run"
    timeout_s: float = DEFAULT_TIMEOUT_S
    _owns_group: bool = False

    # --- construction --------------------------------------------------------

    @classmethod
    def single(cls, device: str | torch.device | None = None) -> DistContext:
        """One process: every collective is the identity."""
        return cls(device=torch.device(device) if device is not None else _default_device(0))

    @classmethod
    def from_environment(cls, device: str | None = None, timeout_s: float | None = None) -> DistContext:
        """Join the process group torchrun describes (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``,
        ``MASTER_ADDR``/``MASTER_PORT``); without them, or with one process, ``single``.

        Device: ``device`` if given with an index; "cuda" or None on a machine
        with GPUs means ``cuda:LOCAL_RANK`` (one GPU per process, backend
        NCCL); otherwise the CPU with backend gloo.
        """
        env = os.environ
        try:
            world = int(env.get("WORLD_SIZE", "1"))
            rank = int(env.get("RANK", "0"))
            local_rank = int(env.get("LOCAL_RANK", "0"))
        except ValueError as exc:
            raise DistributedError(f"torchrun's environment is malformed: {exc}") from None
        if world <= 1:
            return cls(device=_resolve_device(device, 0))
        missing = [name for name in ("MASTER_ADDR", "MASTER_PORT") if name not in env]
        if missing:
            raise DistributedError(f"WORLD_SIZE={world} but {' and '.join(missing)} not set: launch with torchrun")
        timeout = timeout_s if timeout_s is not None else _env_timeout()
        dev = _resolve_device(device, local_rank)
        backend = "nccl" if dev.type == "cuda" else "gloo"
        if dev.type == "cuda":
            torch.cuda.set_device(dev)
        own = False
        if not tdist.is_initialized():
            _import_before_joining()
            try:
                tdist.init_process_group(backend=backend, timeout=dt.timedelta(seconds=timeout),
                                         device_id=dev if dev.type == "cuda" else None)  # None: torch's default
            except Exception as exc:  # rendezvous failures: wrong address, port in use, peers missing
                raise DistributedError(
                    f"cannot join the process group at "
                    f"{env['MASTER_ADDR']}:{env['MASTER_PORT']} ({backend}): {exc}"
                ) from None
            own = True
        return cls(rank=rank, world_size=world, local_rank=local_rank, device=dev, backend=backend,
                   timeout_s=timeout, _owns_group=own)

    def close(self, synchronise: bool = True) -> None:
        """Leave the process group (only if this context joined it).

        ``synchronise``: first wait until every rank is leaving, so that no rank
        closes its connections while a peer still uses them (a group that
        outlives this call aborts the process at exit: see
        ``_import_before_joining``). Off on an
        error path, where a peer may never arrive; a peer lost here is ignored,
        since the run's work is already done.
        """
        if self._owns_group:
            if tdist.is_initialized():
                if synchronise and self.is_distributed:
                    with contextlib.suppress(LeakAuditError, RuntimeError):
                        self.barrier()
                tdist.destroy_process_group()
            self._owns_group = False

    # --- identity ---------------------------------------------------------------

    @property
    def is_distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Rank 0: the only rank that observes progress and writes outputs."""
        return self.rank == 0

    def describe(self) -> str:
        """``"rank 1 of 2 (local rank 1 on host)"``: for messages and notes."""
        if not self.is_distributed:
            return "single process"
        return f"rank {self.rank} of {self.world_size} (local rank {self.local_rank} on {socket.gethostname()})"

    def _collective(self, collective: Any, /, *args: Any, **kwargs: Any) -> Any:
        """Run one ``torch.distributed`` collective; a lost peer becomes a ``PeerLostError`` naming the stage."""
        with self.in_stage(self.stage):
            return collective(*args, **kwargs)

    @contextlib.contextmanager
    def in_stage(self, name: str) -> Iterator[None]:
        """Name the stage; a collective failing inside it becomes a ``PeerLostError`` naming the stage."""
        previous, self.stage = self.stage, name
        try:
            yield
        except LeakAuditError:
            raise
        except RuntimeError as exc:  # gloo/NCCL: peer closed the connection, timeout, aborted communicator
            if not self.is_distributed or not _is_comm_error(exc):
                raise
            raise PeerLostError(
                f"lost contact with the other ranks during {name} on {socket.gethostname()} "
                f"(another rank failed, was stopped, or did not answer within {self.timeout_s:.0f} s): "
                f"{_first_line(exc)}"
            ) from exc
        finally:
            self.stage = previous

    # --- sharding -------------------------------------------------------------------

    def shard(self, n: int, align: int = 1) -> slice:
        """This rank's contiguous share of ``n`` items, in whole blocks of ``align``.

        Aligned shards let every rank process exactly the chunks one process
        would (same images, same shapes), which is why sharded matching is
        bitwise equal to single-process matching. Shares differ by at most one
        block; a rank may get none when there are fewer blocks than ranks.
        """
        blocks = -(-n // max(align, 1))
        per, extra = divmod(blocks, self.world_size)
        start_block = self.rank * per + min(self.rank, extra)
        stop_block = start_block + per + (1 if self.rank < extra else 0)
        return slice(min(n, start_block * align), min(n, stop_block * align))

    def batch_share(self, targets: torch.Tensor) -> torch.Tensor:
        """Positions (sorted, int64) of a generator batch that this rank computes.

        Each class's copies are dealt round-robin, continuing from class to
        class, so every rank sees every class (when the batch holds at least W
        copies of it) and shares differ by at most one sample. (Whole classes
        per rank was measured slower to converge: docs/distributed.md.)
        """
        n = targets.shape[0]
        if not self.is_distributed:
            return torch.arange(n, device=targets.device)
        if n < self.world_size:
            raise DistributedError(
                f"a generator batch of {n} cannot be shared by {self.world_size} ranks; "
                "raise [tool.leakaudit.inversion] batch_per_class (or use fewer processes)"
            )
        order = torch.argsort(targets, stable=True)  # class-major
        dealt = torch.arange(n, device=targets.device).remainder(self.world_size) == self.rank
        return order[dealt].sort().values

    # --- collectives ------------------------------------------------------------------

    def _comm_device(self) -> torch.device:
        return self.device if self.backend == "nccl" else torch.device("cpu")

    def any_flags(self, *flags: bool) -> tuple[bool, ...]:
        """For each flag: is it set on any rank? One small all-reduce; how ranks agree to stop."""
        if not self.is_distributed:
            return tuple(bool(f) for f in flags)
        t = torch.tensor([int(bool(f)) for f in flags], dtype=torch.int32, device=self._comm_device())
        self._collective(tdist.all_reduce, t, op=tdist.ReduceOp.MAX)
        return tuple(bool(v) for v in t.tolist())

    def any_true(self, flag: bool) -> bool:
        return self.any_flags(flag)[0]

    def barrier(self) -> None:
        if self.is_distributed:
            self.any_flags(False)  # an all-reduce, not barrier(): gloo/NCCL both honour its timeout

    def all_gather_object(self, obj: Any) -> list[Any]:
        """Every rank's ``obj``, in rank order, on every rank."""
        if not self.is_distributed:
            return [obj]
        out: list[Any] = [None] * self.world_size
        self._collective(tdist.all_gather_object, out, obj)
        return out

    def broadcast_tensor(self, tensor: torch.Tensor, src: int = 0) -> torch.Tensor:
        """Rank ``src``'s tensor (same shape and dtype on every rank), on every rank."""
        if not self.is_distributed:
            return tensor
        buf = tensor.detach().to(self._comm_device()).contiguous().clone()
        self._collective(tdist.broadcast, buf, src=src)
        return buf.to(tensor.device)

    def gather_rows(self, rows: torch.Tensor, positions: torch.Tensor, total: int) -> torch.Tensor:
        """Reassemble a tensor of ``total`` rows of which this rank holds ``rows`` at ``positions``."""
        if not self.is_distributed:
            return rows
        parts = self.all_gather_object((positions.cpu(), rows.detach().cpu()))
        out = torch.empty((total, *rows.shape[1:]), dtype=rows.dtype)
        for pos, part in parts:
            out[pos] = part
        return out.to(rows.device)

    def average_gradients(self, params: Sequence[torch.Tensor], weight: float) -> None:
        """Replace every gradient by Σ_r weight_r · grad_r over ranks (one flat all-reduce).

        With weight = this rank's share of the batch (n_r / B) the result is
        the gradient of the full-batch mean; a parameter without a gradient
        counts as zero. One flat buffer instead of one call per tensor: gloo
        pays a round trip per call, and the generator has dozens of tensors.
        """
        if not self.is_distributed:
            return
        params = [p for p in params if p.requires_grad]
        if not params:
            return
        flat = torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1) for p in params])
        flat = flat.to(self._comm_device()).mul_(weight)
        self._collective(tdist.all_reduce, flat, op=tdist.ReduceOp.SUM)
        offset = 0
        for p in params:
            n = p.numel()
            p.grad = flat[offset: offset + n].view_as(p).to(p.device).clone()
            offset += n

    def sync_buffers(self, module: torch.nn.Module) -> None:
        """Average floating-point buffers (BatchNorm running statistics) across ranks.

        In training mode each rank's BatchNorm tracks its own share of the
        batch; averaging the exponential moving averages equals the average of
        every step's statistics, and puts every rank's generator in the same
        state for sampling (evaluation mode reads these buffers).
        """
        if not self.is_distributed:
            return
        buffers = [b for b in module.buffers() if b.is_floating_point()]
        if not buffers:
            return
        flat = torch.cat([b.detach().reshape(-1) for b in buffers]).to(self._comm_device())
        self._collective(tdist.all_reduce, flat, op=tdist.ReduceOp.SUM)
        flat /= self.world_size
        offset = 0
        for b in buffers:
            n = b.numel()
            b.copy_(flat[offset: offset + n].view_as(b))
            offset += n


def _import_before_joining() -> None:
    """Import ``torch._dynamo`` (the optimiser's first step does) before the process group exists.

    Imported after ``init_process_group``, it keeps references to the default
    group, so ``destroy_process_group`` no longer frees it: gloo's worker
    threads then run on into interpreter shutdown, where one that releases a
    finished collective's tensors aborts the process (SIGABRT) after the report
    is written. Imported first, it holds none and ``close`` ends those threads.
    """
    import torch._dynamo  # noqa: F401


def _is_comm_error(exc: BaseException) -> bool:
    """A failure of the transport between ranks, as opposed to a bug in the computation."""
    if isinstance(exc, getattr(tdist, "DistError", ())):
        return True
    text = str(exc).lower()
    return any(word in text for word in ("gloo", "nccl", "connection", "timed out", "timeout", "socket"))


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def _env_timeout() -> float:
    raw = os.environ.get(ENV_TIMEOUT)
    if raw is None:
        return DEFAULT_TIMEOUT_S
    try:
        value = float(raw)
    except ValueError:
        raise DistributedError(f"{ENV_TIMEOUT}={raw!r} is not a number of seconds") from None
    if value <= 0:
        raise DistributedError(f"{ENV_TIMEOUT} must be positive, got {raw}")
    return value


def _default_device(local_rank: int) -> torch.device:
    return torch.device(f"cuda:{local_rank}") if torch.cuda.is_available() else torch.device("cpu")


def _resolve_device(device: str | None, local_rank: int) -> torch.device:
    if device is None:
        return _default_device(local_rank)
    try:
        dev = torch.device(device)
    except RuntimeError:
        raise DistributedError(f"--device {device}: not a device torch knows (cpu, cuda, cuda:N, mps, ...)") from None
    if dev.type == "cuda" and dev.index is None:
        if not torch.cuda.is_available():
            raise DistributedError("--device cuda but no GPU is visible to this process")
        return torch.device(f"cuda:{local_rank % torch.cuda.device_count()}")
    _check_usable(dev, device)
    return dev


def _check_usable(dev: torch.device, asked: str) -> None:
    """A device that is named but absent fails here, in one line, before any work: not as a traceback at the first
    tensor placed on it, minutes into the audit."""
    if dev.type == "cpu":
        return
    try:
        torch.empty(0, device=dev)
    except (RuntimeError, AssertionError) as exc:  # torch says "not compiled with CUDA" by an assertion
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise DistributedError(f"--device {asked} is not usable in this process: {reason}") from None
