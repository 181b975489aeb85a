"""Reference data as the decision function sees it: ISPs, publishers, VAT rates and limits.

Issue 15: a partition's ISPs and publishers are part of its command order (`PartitionReference`).
Each `reference.change_requested.v1` the partition decides adds a **version** of one ISP or
publisher: the record, its effective time, and the offset of the command that introduced it. The
decision of a command at offset `o` and time `t` looks an entity up among the versions introduced
before `o` (never at or after it: a batch decided again after a crash, from an older summary with
a newer stored reference, must see what it saw the first time), and takes the one with the
greatest effective time at or before `t` (two at the same time: the later command's). Before an
entity's first effective time its earliest version applies (its registration: a purchase dated
before the record that registered its publisher was accepted before issue 15, and still is).

Versions are forgotten when no decision can use them any more (`PartitionReference.prune`): a
decision looks up at `max(t, watermark - horizon)` (its partition's event-time watermark, less
the idempotency horizon), so a version superseded before that bound, by a version every later
command sees, is never read again.
"""

from __future__ import annotations

from bisect import insort
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import date
from typing import Final, TypeVar

import msgspec

from ledger.core.calendar import epoch_seconds, paris_date
from schemas.commands import LimitOverrides
from schemas.reference import IspRegistered, PublisherRegistered, ReferenceRecord, effective_at
from schemas.types import AccountKind, VatCategory

# French VAT rates with the day (Paris time) each takes effect, newest last.
# Standard rate: 19.6 % until 2013-12-31, 20 % from 2014-01-01 (loi de finances rectificative
# 2012). Online press: the standard rate until the super-reduced 2.1 % reached it on 2014-02-01
# (loi n° 2014-237 of 27 February 2014, applicable from 1 February 2014).
VAT_SCHEDULE: Final[Mapping[VatCategory, tuple[tuple[date, int], ...]]] = {
    "standard": ((date(1995, 8, 1), 1960), (date(2014, 1, 1), 2000)),
    "press_online": ((date(1995, 8, 1), 1960), (date(2014, 1, 1), 2000), (date(2014, 2, 1), 210)),
}


def vat_rate_bp(category: VatCategory, seconds: int) -> int:
    """The VAT rate in force at an instant (its day in Paris) for a category of content."""
    day = paris_date(seconds)
    rate = None
    for since, bp in VAT_SCHEDULE[category]:
        if day >= since:
            rate = bp
    if rate is None:
        raise ValueError(f"no VAT rate for {category} on {day}")
    return rate


@dataclass(frozen=True, slots=True)
class Limits:
    """Fraud limits in force for one decision, every field resolved."""

    min_purchase_cents: int
    max_purchase_cents: int
    daily_cap_cents: int  # authorized spend per Paris calendar day, net of refunds
    monthly_cap_cents: int  # per billing period; for an enterprise account, the company's cap
    velocity_max_purchases: int  # authorized purchases per user in the sliding window
    velocity_window_seconds: int
    employee_budget_cents: int  # per employee per billing period (enterprise accounts)
    # Attempts (authorized and refused) per account, every user, in the velocity window; None:
    # no such limit (the platform's default, issue 14).
    velocity_max_attempts_per_account: int | None = None

    def overridden(self, overrides: LimitOverrides | None) -> Limits:
        if overrides is None:
            return self
        return Limits(
            min_purchase_cents=_pick(overrides.min_purchase_cents, self.min_purchase_cents),
            max_purchase_cents=_pick(overrides.max_purchase_cents, self.max_purchase_cents),
            daily_cap_cents=_pick(overrides.daily_cap_cents, self.daily_cap_cents),
            monthly_cap_cents=_pick(overrides.monthly_cap_cents, self.monthly_cap_cents),
            velocity_max_purchases=_pick(
                overrides.velocity_max_purchases, self.velocity_max_purchases
            ),
            velocity_window_seconds=_pick(
                overrides.velocity_window_seconds, self.velocity_window_seconds
            ),
            employee_budget_cents=_pick(
                overrides.employee_budget_cents, self.employee_budget_cents
            ),
            velocity_max_attempts_per_account=(
                self.velocity_max_attempts_per_account
                if overrides.velocity_max_attempts_per_account is None
                else overrides.velocity_max_attempts_per_account
            ),
        )


