"""Small builders of reference data and commands for the tests: one place to read what a test's
world is made of."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime, timedelta

from ledger.core.reference import Reference
from schemas.commands import (
    AccountBlockRequested,
    AccountOpenRequested,
    AccountUnblockRequested,
    EmployeeAuthoriseRequested,
    EmployeeRevokeRequested,
    HoldsExpireRequested,
    LimitOverrides,
    LimitsSetRequested,
    PaymentCaptureRequested,
    PaymentHoldRequested,
    PaymentVoidRequested,
    PeriodCloseRequested,
    PurchaseRequested,
    RefundRequested,
)
from schemas.reference import IspRegistered, PublisherRegistered

T0 = datetime(2006, 3, 1, 10, 0, tzinfo=UTC)  # a Wednesday in the seed's first half of 2006

ORANGE = IspRegistered(
    isp_id="orange", name="Orange", billing_day=1, commission_bp=1500, occurred_at=T0
)
ALICE = IspRegistered(
    isp_id="alice", name="Alice", billing_day=15, commission_bp=1200, occurred_at=T0
)
CANALPLAY = PublisherRegistered(
    publisher_id="canalplay",
    name="Canalplay.com",
    category="vod",
    revenue_share_bp=6000,
    vat_category="standard",
    occurred_at=T0,
)
LEMONDE = PublisherRegistered(
    publisher_id="lemonde-archives",
    name="Le Monde archives",
    category="press_archive",
    revenue_share_bp=7000,
    vat_category="press_online",
    occurred_at=T0,
)
BLOCKED_PUB = PublisherRegistered(
    publisher_id="shady",
    name="Shady",
    category="games",
    revenue_share_bp=5000,
    vat_category="standard",
    occurred_at=T0,
    blocked=True,
)

REFERENCE = Reference.of([ORANGE, ALICE, CANALPLAY, LEMONDE, BLOCKED_PUB])

_ids = itertools.count(1)


def next_id(prefix: str) -> str:
    return f"{prefix}-{next(_ids)}"


def at(minutes: float = 0, *, days: float = 0, base: datetime = T0) -> datetime:
    return base + timedelta(days=days, minutes=minutes)


def open_account(
    account_id: str,
    isp_id: str = "orange",
    kind: str = "consumer",
    when: datetime = T0,
    command_id: str | None = None,
) -> AccountOpenRequested:
    return AccountOpenRequested(
        command_id=command_id or next_id("open"),
        account_id=account_id,
        isp_id=isp_id,
        kind=kind,
        occurred_at=when,  # type: ignore[arg-type]
        company_name="ACME SA" if kind == "enterprise" else None,
    )


def purchase(
    account_id: str,
    amount_cents: int = 266,
    when: datetime = T0,
    *,
    purchase_id: str | None = None,
    user_id: str = "u1",
    publisher_id: str = "canalplay",
    description: str = "film",
) -> PurchaseRequested:
    return PurchaseRequested(
        purchase_id=purchase_id or next_id("p"),
        account_id=account_id,
        user_id=user_id,
        publisher_id=publisher_id,
        amount_cents=amount_cents,
        category="vod",
        description=description,
        occurred_at=when,
    )


def refund(
    account_id: str,
    purchase_id: str,
    amount_cents: int,
    when: datetime = T0,
    *,
    refund_id: str | None = None,
) -> RefundRequested:
    return RefundRequested(
        refund_id=refund_id or next_id("r"),
        purchase_id=purchase_id,
        account_id=account_id,
        amount_cents=amount_cents,
        reason="not delivered",
        occurred_at=when,
    )


def block(account_id: str, when: datetime = T0) -> AccountBlockRequested:
    return AccountBlockRequested(
        command_id=next_id("block"), account_id=account_id, reason="parental", occurred_at=when
    )


def unblock(account_id: str, when: datetime = T0) -> AccountUnblockRequested:
    return AccountUnblockRequested(
        command_id=next_id("unblock"), account_id=account_id, occurred_at=when
    )


def set_limits(account_id: str, when: datetime = T0, **limits: int) -> LimitsSetRequested:
    return LimitsSetRequested(
        command_id=next_id("limits"),
        account_id=account_id,
        limits=LimitOverrides(**limits),
        occurred_at=when,
    )


def authorise(
    account_id: str, user_id: str, when: datetime = T0, budget_cents: int | None = None
) -> EmployeeAuthoriseRequested:
    return EmployeeAuthoriseRequested(
        command_id=next_id("auth"),
        account_id=account_id,
        user_id=user_id,
        occurred_at=when,
        budget_cents=budget_cents,
    )


def revoke(account_id: str, user_id: str, when: datetime = T0) -> EmployeeRevokeRequested:
    return EmployeeRevokeRequested(
        command_id=next_id("revoke"), account_id=account_id, user_id=user_id, occurred_at=when
    )


def close(
    isp_id: str,
    period: str,
    when: datetime,
    partition: int = 0,
    partitions: int = 1,
    command_id: str = "close-1",
) -> PeriodCloseRequested:
    return PeriodCloseRequested(
        command_id=command_id,
        isp_id=isp_id,
        period=period,
        partition=partition,
        partitions=partitions,
        occurred_at=when,
    )


def hold(
    account_id: str,
    amount_cents: int = 1_500,
    when: datetime = T0,
    *,
    payment_id: str | None = None,
    user_id: str = "u1",
    publisher_id: str = "canalplay",
    hold_for: timedelta = timedelta(hours=1),
    consent: str | None = None,
) -> PaymentHoldRequested:
    return PaymentHoldRequested(
        payment_id=payment_id or next_id("pay"),
        account_id=account_id,
        user_id=user_id,
        publisher_id=publisher_id,
        amount_cents=amount_cents,
        category="vod",
        description="location 48 h",
        occurred_at=when,
        hold_expires_at=when + hold_for,
        consent=consent,
    )


def capture(
    account_id: str,
    payment_id: str,
    amount_cents: int,
    when: datetime = T0,
    *,
    publisher_id: str = "canalplay",
) -> PaymentCaptureRequested:
    return PaymentCaptureRequested(
        payment_id=payment_id,
        account_id=account_id,
        publisher_id=publisher_id,
        amount_cents=amount_cents,
        occurred_at=when,
    )


def void(
    account_id: str, payment_id: str, when: datetime = T0, *, publisher_id: str = "canalplay"
) -> PaymentVoidRequested:
    return PaymentVoidRequested(
        payment_id=payment_id, account_id=account_id, publisher_id=publisher_id, occurred_at=when
    )


def expire(
    as_of: datetime, partition: int = 0, partitions: int = 1, command_id: str | None = None
) -> HoldsExpireRequested:
    return HoldsExpireRequested(
        command_id=command_id or next_id("expire"),
        as_of=as_of,
        partition=partition,
        partitions=partitions,
        occurred_at=as_of,
    )
