"""The most-leaked training images: one ranking over both signals, each row naming the signal that placed it.

The record holds two lists of training images, each in its own order: the
findings (reconstruction: ranked by best-match SSIM, each with the gate's
status against the holdout null) and the most exposed members (membership:
ranked by the strongest attack's score). The rule, the same for every format:

1. An image counts against the model by reconstruction when the gate flagged
   its finding (fail or warn), and by membership when it is among the members
   the strongest attack identifies at the FPR the gate reads (its rank among
   members at most TPR × members) while the gate's membership condition fails
   or warns. An image on both lists is one row that names both signals.
2. When any image counts, only those that count are listed; otherwise the top
   of both lists, as leads and not as findings.
3. The two lists are interleaved, reconstruction first: its first image, then
   membership's first, then the second of each, and so on; an image already
   listed is not listed twice. Neither signal crowds the other out.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from itertools import zip_longest
from typing import Literal

from leakaudit.record import AuditRecord, Finding
from leakaudit.record.membership import ExposedMember

Signal = Literal["reconstruction", "membership"]
MOST_LEAKED = 5  # the rows every format shows first
_STATUS_ORDER = {"fail": 2, "warn": 1}


@dataclass(frozen=True)
class MembershipEvidence:
    """A member's place in the strongest attack's ranking, and whether the gate's membership finding covers it."""

    exposed_index: int  # its position in the record's ``membership_attacks.exposed`` (the report's arrays follow it)
    member: ExposedMember
    rank: int  # 1: the member the strongest attack scores highest
    n_members: int
    attack: str  # the strongest attack, named ("LiRA with 8 reference models")
    fpr: float | None  # the FPR the gate reads at which it identifies members (None: none resolvable)
    status: str  # "fail" / "warn" when identified while the gate's membership condition says so, else "ok"

    @property
    def identified(self) -> bool:
        return self.status in _STATUS_ORDER

    @property
    def text(self) -> str:
        """"membership: LiRA with 8 reference models ranks it 2nd of 100 members (score 3.1), identified at 1% FPR"."""
        found = f", identified at {self.fpr:.1%} FPR" if self.identified and self.fpr is not None else ""
        return (f"membership: {self.attack} ranks it {_ordinal(self.rank)} of {self.n_members} members "
                f"(score {self.member.score:.3g}){found}")


@dataclass(frozen=True)
class LeakedSample:
    """One training image in the most-leaked list, with the evidence of each signal that has it."""

    train_index: int
    placed_by: Signal  # the list whose turn put it at this place
    finding: Finding | None  # reconstruction evidence: its listed finding
    finding_index: int | None  # the finding's position in the record's findings (the report's arrays follow it)
    membership: MembershipEvidence | None

    @property
    def status(self) -> str:
        """The worse of the two signals' statuses: fail, warn, or ok (a lead, not a finding)."""
        statuses = [s for s in (self.finding and self.finding.status, self.membership and self.membership.status) if s]
        return max(statuses, key=lambda s: _STATUS_ORDER.get(s, 0), default="ok")

    @property
    def counts(self) -> tuple[Signal, ...]:
        """The signals that count this image against the model."""
        out: list[Signal] = []
        if self.finding is not None and self.finding.flagged:
            out.append("reconstruction")
        if self.membership is not None and self.membership.identified:
            out.append("membership")
        return tuple(out)

    @property
    def label(self) -> str:
        """Where the image is: its finding's path, else its index among the training images."""
        return self.finding.path if self.finding is not None else f"training image {self.train_index}"

    @property
    def reasons(self) -> tuple[str, ...]:
        """Each signal's evidence in words, the one that placed it first."""
        texts = {"reconstruction": None if self.finding is None else reconstruction_text(self.finding),
                 "membership": None if self.membership is None else self.membership.text}
        order = (self.placed_by, "membership" if self.placed_by == "reconstruction" else "reconstruction")
        return tuple(t for t in (texts[s] for s in order) if t)


