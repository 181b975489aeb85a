"""Facts: what the ledger decided. They travel on `ledger.events`, keyed by account_id, are never
changed, only compensated (a refund compensates a purchase), and every money fact carries its
postings, which sum to zero.

`event_id` is a deterministic function of the command, so that a fact emitted again (after a
restart, or for a duplicate request) is identical, id and content, and downstream deduplicates it.
"""

from __future__ import annotations

from typing import Annotated

import msgspec
from msgspec import Meta

from schemas.commands import LimitOverrides, Message
from schemas.types import (
    AccountKind,
    BasisPoints,
    BlockReason,
    Category,
    CommandRejection,
    Fingerprint,
    Id,
    NonNegativeCents,
    PartitionCount,
    PartitionNumber,
    Party,
    PeriodKey,
    PositiveCents,
    PurchaseRejection,
    RefundRejection,
    SignedCents,
    Text,
    Timestamp,
)


class Posting(msgspec.Struct, frozen=True, array_like=False):
    """One leg of a double-entry journal entry, seen from the platform's books: positive is a
    debit (the party owes it), negative a credit (it is owed to the party)."""

    party: Party
    party_id: Id
    amount_cents: SignedCents


# The offset on ledger.commands of the command that first decided a purchase or refund. A fact
# emitted again (the same command replayed after a crash, or a client's duplicate) carries the
# first origin, so it is identical; and since new decisions in a partition have growing origins,
# a consumer keeps "applied through origin N" per partition and skips anything at or below it.
# None outside a stream (the pure core's own tests and tools).
Origin = Annotated[int, Meta(ge=0)]


class PurchaseAuthorized(Message, frozen=True, tag="purchase.authorized.v1"):
    event_id: str
    purchase_id: Id
    account_id: Id
    account_kind: AccountKind
    isp_id: Id
    user_id: Id
    publisher_id: Id
    category: Category
    description: Text
    occurred_at: Timestamp
    amount_cents: PositiveCents  # including VAT
    net_cents: NonNegativeCents
    vat_cents: NonNegativeCents
    vat_rate_bp: BasisPoints
    commission_bp: BasisPoints
    revenue_share_bp: BasisPoints
    billing_period: PeriodKey  # the ISP period it is billed in
    late_for_period: PeriodKey | None  # set when it occurred in a period already closed
    body_fingerprint: Fingerprint
    postings: tuple[Posting, ...]
    origin: Origin | None = None


class PurchaseRejected(Message, frozen=True, tag="purchase.rejected.v1"):
    event_id: str
    purchase_id: Id
    account_id: Id
    user_id: Id
    publisher_id: Id
    amount_cents: PositiveCents
    occurred_at: Timestamp
    reason: PurchaseRejection
    body_fingerprint: Fingerprint
    isp_id: Id | None = None  # None when the account is unknown
    origin: Origin | None = None


class PurchaseRefunded(Message, frozen=True, tag="purchase.refunded.v1"):
    event_id: str
    refund_id: Id
    purchase_id: Id
    account_id: Id
    account_kind: AccountKind
    isp_id: Id
    user_id: Id
    publisher_id: Id
    occurred_at: Timestamp
    amount_cents: PositiveCents  # including VAT, refunded now
    net_cents: NonNegativeCents
    vat_cents: NonNegativeCents
    refunded_before_cents: NonNegativeCents  # of the purchase, by earlier refunds
    purchase_billing_period: PeriodKey  # points back to the purchase it compensates
    billing_period: PeriodKey
    late_for_period: PeriodKey | None
    reason: Text
    body_fingerprint: Fingerprint
    postings: tuple[Posting, ...]
    origin: Origin | None = None


class RefundRejected(Message, frozen=True, tag="refund.rejected.v1"):
    event_id: str
    refund_id: Id
    purchase_id: Id
    account_id: Id
    amount_cents: PositiveCents
    occurred_at: Timestamp
    reason: RefundRejection
    body_fingerprint: Fingerprint
    origin: Origin | None = None


class AccountOpened(Message, frozen=True, tag="account.opened.v1"):
    event_id: str
    command_id: Id
    account_id: Id
    isp_id: Id
    kind: AccountKind
    occurred_at: Timestamp
    company_name: Text | None = None


class AccountBlocked(Message, frozen=True, tag="account.blocked.v1"):
    event_id: str
    command_id: Id
    account_id: Id
    reason: BlockReason
    occurred_at: Timestamp


class AccountUnblocked(Message, frozen=True, tag="account.unblocked.v1"):
    event_id: str
    command_id: Id
    account_id: Id
    occurred_at: Timestamp


class LimitsSet(Message, frozen=True, tag="limits.set.v1"):
    event_id: str
    command_id: Id
    account_id: Id
    limits: LimitOverrides
    occurred_at: Timestamp


class EmployeeAuthorised(Message, frozen=True, tag="employee.authorised.v1"):
    event_id: str
    command_id: Id
    account_id: Id
    user_id: Id
    occurred_at: Timestamp
    budget_cents: NonNegativeCents | None = None


class EmployeeRevoked(Message, frozen=True, tag="employee.revoked.v1"):
    event_id: str
    command_id: Id
    account_id: Id
    user_id: Id
    occurred_at: Timestamp


class CommandRejected(Message, frozen=True, tag="command.rejected.v1"):
    """An admin command that could not be applied (purchases and refunds have their own)."""

    event_id: str
    command_id: Id
    command_type: str
    occurred_at: Timestamp
    reason: CommandRejection
    account_id: Id | None = None
    isp_id: Id | None = None


class PeriodClosed(Message, frozen=True, tag="period.closed.v1"):
    """The close barrier passed one partition. A period is sealed once all `partitions` have it."""

    event_id: str
    command_id: Id
    isp_id: Id
    period: PeriodKey
    partition: PartitionNumber
    partitions: PartitionCount
    occurred_at: Timestamp


MoneyFact = PurchaseAuthorized | PurchaseRefunded
Fact = (
    PurchaseAuthorized
    | PurchaseRejected
    | PurchaseRefunded
    | RefundRejected
    | AccountOpened
    | AccountBlocked
    | AccountUnblocked
    | LimitsSet
    | EmployeeAuthorised
    | EmployeeRevoked
    | CommandRejected
    | PeriodClosed
)

FACT_TYPES: tuple[type[Message], ...] = (
    PurchaseAuthorized,
    PurchaseRejected,
    PurchaseRefunded,
    RefundRejected,
    AccountOpened,
    AccountBlocked,
    AccountUnblocked,
    LimitsSet,
    EmployeeAuthorised,
    EmployeeRevoked,
    CommandRejected,
    PeriodClosed,
)
