"""Reference data on `ledger.reference` (compacted, keyed by `isp:<id>` / `publisher:<id>`):
ISPs and publishers, read by every worker into a global table."""

from __future__ import annotations

from typing import Annotated

import msgspec
from msgspec import Meta

from schemas.commands import LimitOverrides, Message
from schemas.types import Category, Id, Text, Timestamp, VatCategory

BillingDay = Annotated[int, Meta(ge=1, le=28, description="day of the month a period starts")]
# The two shares are bounded so that, whatever ISP sells whatever publisher's content, they add up
# to at most the amount excluding VAT and the platform's fee (the rest) is never negative.
CommissionBp = Annotated[int, Meta(ge=0, le=3_000, description="ISP commission, at most 30 %")]
RevenueShareBp = Annotated[int, Meta(ge=0, le=7_000, description="publisher share, at most 70 %")]


class IspRegistered(Message, frozen=True, tag="isp.registered.v1"):
    """An ISP that bills its subscribers for Internet Plus and keeps a commission.

    Periods run from `billing_day` of one month (00:00 Europe/Paris) to the same day of the next.
    The commission is taken on the amount excluding VAT."""

    isp_id: Id
    name: Text
    billing_day: BillingDay
    commission_bp: CommissionBp
    occurred_at: Timestamp
    consumer_limits: LimitOverrides = msgspec.field(default_factory=LimitOverrides)
    enterprise_limits: LimitOverrides = msgspec.field(default_factory=LimitOverrides)


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


ReferenceRecord = IspRegistered | PublisherRegistered
REFERENCE_TYPES: tuple[type[Message], ...] = (IspRegistered, PublisherRegistered)


def reference_key(record: ReferenceRecord) -> str:
    if isinstance(record, IspRegistered):
        return f"isp:{record.isp_id}"
    return f"publisher:{record.publisher_id}"
