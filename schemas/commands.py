"""Commands: requests that the authorizer may reject. All travel on `ledger.commands`, keyed by
account_id (a period close is sent once to every partition, see PeriodCloseRequested).

Each type is tagged `<name>.v<version>` in the `type` field. Rules of evolution (STYLE.md §3): a
new field gets a default; a field never changes type; a change that cannot follow these rules is
a new version, a new class, and the old one still decodes.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Final, Literal

# Re-exported: every module imported them from here before schemas.message existed.
from schemas.message import LimitOverrides as LimitOverrides  # noqa: PLC0414
from schemas.message import Message as Message  # noqa: PLC0414
from schemas.reference import ReferenceRecord, reference_key
from schemas.types import (
    AccountKind,
    BlockReason,
    Category,
    Digest,
    Id,
    NonNegativeCents,
    PartitionCount,
    PartitionNumber,
    PeriodKey,
    PositiveCents,
    Text,
    Timestamp,
)


class PurchaseRequested(Message, frozen=True, tag="purchase.requested.v2", omit_defaults=True):
    """A user clicked "Internet Plus" at a publisher's checkout. purchase_id is the client's
    idempotency key: the same id with the same body gets the same decision again.

    v2 adds `content_id`, the publisher's reference of what was bought (optional, left out when
    null). A v1 purchase is read as a v2 one without it (`upcast`): the same body, whichever
    version carried it, is the same purchase.

    `consent` (issue 14) is the SHA-256 of the assertion with which the subscriber's ISP vouched
    that the subscriber confirmed this payment (docs/design/checkout.md); the checkout API sets
    it, the operators' trusted feeds leave it out. Left out when null, so old bytes are
    unchanged."""

    purchase_id: Id
    account_id: Id
    user_id: Id
    publisher_id: Id
    amount_cents: PositiveCents  # including VAT
    category: Category
    description: Text
    occurred_at: Timestamp
    content_id: Id | None = None
    consent: Digest | None = None

    def downcast(self) -> PurchaseRequestedV1 | None:
        """The v1 purchase this one equals, if any (none once it has a content_id or consent)."""
        if self.content_id is not None or self.consent is not None:
            return None
        return PurchaseRequestedV1(
            purchase_id=self.purchase_id, account_id=self.account_id, user_id=self.user_id,
            publisher_id=self.publisher_id, amount_cents=self.amount_cents,
            category=self.category, description=self.description, occurred_at=self.occurred_at,
        )  # fmt: skip


class PurchaseRequestedV1(Message, frozen=True, tag="purchase.requested.v1"):
    """The first version of PurchaseRequested, still read from the log and from older
    producers; never written by this code."""

    purchase_id: Id
    account_id: Id
    user_id: Id
    publisher_id: Id
    amount_cents: PositiveCents
    category: Category
    description: Text
    occurred_at: Timestamp

    def upcast(self) -> PurchaseRequested:
        return PurchaseRequested(
            purchase_id=self.purchase_id, account_id=self.account_id, user_id=self.user_id,
            publisher_id=self.publisher_id, amount_cents=self.amount_cents,
            category=self.category, description=self.description, occurred_at=self.occurred_at,
        )  # fmt: skip


class RefundRequested(Message, frozen=True, tag="refund.requested.v1"):
    refund_id: Id
    purchase_id: Id
    account_id: Id
    amount_cents: PositiveCents  # including VAT; partial refunds add up to at most the purchase
    reason: Text
    occurred_at: Timestamp


class AccountOpenRequested(Message, frozen=True, tag="account.open_requested.v1"):
    """A subscriber registered for Internet Plus with its ISP (consumer), or a company for
    Internet Plus Pro (enterprise)."""

    command_id: Id
    account_id: Id
    isp_id: Id
    kind: AccountKind
    occurred_at: Timestamp
    company_name: Text | None = None


class AccountBlockRequested(Message, frozen=True, tag="account.block_requested.v1"):
    command_id: Id
    account_id: Id
    reason: BlockReason
    occurred_at: Timestamp


class AccountUnblockRequested(Message, frozen=True, tag="account.unblock_requested.v1"):
    command_id: Id
    account_id: Id
    occurred_at: Timestamp


class LimitsSetRequested(Message, frozen=True, tag="limits.set_requested.v1"):
    command_id: Id
    account_id: Id
    limits: LimitOverrides
    occurred_at: Timestamp


class EmployeeAuthoriseRequested(Message, frozen=True, tag="employee.authorise_requested.v1"):
    """An Internet Plus Pro company authorises an employee to buy, with a budget per billing
    period (null: the limits' employee_budget_cents)."""

    command_id: Id
    account_id: Id
    user_id: Id
    occurred_at: Timestamp
    budget_cents: NonNegativeCents | None = None


class EmployeeRevokeRequested(Message, frozen=True, tag="employee.revoke_requested.v1"):
    command_id: Id
    account_id: Id
    user_id: Id
    occurred_at: Timestamp


def _check_barrier(partition: int, partitions: int) -> None:
    """A barrier command (a close, the holds' expiry) names its partition among all of them."""
    if partition >= partitions:
        raise ValueError("partition must be below partitions")


class PeriodCloseRequested(Message, frozen=True, tag="period.close_requested.v1"):
    """Close an ISP's billing period. Sent once to each of the `partitions` partitions of
    ledger.commands: each copy is a barrier in its partition's order, so that every fact before it
    is in the period and every later fact of that period is a late adjustment, the same way in a
    replay as live."""

    command_id: Id
    isp_id: Id
    period: PeriodKey
    partition: PartitionNumber
    partitions: PartitionCount
    occurred_at: Timestamp

    def __post_init__(self) -> None:
        _check_barrier(self.partition, self.partitions)


# A hold lives at most a week (docs/design/checkout.md: `hold_seconds` 60 s to 7 days).
HOLD_DURATION_MAX: Final = timedelta(days=7)


class PaymentHoldRequested(Message, frozen=True, tag="payment.hold_requested.v1"):
    """A subscriber confirmed a payment that the publisher captures later: the cap room is taken
    now (`payment.reserved.v1`), the money moves only at capture. `occurred_at` is the platform's
    time of the confirmation, never the publisher's; `payment_id` shares the account's namespace
    of purchase ids. `consent` is the SHA-256 of the subscriber's consent assertion."""

    payment_id: Id
    account_id: Id
    user_id: Id
    publisher_id: Id
    amount_cents: PositiveCents  # including VAT
    category: Category
    description: Text
    occurred_at: Timestamp
    hold_expires_at: Timestamp
    content_id: Id | None = None
    consent: Digest | None = None

    def __post_init__(self) -> None:
        held = self.hold_expires_at - self.occurred_at
        if held <= timedelta(0):
            raise ValueError("hold_expires_at must be after occurred_at")
        if held > HOLD_DURATION_MAX:
            raise ValueError("a hold lasts at most 7 days")


class PaymentCaptureRequested(Message, frozen=True, tag="payment.capture_requested.v1"):
    """The publisher captures a held payment, all of it or a part (the rest is released). One
    capture per payment; the same capture again gets the same answer again."""

    payment_id: Id
    account_id: Id
    publisher_id: Id
    amount_cents: PositiveCents
    occurred_at: Timestamp


class PaymentVoidRequested(Message, frozen=True, tag="payment.void_requested.v1"):
    """The publisher gives a held payment up: its cap room is released, nothing is billed."""

    payment_id: Id
    account_id: Id
    publisher_id: Id
    occurred_at: Timestamp


class HoldsExpireRequested(Message, frozen=True, tag="holds.expire_requested.v1"):
    """Expire every hold of a partition whose `hold_expires_at` is at or before `as_of`. Sent once
    to each of the `partitions` partitions of ledger.commands, like PeriodCloseRequested: a barrier
    in each partition's order carrying its own time, so that a replay expires the same holds."""

    command_id: Id
    as_of: Timestamp
    partition: PartitionNumber
    partitions: PartitionCount
    occurred_at: Timestamp

    def __post_init__(self) -> None:
        _check_barrier(self.partition, self.partitions)


class ReferenceChangeRequested(Message, frozen=True, tag="reference.change_requested.v1"):
    """Register or change an ISP or a publisher (issue 15). Sent once to each of the `partitions`
    partitions of ledger.commands, keyed `isp:<id>` / `publisher:<id>`, like PeriodCloseRequested:
    each copy takes its place in its partition's command order, and the decisions of that
    partition after it see `record` from the record's effective time (`effective_at`, else its
    `occurred_at`), those before it never do, live or in a replay (ledger.core.reference)."""

    command_id: Id
    record: ReferenceRecord
    partition: PartitionNumber
    partitions: PartitionCount
    occurred_at: Timestamp

    def __post_init__(self) -> None:
        _check_barrier(self.partition, self.partitions)


# The features an upgrade may activate (ledger.upgrade_requested.v1): each names a change of what
# the authorizer emits that every worker must be able to run before any partition uses it.
Feature = Literal["authorized_v2"]


class UpgradeRequested(Message, frozen=True, tag="ledger.upgrade_requested.v1"):
    """Activate a feature of the current build (issue 16): sent once to each of the `partitions`
    partitions of ledger.commands, like PeriodCloseRequested, after every worker runs a build that
    knows it (an older build dead-letters the unknown kind). Each copy takes its place in its
    partition's command order: the decisions of that partition after it use the feature, those
    before it never do, live or in a replay (ledger.core.reference.PartitionReference.features).
    `authorized_v2`: a purchase decided after it is `purchase.authorized.v2`, which carries its
    `consent`."""

    command_id: Id
    feature: Feature
    partition: PartitionNumber
    partitions: PartitionCount
    occurred_at: Timestamp

    def __post_init__(self) -> None:
        _check_barrier(self.partition, self.partitions)


PaymentCommand = PaymentHoldRequested | PaymentCaptureRequested | PaymentVoidRequested
AccountCommand = (
    PurchaseRequested
    | RefundRequested
    | AccountOpenRequested
    | AccountBlockRequested
    | AccountUnblockRequested
    | LimitsSetRequested
    | EmployeeAuthoriseRequested
    | EmployeeRevokeRequested
    | PaymentHoldRequested
    | PaymentCaptureRequested
    | PaymentVoidRequested
)
# Sent once to every partition, each copy a barrier in its partition's order.
PartitionBarrier = (
    PeriodCloseRequested | HoldsExpireRequested | ReferenceChangeRequested | UpgradeRequested
)
Command = AccountCommand | PartitionBarrier

# Older versions still read (and upcast to the current one by schemas.codec.decode_command).
OLDER_COMMAND_TYPES: tuple[type[Message], ...] = (PurchaseRequestedV1,)

COMMAND_TYPES: tuple[type[Message], ...] = (
    PurchaseRequested,
    RefundRequested,
    AccountOpenRequested,
    AccountBlockRequested,
    AccountUnblockRequested,
    LimitsSetRequested,
    EmployeeAuthoriseRequested,
    EmployeeRevokeRequested,
    PeriodCloseRequested,
    PaymentHoldRequested,
    PaymentCaptureRequested,
    PaymentVoidRequested,
    HoldsExpireRequested,
    ReferenceChangeRequested,
    UpgradeRequested,
)


def barrier_key(command: PartitionBarrier) -> str:
    """The message key of a barrier (it goes to the partition it names, not by key)."""
    if isinstance(command, PeriodCloseRequested):
        return command.isp_id
    if isinstance(command, ReferenceChangeRequested):
        return reference_key(command.record)
    return command.command_id
