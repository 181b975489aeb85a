"""Constrained field types shared by every message. The constraints are checked by msgspec while
decoding, so an invalid message never becomes an object."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

from msgspec import Meta

# Client-generated ids (purchase_id, account_id, ...): printable, no spaces, bounded. Every
# pattern ends in `$(?!\n)`: a Python `$` also matches before a final newline, and "acct\n" was
# taken for an id (issue 12); the lookahead means the same in the JSON Schema's ECMA dialect.
Id = Annotated[
    str,
    Meta(
        pattern=r"^[A-Za-z0-9][A-Za-z0-9._:@-]{0,63}$(?!\n)",
        description="an identifier, 1 to 64 chars",
    ),
]
# Money is integer euro cents, never float (STYLE.md §2). A ledger amount is at most €10 billion.
AMOUNT_CENTS_MAX = 1_000_000_000_000
PositiveCents = Annotated[int, Meta(gt=0, le=AMOUNT_CENTS_MAX, description="euro cents, > 0")]
NonNegativeCents = Annotated[int, Meta(ge=0, le=AMOUNT_CENTS_MAX, description="euro cents, >= 0")]
SignedCents = Annotated[
    int, Meta(ge=-AMOUNT_CENTS_MAX, le=AMOUNT_CENTS_MAX, description="euro cents, signed")
]
BasisPoints = Annotated[int, Meta(ge=0, le=10_000, description="1/100 of a percent")]
# Event time: timezone-aware only; a naive timestamp is ambiguous across the DST change.
Timestamp = Annotated[datetime, Meta(tz=True, description="RFC 3339 with a UTC offset")]
PeriodKey = Annotated[str, Meta(pattern=r"^[0-9]{4}-(0[1-9]|1[0-2])$(?!\n)", description="YYYY-MM")]
Category = Annotated[
    str, Meta(pattern=r"^[a-z][a-z0-9_]{1,31}$(?!\n)", description="a content category")
]
# No control characters but tab and line breaks: PostgreSQL refuses a NUL in text, and a fact
# that decodes must be storable (found by fuzzing the API). The pattern is in the JSON Schema for
# producers; the decoders check it only when the raw JSON holds a control-character escape
# (schemas.codec), a regular expression on every text costing an eighth of the decode rate.
TEXT_PATTERN = r"^[^\x00-\x08\x0b\x0c\x0e-\x1f]*$"
Text = Annotated[str, Meta(max_length=200, extra_json_schema={"pattern": TEXT_PATTERN})]
Fingerprint = Annotated[str, Meta(pattern=r"^[0-9a-f]{32}$(?!\n)")]
# SHA-256 of a subscriber's consent assertion (docs/design/checkout.md): evidence kept on the
# command and on the hold's fact.
Digest = Annotated[
    str, Meta(pattern=r"^[0-9a-f]{64}$(?!\n)", description="SHA-256, 64 lowercase hex digits")
]
PartitionNumber = Annotated[int, Meta(ge=0, le=1023)]
PartitionCount = Annotated[int, Meta(ge=1, le=1024)]

AccountKind = Literal["consumer", "enterprise"]
BlockReason = Literal["opt_out", "parental", "fraud", "unpaid", "other"]
VatCategory = Literal["standard", "press_online"]
Party = Literal["account", "tax", "isp", "publisher", "platform"]

PurchaseRejection = Literal[
    "duplicate_with_different_body",
    "stale_purchase",
    "account_unknown",
    "isp_unknown",
    "account_blocked",
    "publisher_unknown",
    "publisher_blocked",
    "employee_not_authorised",
    "amount_below_minimum",
    "amount_above_maximum",
    "velocity_exceeded",
    "daily_cap_exceeded",
    "monthly_cap_exceeded",
    "employee_budget_exceeded",
    # Issue 14, caps that hold: older than its partition's event-time watermark by more than its
    # ISP's allowed lateness; and too many attempts (authorized or refused) on one account.
    "too_late",
    "account_velocity_exceeded",
]
RefundRejection = Literal[
    "duplicate_with_different_body",
    "stale_refund",
    "account_unknown",
    "purchase_unknown",
    "purchase_not_authorized",
    "refund_before_purchase",
    "refund_exceeds_purchase",
]
CommandRejection = Literal[
    "account_exists",
    "account_unknown",
    "isp_unknown",
    "not_enterprise",
    "employee_unknown",
    "period_not_ended",
    "period_already_closed",
]
# Capture and void of a held payment (docs/design/checkout.md). `payment_unknown` also answers a
# publisher asking about another publisher's payment: nothing is said about whether it exists.
PaymentCommandRejection = Literal[
    "payment_unknown",
    "reservation_expired",
    "reservation_voided",
    "reservation_captured",
    "capture_exceeds_hold",
    "duplicate_with_different_body",
]
PaymentAction = Literal["capture", "void"]
HoldStatus = Literal["reserved", "captured", "voided", "expired"]
