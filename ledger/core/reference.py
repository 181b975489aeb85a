"""Reference data as the decision function sees it: ISPs, publishers, VAT rates and limits."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import date
from typing import Final

from ledger.core.calendar import paris_date
from schemas.commands import LimitOverrides
from schemas.reference import IspRegistered, PublisherRegistered, ReferenceRecord
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
    """The ISPs and publishers known when a command is decided."""

    isps: Mapping[str, IspRegistered] = field(default_factory=dict)
    publishers: Mapping[str, PublisherRegistered] = field(default_factory=dict)

    def with_record(self, record: ReferenceRecord) -> Reference:
        if isinstance(record, IspRegistered):
            return Reference({**self.isps, record.isp_id: record}, self.publishers)
        return Reference(self.isps, {**self.publishers, record.publisher_id: record})

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
