"""What a decision of the authorizer reads besides the account's state: the reference data in
force, the periods closed so far and the idempotency policy; and the helpers every decision
shares (the body's fingerprint, the fact's id, the limits in force, the period a fact is billed
in)."""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from hashlib import blake2b
from typing import Final, Protocol

from ledger.core import calendar
from ledger.core.reference import Limits, PartitionReference, base_limits
from ledger.core.state import AccountState
from ledger.core.timeline import value_at
from schemas import codec
from schemas.commands import Message
from schemas.facts import event_id_of
from schemas.reference import IspRegistered, PublisherRegistered
from schemas.types import AccountKind

HORIZON_SECONDS_DEFAULT: Final = 90 * calendar.SECONDS_PER_DAY
# Rejections that say nothing about the purchase id itself: they are not remembered, so they
# neither take the id nor answer for it later. `too_late`, like `stale_purchase`, says something
# about the time the purchase came at (its partition's progress), not about the id: the same
# purchase from a producer that caught up is decided afresh; not remembered, it is not an attempt
# either (account velocity), nor does it keep the id from being used.
UNREMEMBERED: Final = frozenset(
    {
        "duplicate_with_different_body",
        "stale_purchase",
        "stale_refund",
        "account_unknown",
        "too_late",
    }
)


@dataclass(frozen=True, slots=True)
class Policy:
    """How long an account remembers purchase ids. A purchase or refund older than the horizon
    (behind the newest one the account has seen) is rejected as stale, so that every id still
    answerable is remembered: idempotency holds within the horizon, and the state is bounded."""

    horizon_seconds: int = HORIZON_SECONDS_DEFAULT

    def __post_init__(self) -> None:
        if self.horizon_seconds < calendar.SECONDS_PER_DAY:
            raise ValueError("the idempotency horizon must be at least one day")


class Progress(Protocol):
    """A partition's progress in event time (issue 14): its watermark, the newest occurred_at of
    the purchases decided in it and the end of every period closed in it, in command order.
    Kept by the caller that decides the partition's commands in order (the batch's
    PartitionSummary, the runner's EventTime), which moves it on (`authorizer.advance`)."""

    watermark_seconds: int


@dataclass(slots=True)
class EventTime:
    watermark_seconds: int = 0


@dataclass(frozen=True)
class Context:
    # The partition's ISPs and publishers, in its command order (issue 15): read through `isp`
    # and `publisher`, as of a command's time and offset.
    reference: PartitionReference
    closed_periods: Mapping[str, Collection[str]] = field(default_factory=dict)  # isp → periods
    policy: Policy = field(default_factory=Policy)
    # An ISP's limits for a kind of account, resolved once per reference record.
    _base_limits: dict[tuple[int, str], tuple[IspRegistered, Limits]] = field(
        default_factory=dict, repr=False, compare=False
    )
    # Read by the decisions, moved on by the caller between them (mutable, unlike the rest).
    progress: Progress = field(default_factory=EventTime, compare=False)

    def isp(self, isp_id: str, seconds: int, origin: int | None) -> IspRegistered | None:
        """The ISP in force at `seconds` for the command at offset `origin` (ledger.core.reference:
        among the versions introduced before it; not before the watermark less the horizon)."""
        floor = self.progress.watermark_seconds - self.policy.horizon_seconds
        return self.reference.isp(isp_id, seconds, origin, floor)

    def publisher(
        self, publisher_id: str, seconds: int, origin: int | None
    ) -> PublisherRegistered | None:
        floor = self.progress.watermark_seconds - self.policy.horizon_seconds
        return self.reference.publisher(publisher_id, seconds, origin, floor)

    def base_limits(self, isp: IspRegistered, kind: AccountKind) -> Limits:
        # Keyed by identity for speed; the record is kept beside its limits, so that an id reused
        # by a newer record after the old one is gone never finds the old limits.
        found = self._base_limits.get((id(isp), kind))
        if found is None or found[0] is not isp:
            found = self._base_limits[id(isp), kind] = (isp, base_limits(isp, kind))
        return found[1]


def fingerprint(command: Message) -> str:
    """Of the body, not of the version that carried it (schemas.codec.body): a purchase sent as
    v1 and again as v2 is the same purchase."""
    return blake2b(codec.body(command), digest_size=16).hexdigest()


def event_id(
    kind: str, key: str, body_fingerprint: str, reason: str | None, origin: int | None
) -> str:
    """Deterministic: the same decision gets the same id again, another decision another id
    (schemas.facts.event_id_of). A rejection the account does not remember is decided afresh each
    time it comes, so each such decision gets its own id (the origin tells them apart; a replay of
    the same command has the same origin)."""
    return event_id_of(
        kind, key, body_fingerprint, reason, origin if reason in UNREMEMBERED else None
    )


def limits_at(state: AccountState, base: Limits, seconds: int) -> Limits:
    return base.overridden(value_at(state.limits, seconds)) if state.limits else base


def billing_period(period: str, closed: Collection[str]) -> tuple[str, str | None]:
    """The period a fact is billed in: its own, or the first open one after it when its own was
    closed already (a late adjustment, pointing back to the period it belongs to)."""
    billed = period
    while billed in closed:
        billed = calendar.next_period(billed)
    return billed, (period if billed != period else None)