def reconstruction_text(finding: Finding) -> str:
    """"reconstruction: SSIM 0.812, LPIPS 0.104, +0.310 over the holdout's p95 (fail)"."""
    parts = [f"SSIM {finding.ssim:.3f}"]
    if finding.lpips is not None:
        parts.append(f"LPIPS {finding.lpips:.3f}")
    if finding.excess_over_holdout_p95 is not None:
        parts.append(f"{finding.excess_over_holdout_p95:+.3f} over the holdout's p95")
    return f"reconstruction: {', '.join(parts)} ({finding.status})"


def _ordinal(n: int) -> str:
    suffix = "th" if 10 <= n % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")
    return f"{n}{suffix}"


def _membership_status(record: AuditRecord) -> str:
    statuses = [c.status for c in record.gate.conditions if c.name in ("membership", "membership_tpr")]
    return max(statuses, key=lambda s: _STATUS_ORDER.get(s, 0), default="ok")


def membership_evidence(record: AuditRecord) -> tuple[MembershipEvidence, ...]:
    """The most exposed members in the strongest attack's order, each marked identified or not (rule 1)."""
    attacks = record.membership_attacks
    if attacks is None or attacks.reference_models == 0 or not attacks.exposed:
        return ()
    strongest = attacks.strongest
    rate = strongest.gate_rate(attacks.gate_fpr)
    identified = 0 if rate is None else int(round(rate.tpr * strongest.n_members))
    gate_status = _membership_status(record) if record.exposure.membership else "ok"
    fpr = None if rate is None else rate.fpr
    return tuple(MembershipEvidence(k, e, k + 1, strongest.n_members, strongest.name, fpr,
                                    gate_status if k < identified and gate_status in _STATUS_ORDER else "ok")
                 for k, e in enumerate(attacks.exposed))


def _interleave(first: Sequence[int], second: Sequence[int]) -> Iterator[tuple[Signal, int]]:
    for a, b in zip_longest(first, second):
        if a is not None:
            yield "reconstruction", a
        if b is not None:
            yield "membership", b


def most_leaked(record: AuditRecord, limit: int = MOST_LEAKED) -> tuple[LeakedSample, ...]:
    """The training images a reviewer should see first, by the module's rule over both signals."""
    evidence = membership_evidence(record)
    findings = {f.train_index: (k, f) for k, f in enumerate(record.findings)}
    exposed = {m.member.index: m for m in evidence}
    by_rec = [f.train_index for f in record.findings]
    by_mem = [m.member.index for m in evidence]
    counted_rec = [i for i in by_rec if findings[i][1].flagged]
    counted_mem = [i for i in by_mem if exposed[i].identified]
    if counted_rec or counted_mem:
        by_rec, by_mem = counted_rec, counted_mem
    rows: list[LeakedSample] = []
    seen: set[int] = set()
    for signal, index in _interleave(by_rec, by_mem):
        if index in seen:
            continue
        seen.add(index)
        k, finding = findings.get(index, (None, None))
        rows.append(LeakedSample(index, signal, finding, k, exposed.get(index)))
        if len(rows) == limit:
            break
    return tuple(rows)


def sample_line(sample: LeakedSample) -> str:
    """One sample in words, as Markdown and the terminal list it: where it is, then each signal's evidence."""
    return f"{sample.label}: {'; '.join(sample.reasons)}"


def list_title(samples: Sequence[LeakedSample]) -> str:
    """What the list holds: images that count against the model (at fail or warn), or leads when none does."""
    statuses = {s.status for s in samples}
    if "fail" in statuses:
        return "Most-leaked training images"
    if "warn" in statuses:
        return "Flagged training images (warn level)"
    membership = any(s.membership is not None for s in samples)
    return ("Best-matched and most exposed training images (none flagged)" if membership
            else "Best-matched training images (none flagged)")


def most_leaked_lines(record: AuditRecord, limit: int = MOST_LEAKED) -> list[str]:
    """The list as plain lines (the terminal's; Markdown escapes the same words): the title, then one per image."""
    samples = most_leaked(record, limit)
    if not samples:
        return []
    return [f"{list_title(samples)}:"] + [f"{k}. {s.status}: {sample_line(s)}" for k, s in enumerate(samples, 1)]
