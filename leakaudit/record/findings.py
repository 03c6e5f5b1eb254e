"""One listed finding: a training image and the reconstruction closest to it, with the gate's decision."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Literal

from leakaudit.record.parse import (
    JsonObject, integer, number, optional_flag, optional_number, optional_text, rest, text, thawed,
)

FindingStatus = Literal["fail", "warn", "ok", "ignored"]
BaselineStatus = Literal["new", "persisting", "worse"]
FINDING_STATUSES: tuple[FindingStatus, ...] = ("fail", "warn", "ok", "ignored")
BASELINE_STATUSES: tuple[BaselineStatus, ...] = ("new", "persisting", "worse")

_KNOWN = ("rank", "fingerprint", "path", "class", "class_index", "train_index", "reconstruction_index", "ssim",
          "lpips", "excess_over_holdout_p95", "above_holdout_p99", "status", "status_rule", "baseline_status",
          "previous_ssim")
_BEFORE_STATUS = ("shares_reconstruction_with", "shares_reconstruction_count")  # written between p99 and status


@dataclass(frozen=True)
class MemberScore:
    """One training member's identity and best-match SSIM: what the gate counts, listed or not."""

    fingerprint: str
    ssim: float


@dataclass(frozen=True)
class Finding:
    """One training image and the reconstruction closest to it."""

    rank: int
    fingerprint: str  # stable identity (path and pixels): what a gate ignore entry names
    path: str  # where its input holds it: a file, ``images[17]`` (.npz), ``x.parquet[3]``, ``train[17]`` (in memory)
    class_name: str
    class_index: int
    train_index: int
    reconstruction_index: int
    ssim: float
    lpips: float | None
    excess_over_holdout_p95: float | None
    above_holdout_p99: bool | None
    status: FindingStatus = "ok"  # ok | warn | fail | ignored
    status_rule: str | None = None  # the gate's sentence for the status; None in documents from before it
    baseline_status: BaselineStatus | None = None
    previous_ssim: float | None = None  # with --baseline: the SSIM in the previous audit (None: not listed there)
    compared: bool = field(default=False, repr=False)  # the document holds ``previous_ssim`` (--baseline), null or not
    extra: JsonObject = field(default_factory=lambda: MappingProxyType({}), repr=False)  # fields not modelled

    @property
    def score(self) -> MemberScore:
        return MemberScore(self.fingerprint, float(self.ssim))

    @property
    def shares_reconstruction_with(self) -> tuple[int, ...]:
        """Training indices of other members whose best match is this finding's reconstruction (up to 10)."""
        return tuple(int(i) for i in self.extra.get("shares_reconstruction_with") or ())

    @property
    def flagged(self) -> bool:
        """The gate counted it against the model (fail or warn)."""
        return self.status in ("fail", "warn")

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Finding:
        status = d.get("status", "ok")
        baseline = d.get("baseline_status")
        above = optional_flag(d, "above_holdout_p99")
        return cls(
            rank=integer(d, "rank"), fingerprint=text(d, "fingerprint"), path=text(d, "path"),
            class_name=text(d, "class"), class_index=integer(d, "class_index"), train_index=integer(d, "train_index"),
            reconstruction_index=integer(d, "reconstruction_index"), ssim=number(d, "ssim"),
            lpips=optional_number(d, "lpips"), excess_over_holdout_p95=optional_number(d, "excess_over_holdout_p95"),
            above_holdout_p99=above,
            status=status if status in FINDING_STATUSES else "ok",
            status_rule=optional_text(d, "status_rule"),
            baseline_status=baseline if baseline in BASELINE_STATUSES else None,
            previous_ssim=optional_number(d, "previous_ssim"), compared="previous_ssim" in d,
            extra=rest(d, _KNOWN),
        )

    def to_dict(self) -> dict[str, Any]:
        extra = thawed(self.extra)
        row: dict[str, Any] = {
            "rank": self.rank, "fingerprint": self.fingerprint, "path": self.path, "class": self.class_name,
            "class_index": self.class_index, "train_index": self.train_index,
            "reconstruction_index": self.reconstruction_index, "ssim": self.ssim, "lpips": self.lpips,
            "excess_over_holdout_p95": self.excess_over_holdout_p95, "above_holdout_p99": self.above_holdout_p99,
        }
        row.update({k: extra.pop(k) for k in _BEFORE_STATUS if k in extra})
        row["status"] = self.status
        if self.status_rule is not None:
            row["status_rule"] = self.status_rule
        row["baseline_status"] = self.baseline_status
        row.update(extra)
        if self.compared:
            row["previous_ssim"] = self.previous_ssim
        return row