def _pick(value: int | None, default: int) -> int:
    return default if value is None else value


# The platform's defaults. The per-purchase band is the real platform's in 2006 (€0.15 to €15).
# The caps are ours: the average basket was €2.66 (SUMMARY.md), so €30 a day and €100 a billing
# month leave a heavy household ~35 purchases a month while bounding what a stolen session costs.
CONSUMER_DEFAULTS: Final = Limits(
    min_purchase_cents=15,
    max_purchase_cents=1_500,
    daily_cap_cents=3_000,
    monthly_cap_cents=10_000,
    velocity_max_purchases=5,
    velocity_window_seconds=60,
    employee_budget_cents=0,
)
ENTERPRISE_DEFAULTS: Final = Limits(
    min_purchase_cents=15,
    max_purchase_cents=1_500,
    daily_cap_cents=50_000,
    monthly_cap_cents=500_000,
    velocity_max_purchases=10,
    velocity_window_seconds=60,
    employee_budget_cents=20_000,
)
VELOCITY_WINDOW_MAX_SECONDS: Final = 86_400  # bounds the timestamps an account keeps


@dataclass(frozen=True)
class Reference:
    """The latest ISPs and publishers, whenever they take effect: the compacted view
    (ledger.kafka.reference, for the API), and what a LocalAuthorizer may start from."""

    isps: Mapping[str, IspRegistered] = field(default_factory=dict)
    publishers: Mapping[str, PublisherRegistered] = field(default_factory=dict)

    def with_record(self, record: ReferenceRecord) -> Reference:
        if isinstance(record, IspRegistered):
            return Reference({**self.isps, record.isp_id: record}, self.publishers)
        return Reference(self.isps, {**self.publishers, record.publisher_id: record})

    def records(self) -> list[ReferenceRecord]:
        return [*self.isps.values(), *self.publishers.values()]

    @classmethod
    def of(cls, records: list[ReferenceRecord]) -> Reference:
        reference = cls()
        for record in records:
            reference = reference.with_record(record)
        return reference


def base_limits(isp: IspRegistered, kind: AccountKind) -> Limits:
    if kind == "enterprise":
        return ENTERPRISE_DEFAULTS.overridden(isp.enterprise_limits)
    return CONSUMER_DEFAULTS.overridden(isp.consumer_limits)


R = TypeVar("R", IspRegistered, PublisherRegistered)
# Offset of a version given before any command (a LocalAuthorizer's starting reference): every
# command sees it.
BEFORE_EVERY_COMMAND: Final = -1


class ReferenceVersion(msgspec.Struct, array_like=True, frozen=True):
    """One version of an ISP or a publisher in a partition. Stored (msgpack, array-like): new
    fields only at the end, with defaults."""

    effective_seconds: int
    offset: int  # of the reference command that introduced it in its partition
    record: ReferenceRecord

    def rank(self) -> tuple[int, int]:
        return self.effective_seconds, self.offset


Versions = list[ReferenceVersion]


