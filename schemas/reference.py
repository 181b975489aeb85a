"""Reference data: ISPs and publishers.

Issue 15: a change of reference data is a barrier command on ledger.commands
(`reference.change_requested.v1`, schemas.commands.ReferenceChangeRequested), sent once to every
partition, so that each partition's decisions see it at one place in their command order and a
replay sees it at the same place. It takes effect at the record's `effective_at` (null: its
`occurred_at`). The record is then also written to the compacted `ledger.reference` (keyed by
`isp:<id>` / `publisher:<id>`): the latest values, for the readers that need no more (the API's
key lookup, names); the workers no longer read it."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

import msgspec
from msgspec import Meta

from schemas.message import LimitOverrides, Message
from schemas.types import Category, Id, Text, Timestamp, VatCategory

BillingDay = Annotated[int, Meta(ge=1, le=28, description="day of the month a period starts")]
# The two shares are bounded so that, whatever ISP sells whatever publisher's content, they add up
# to at most the amount excluding VAT and the platform's fee (the rest) is never negative.
CommissionBp = Annotated[int, Meta(ge=0, le=3_000, description="ISP commission, at most 30 %")]
# Below the shortest billing period (28 days, less an hour when summer time starts in it), so that
# a purchase the lateness admits after a close can only belong to the period just closed
# (README, "Caps that hold").
ALLOWED_LATENESS_SECONDS_MAX = 27 * 86_400
AllowedLatenessSeconds = Annotated[
    int,
    Meta(
        ge=0,
        le=ALLOWED_LATENESS_SECONDS_MAX,
        description="how far behind its partition's event-time watermark a purchase may be, in"
        " seconds (0 to 27 days); absent: no limit",
    ),
]
RevenueShareBp = Annotated[int, Meta(ge=0, le=7_000, description="publisher share, at most 70 %")]


class IspRegistered(Message, frozen=True, tag="isp.registered.v1"):
    """An ISP that bills its subscribers for Internet Plus and keeps a commission.

    Periods run from `billing_day` of one month (00:00 Europe/Paris) to the same day of the next.
    The commission is taken on the amount excluding VAT.

    `allowed_lateness_seconds` (issue 14): a purchase on one of its accounts whose occurred_at is
    older than its partition's event-time watermark by more than this is refused `too_late`.
    Absent (every ISP registered before it existed): no such rule, so old logs replay the same."""

    isp_id: Id
    name: Text
    billing_day: BillingDay
    commission_bp: CommissionBp
    occurred_at: Timestamp
    consumer_limits: LimitOverrides = msgspec.field(default_factory=LimitOverrides)
    enterprise_limits: LimitOverrides = msgspec.field(default_factory=LimitOverrides)
    allowed_lateness_seconds: AllowedLatenessSeconds | None = None
    # Issue 15: when these values take effect (null: at occurred_at). See ReferenceChangeRequested.
    effective_at: Timestamp | None = None


class PublisherRegistered(Message, frozen=True, tag="publisher.registered.v1"):
    """A publisher selling through Internet Plus; its revenue share is on the amount excluding
    VAT. `blocked` stops its sales at once."""

    publisher_id: Id
    name: Text
    category: Category
    revenue_share_bp: RevenueShareBp
    vat_category: VatCategory
    occurred_at: Timestamp
    blocked: bool = False
    # SHA-256 of the publisher's checkout API key (hex); the key itself is never stored.
    api_key_sha256: Annotated[str, Meta(pattern=r"^[0-9a-f]{64}$(?!\n)")] | None = None
    # Issue 15: when these values take effect (null: at occurred_at). See ReferenceChangeRequested.
    effective_at: Timestamp | None = None


ReferenceRecord = IspRegistered | PublisherRegistered
REFERENCE_TYPES: tuple[type[Message], ...] = (IspRegistered, PublisherRegistered)


def effective_at(record: ReferenceRecord) -> datetime:
    """When a record's values take effect."""
    return record.occurred_at if record.effective_at is None else record.effective_at


def reference_key(record: ReferenceRecord) -> str:
    if isinstance(record, IspRegistered):
        return f"isp:{record.isp_id}"
    return f"publisher:{record.publisher_id}"
