"""The authorizer's state of one account, and of one partition's closed periods.

Mutable msgspec structs encoded as arrays: compact in the table store (1.1 million accounts) and
still evolvable, since a new trailing field with a default decodes from an old array. Field names
are not encoded (arrays), so a field renamed here changes no stored byte; its position and type
never change. Times are whole epoch seconds, named `..._seconds`.
Everything here is bounded by the policy's horizon (see `prune`).
"""

from __future__ import annotations

from datetime import datetime

import msgspec

from ledger.core.balances import Money
from schemas.commands import LimitOverrides
from schemas.types import (
    AccountKind,
    BlockReason,
    HoldStatus,
    PurchaseRejection,
    RefundRejection,
)


class PurchaseMemo(msgspec.Struct, array_like=True):
    """What the account remembers of a purchase decided, to answer a duplicate the same way and
    to refund it."""

    fingerprint: str
    at_seconds: int  # when it occurred
    authorized: bool
    reason: PurchaseRejection | None
    amount_cents: int
    refunded_cents: int
    vat_rate_bp: int
    commission_bp: int
    revenue_share_bp: int
    day: str  # the Paris day it occurred on (daily cap)
    period: str  # the billing period it occurred in (monthly cap, employee budget)
    billing_period: str  # the period it is billed in (later than `period` if that was closed)
    late_for_period: str | None
    user_id: str
    publisher_id: str
    origin: int | None = None  # the first decision's command offset, re-emitted with duplicates


class RefundMemo(msgspec.Struct, array_like=True):
    fingerprint: str
    at_seconds: int  # when it occurred
    purchase_id: str
    accepted: bool
    reason: RefundRejection | None
    refunded_before_cents: int
    billing_period: str | None
    late_for_period: str | None
    origin: int | None = None


class HoldMemo(msgspec.Struct, array_like=True):
    """A held payment (payment.reserved.v1) and what became of it: enough to decide its capture,
    void or expiry, to answer the same command again with the same fact, and to release exactly
    the cap room it took (its `day`, `period` and user). Kept while it is reserved, whatever its
    age; forgotten like a purchase once finished and behind the horizon (ledger.core.evolve)."""

    fingerprint: str  # of the hold command
    occurred_at: datetime  # the confirmation's time: the capture's purchase occurs then
    at_seconds: int
    expires_at: datetime
    expires_at_seconds: int
    status: HoldStatus
    amount_cents: int  # held
    vat_rate_bp: int
    commission_bp: int
    revenue_share_bp: int
    day: str
    period: str
    user_id: str
    publisher_id: str
    category: str
    description: str
    origin: int | None
    # How it finished: the capture's or void's command fingerprint and first origin (to answer
    # the same command again), the amount captured and the period the capture is billed in.
    finished_at_seconds: int | None = None
    finish_fingerprint: str | None = None
    finish_origin: int | None = None
    captured_cents: int = 0
    billing_period: str | None = None
    late_for_period: str | None = None


class EmployeeGrant(msgspec.Struct, frozen=True, array_like=True):
    authorised: bool
    budget_cents: int | None  # None: the limits' employee_budget_cents


class AccountState(msgspec.Struct, array_like=True):
    account_id: str
    isp_id: str
    kind: AccountKind
    company_name: str | None
    opened_fingerprint: str
    opened_at_seconds: int
    # (from, reason or None), from in epoch seconds, as in every timeline (ledger.core.timeline).
    blocks: list[tuple[int, BlockReason | None]] = msgspec.field(default_factory=list)
    limits: list[tuple[int, LimitOverrides]] = msgspec.field(default_factory=list)
    employees: dict[str, list[tuple[int, EmployeeGrant]]] = msgspec.field(default_factory=dict)
    day_spend: dict[str, int] = msgspec.field(default_factory=dict)
    period_spend: dict[str, int] = msgspec.field(default_factory=dict)
    employee_spend: dict[str, int] = msgspec.field(default_factory=dict)  # "user|period"
    recent: dict[str, list[int]] = msgspec.field(default_factory=dict)  # user → authorized at
    purchases: dict[str, PurchaseMemo] = msgspec.field(default_factory=dict)
    refunds: dict[str, RefundMemo] = msgspec.field(default_factory=dict)
    watermark_seconds: int = 0  # the latest occurred_at the account has remembered
    pruned_at_seconds: int = 0
    # The account's balance, for its whole life: what it owes (authorized minus refunded).
    owed_cents: int = 0
    purchases_authorized: int = 0
    refunds_applied: int = 0
    # The offset of the last command of this account's partition applied to this state (-1: not
    # known, a state written before the field existed). A state whose `decided_through` is at or
    # past a command's offset already holds that command's effects (ledger/core/batch.py).
    decided_through: int = -1
    # The money facts of this account decided in the batch that last wrote this state: if that
    # batch's summary was lost, they are counted again from here (ledger/core/batch.py). Their
    # memos may be gone by then, pruned by a later command of the same batch.
    batch_money: list[Money] = msgspec.field(default_factory=list)
    # Held payments by payment id (a namespace shared with `purchases`: one id is one or the
    # other). Issue 14.
    holds: dict[str, HoldMemo] = msgspec.field(default_factory=dict)
    # When the purchases the account remembers were attempted, authorized or refused, any user:
    # sorted, pruned to the longest velocity window (the account's velocity, issue 14).
    attempts: list[int] = msgspec.field(default_factory=list)


class ClosedPeriods(msgspec.Struct, array_like=True):
    """The periods closed so far in one partition: isp_id → period → the closing command's
    fingerprint."""

    by_isp: dict[str, dict[str, str]] = msgspec.field(default_factory=dict)

    def of(self, isp_id: str) -> dict[str, str]:
        return self.by_isp.get(isp_id, {})


def employee_spend_key(user_id: str, period: str) -> str:
    return f"{user_id}|{period}"


_state_encoder = msgspec.msgpack.Encoder()
_account_decoder = msgspec.msgpack.Decoder(AccountState)
_closed_decoder = msgspec.msgpack.Decoder(ClosedPeriods)


def encode_state(state: AccountState | ClosedPeriods) -> bytes:
    return _state_encoder.encode(state)


def decode_account(raw: bytes) -> AccountState:
    return _account_decoder.decode(raw)


def decode_closed(raw: bytes) -> ClosedPeriods:
    return _closed_decoder.decode(raw)