class PartitionReference(msgspec.Struct, array_like=True):
    """A partition's ISPs and publishers: per entity, its versions in (effective time, offset)
    order. Kept by the caller of the batch under its own key in the accounts table
    (ledger.core.batch.reference_key), by a LocalAuthorizer in memory."""

    isps: dict[str, Versions] = msgspec.field(default_factory=dict)
    publishers: dict[str, Versions] = msgspec.field(default_factory=dict)
    # Issue 16: feature → offset of the upgrade command (ledger.upgrade_requested.v1) that first
    # activated it in this partition. Never pruned: a handful of entries, read by every decision.
    features: dict[str, int] = msgspec.field(default_factory=dict)

    @classmethod
    def of(cls, records: Iterable[ReferenceRecord] | Reference) -> PartitionReference:
        """Records every command sees (a test's or a benchmark's starting reference)."""
        if isinstance(records, Reference):
            records = records.records()
        reference = cls()
        for record in records:
            reference.apply(record, BEFORE_EVERY_COMMAND)
        return reference

    def copy(self) -> PartitionReference:
        """A copy a batch may change (the lists are; the versions are frozen)."""
        return PartitionReference(
            {k: list(v) for k, v in self.isps.items()},
            {k: list(v) for k, v in self.publishers.items()},
            dict(self.features),
        )

    def activate(self, feature: str, offset: int) -> bool:
        """Record the upgrade command at `offset` that activates `feature`. False when nothing
        changed: the feature was activated already (by this command decided again, or by an
        earlier one, whose place stays: a later activation moves nothing)."""
        if feature in self.features:
            return False
        self.features[feature] = offset
        return True

    def active(self, feature: str, before: int | None) -> bool:
        """Whether the decision of the command at offset `before` uses `feature`: activated by a
        command before it (None: a decision outside a stream, which sees every activation)."""
        at = self.features.get(feature)
        return at is not None and (before is None or at < before)

    def isp(
        self, isp_id: str, seconds: int, before: int | None = None, floor_seconds: int = 0
    ) -> IspRegistered | None:
        """The ISP in force at `seconds` (at least `floor_seconds`) for a command at offset
        `before` (None: every version received)."""
        versions = self.isps.get(isp_id)
        if versions is None:
            return None
        found = _in_force(versions, max(seconds, floor_seconds), before)
        return found if found is None or isinstance(found, IspRegistered) else None

    def publisher(
        self, publisher_id: str, seconds: int, before: int | None = None, floor_seconds: int = 0
    ) -> PublisherRegistered | None:
        versions = self.publishers.get(publisher_id)
        if versions is None:
            return None
        found = _in_force(versions, max(seconds, floor_seconds), before)
        return found if found is None or isinstance(found, PublisherRegistered) else None

    def apply(self, record: ReferenceRecord, offset: int) -> bool:
        """Add the version a reference command at `offset` introduces. False when nothing changed:
        the same command decided again (a version of that offset is there), or a record equal to
        the one in force from the same time (it would change no lookup)."""
        if isinstance(record, IspRegistered):
            versions = self.isps.setdefault(record.isp_id, [])
        else:
            versions = self.publishers.setdefault(record.publisher_id, [])
        if offset != BEFORE_EVERY_COMMAND and any(v.offset == offset for v in versions):
            return False
        version = ReferenceVersion(epoch_seconds(effective_at(record)), offset, record)
        same_time = [v for v in versions if v.effective_seconds == version.effective_seconds]
        if same_time and same_time[-1].record == record and same_time[-1].offset <= offset:
            return False
        insort(versions, version, key=ReferenceVersion.rank)
        return True

    def prune(self, before: int, cutoff_seconds: int) -> None:
        """Forget the versions no command at or after offset `before` can read: those ranked
        below the newest version introduced before `before` and effective at or before
        `cutoff_seconds`, when every such command looks up at or after that cutoff (the caller
        passes its watermark less the horizon, as of `before`)."""
        for table in (self.isps, self.publishers):
            for versions in table.values():
                keep_from = 0
                for index, version in enumerate(versions):
                    if version.effective_seconds > cutoff_seconds:
                        break
                    if version.offset < before:
                        keep_from = index
                if keep_from:
                    del versions[:keep_from]

    def latest(self) -> Reference:
        """The latest version of each entity by effective time (a view for tests and tools)."""
        return Reference(
            {k: _record(v[-1], IspRegistered) for k, v in self.isps.items() if v},
            {k: _record(v[-1], PublisherRegistered) for k, v in self.publishers.items() if v},
        )


def _record(version: ReferenceVersion, kind: type[R]) -> R:
    record = version.record
    assert isinstance(record, kind)
    return record


def _in_force(versions: Versions, seconds: int, before: int | None) -> ReferenceRecord | None:
    if len(versions) == 1:  # nearly always: one version, the registration
        only = versions[0]
        return only.record if before is None or only.offset < before else None
    best: ReferenceVersion | None = None
    first: ReferenceVersion | None = None
    for version in versions:
        if before is not None and version.offset >= before:
            continue
        if first is None:
            first = version
        if version.effective_seconds > seconds:
            break
        best = version
    chosen = best or first
    return None if chosen is None else chosen.record


_reference_encoder = msgspec.msgpack.Encoder()
_reference_decoder = msgspec.msgpack.Decoder(PartitionReference)


def encode_reference(reference: PartitionReference) -> bytes:
    return _reference_encoder.encode(reference)


def decode_reference(raw: bytes | None) -> PartitionReference:
    return PartitionReference() if raw is None else _reference_decoder.decode(raw)
