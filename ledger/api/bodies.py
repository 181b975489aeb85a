"""The JSON bodies the HTTP APIs accept. Field types are those of the commands (schemas/types.py),
so a body that decodes is a command that the authorizer can decide."""

from __future__ import annotations

import re
from typing import Annotated, Any, Final, Literal

import msgspec
from aiohttp import web
from msgspec import UNSET, Meta, UnsetType

from ledger.api.errors import ApiError
from schemas.commands import HOLD_DURATION_MAX, LimitOverrides
from schemas.reference import AllowedLatenessSeconds
from schemas.types import (
    TEXT_PATTERN,
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


HOLD_SECONDS_MIN: Final = 60
HOLD_SECONDS_MAX: Final = int(HOLD_DURATION_MAX.total_seconds())
HOLD_SECONDS_DEFAULT: Final = 3600


class PaymentBody(Body, frozen=True):
    """A payment a publisher prepares (issue 14): no account, no time. The subscriber confirms it
    on the ledger's page; the time of the purchase is the platform's, at confirmation. `capture`
    "immediate" (the default) charges at confirmation; "hold" reserves the amount (the cap room
    is taken) for `hold_seconds` (default one hour, at most 7 days) until the publisher captures
    (all or part) or voids it."""

    amount_cents: PositiveCents  # including VAT
    description: Text
    category: Category
    content_id: Id | None = None
    capture: Literal["immediate", "hold"] = "immediate"
    hold_seconds: Annotated[int, Meta(ge=HOLD_SECONDS_MIN, le=HOLD_SECONDS_MAX)] | None = None

    def __post_init__(self) -> None:
        if self.hold_seconds is not None and self.capture != "hold":
            raise ValueError('hold_seconds is for capture "hold" only')

    @property
    def hold_for(self) -> int | None:
        """The hold's length in seconds (None: not a hold)."""
        if self.capture != "hold":
            return None
        return HOLD_SECONDS_DEFAULT if self.hold_seconds is None else self.hold_seconds


class CaptureBody(Body, frozen=True):
    """A capture of a held payment: all of it (no amount) or part, once; the rest is released."""

    amount_cents: PositiveCents | None = None


class VoidBody(Body, frozen=True):
    """A void of a held payment: no field (the hold's whole amount is released)."""


class CredentialsBody(Body, frozen=True):
    """Credentials for a subscriber (or an employee) of the account, issued by its ISP's identity
    component: the password is returned once and kept nowhere on the platform."""

    user_id: Id


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


class IspChangeBody(Body, frozen=True):
    """A change of a registered ISP (issue 15): a field left out keeps its value (for
    allowed_lateness_seconds, null removes the limit). `effective_at`: when the new values take
    effect for the decisions (absent: now; never in the past)."""

    name: Text | UnsetType = UNSET
    billing_day: int | UnsetType = UNSET
    commission_bp: int | UnsetType = UNSET
    consumer_limits: LimitOverrides | UnsetType = UNSET
    enterprise_limits: LimitOverrides | UnsetType = UNSET
    allowed_lateness_seconds: AllowedLatenessSeconds | UnsetType | None = UNSET
    effective_at: Timestamp | None = None


class PublisherChangeBody(Body, frozen=True):
    """A change of a registered publisher (issue 15): its share, VAT category, category, name or
    block; a field left out keeps its value, and its API key is kept. `effective_at`: when the
    new values take effect for the decisions (absent: now; never in the past)."""

    name: Text | UnsetType = UNSET
    category: Category | UnsetType = UNSET
    revenue_share_bp: int | UnsetType = UNSET
    vat_category: VatCategory | UnsetType = UNSET
    blocked: bool | UnsetType = UNSET
    effective_at: Timestamp | None = None


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
    PaymentBody, CaptureBody, VoidBody, CredentialsBody, RefundBody, IspBody, PublisherBody,
    IspChangeBody, PublisherChangeBody, AccountBody, BlockBody, CommandBody, LimitsBody,
    EmployeeBody,
)  # fmt: skip


BODY_BYTES_MAX = 16 * 1024
_TEXT = re.compile(TEXT_PATTERN)


async def read_body(request: web.Request, kind: type[Body]) -> Any:
    raw = await request.read()
    if len(raw) > BODY_BYTES_MAX:
        raise ApiError(413, "body_too_large", f"a request body is at most {BODY_BYTES_MAX} bytes")
    try:
        body = msgspec.json.decode(raw or b"{}", type=kind)
    except msgspec.DecodeError as error:
        raise ApiError(422, "invalid_body", str(error)) from None
    for name in body.__struct_fields__:  # Text's pattern is not checked by msgspec (types.py)
        value = getattr(body, name)
        if isinstance(value, str) and not _TEXT.match(value):
            raise ApiError(422, "invalid_body", (
                f"`$.{name}`: a text holds no control character but tab and newline"))  # fmt: skip
    return body
