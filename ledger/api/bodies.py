"""The JSON bodies the HTTP APIs accept. Field types are those of the commands (schemas/types.py),
so a body that decodes is a command that the authorizer can decide."""

from __future__ import annotations

import msgspec

from schemas.commands import LimitOverrides
from schemas.reference import AllowedLatenessSeconds
from schemas.types import (
    AccountKind,
    BlockReason,
    Category,
    Id,
    NonNegativeCents,
    PositiveCents,
    Text,
    Timestamp,
    VatCategory,
)


class Body(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Unknown fields are refused: a typo in a payment request must not pass silently.

    Admin commands take an optional command_id and occurred_at (default: a new id, now). To send
    one again safely after a timeout, give both: the same command is then the same fact."""


class PurchaseBody(Body, frozen=True):
    purchase_id: Id
    account_id: Id
    user_id: Id
    publisher_id: Id
    amount_cents: PositiveCents
    category: Category
    description: Text
    occurred_at: Timestamp


class RefundBody(Body, frozen=True):
    refund_id: Id
    amount_cents: PositiveCents
    reason: Text
    occurred_at: Timestamp


class IspBody(Body, frozen=True):
    isp_id: Id
    name: Text
    billing_day: int
    commission_bp: int
    consumer_limits: LimitOverrides = msgspec.field(default_factory=LimitOverrides)
    enterprise_limits: LimitOverrides = msgspec.field(default_factory=LimitOverrides)
    # For its trusted feeds' purchases (issue 14): absent, no event-time limit.
    allowed_lateness_seconds: AllowedLatenessSeconds | None = None


class PublisherBody(Body, frozen=True):
    publisher_id: Id
    name: Text
    category: Category
    revenue_share_bp: int
    vat_category: VatCategory
    blocked: bool = False


class AccountBody(Body, frozen=True):
    account_id: Id
    isp_id: Id
    kind: AccountKind
    company_name: Text | None = None
    command_id: Id | None = None
    occurred_at: Timestamp | None = None


class BlockBody(Body, frozen=True):
    reason: BlockReason
    command_id: Id | None = None
    occurred_at: Timestamp | None = None


class CommandBody(Body, frozen=True):
    command_id: Id | None = None
    occurred_at: Timestamp | None = None


class LimitsBody(Body, frozen=True):
    limits: LimitOverrides
    command_id: Id | None = None
    occurred_at: Timestamp | None = None


class EmployeeBody(Body, frozen=True):
    user_id: Id
    budget_cents: NonNegativeCents | None = None
    command_id: Id | None = None
    occurred_at: Timestamp | None = None


REQUEST_BODIES: tuple[type[Body], ...] = (
    PurchaseBody, RefundBody, IspBody, PublisherBody, AccountBody, BlockBody, CommandBody,
    LimitsBody, EmployeeBody,
)  # fmt: skip
