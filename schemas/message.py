"""The base of every message, and the limit overrides that commands and reference records share.
Here, below both schemas.commands and schemas.reference, so that a command can carry a reference
record (reference.change_requested.v1); both modules still export these names."""

from __future__ import annotations

import msgspec

from schemas.types import NonNegativeCents, PositiveCents


class Message(msgspec.Struct, frozen=True, tag_field="type", omit_defaults=False):
    """Base of every message on the ledger's topics."""


class LimitOverrides(msgspec.Struct, frozen=True, omit_defaults=True):
    """Fraud limits set on an account or as an ISP's defaults. A field left out (null) inherits
    the next level: account → ISP → platform defaults."""

    min_purchase_cents: PositiveCents | None = None
    max_purchase_cents: PositiveCents | None = None
    daily_cap_cents: NonNegativeCents | None = None
    monthly_cap_cents: NonNegativeCents | None = None
    velocity_max_purchases: int | None = None
    velocity_window_seconds: int | None = None
    employee_budget_cents: NonNegativeCents | None = None
    # Attempts per account (every user; authorized and refused) in the velocity window (issue 14).
    # Null all the way up (the platform's default): no such limit.
    velocity_max_attempts_per_account: int | None = None

    def __post_init__(self) -> None:
        if self.velocity_max_purchases is not None and not 1 <= self.velocity_max_purchases <= 1000:
            raise ValueError("velocity_max_purchases must be from 1 to 1000")
        attempts = self.velocity_max_attempts_per_account
        if attempts is not None and not 1 <= attempts <= 1000:
            raise ValueError("velocity_max_attempts_per_account must be from 1 to 1000")
        if self.velocity_window_seconds is not None and not (
            1 <= self.velocity_window_seconds <= 86_400
        ):
            raise ValueError("velocity_window_seconds must be from 1 to 86400 (one day)")
        low, high = self.min_purchase_cents, self.max_purchase_cents
        if low is not None and high is not None and low > high:
            raise ValueError("min_purchase_cents must not exceed max_purchase_cents")
