"""Applying a decided fact to its account's state, and forgetting what no later decision can
need. Idempotent: a fact applied twice changes nothing."""

from __future__ import annotations

from bisect import bisect_right, insort
from typing import Final

from ledger.core import calendar
from ledger.core.context import UNREMEMBERED, Policy, fingerprint
from ledger.core.invariant import InvariantBroken, invariant, present
from ledger.core.payment import (
    apply_captured,
    apply_expired,
    apply_reserved,
    apply_voided,
    prune_holds,
)
from ledger.core.reference import VELOCITY_WINDOW_MAX_SECONDS
from ledger.core.state import (
    AccountState,
    EmployeeGrant,
    PurchaseMemo,
    RefundMemo,
    employee_spend_key,
)
from ledger.core.timeline import prune_before, set_from
from schemas.commands import AccountOpenRequested
from schemas.facts import (
    AccountBlocked,
    AccountOpened,
    AccountUnblocked,
    CommandRejected,
    EmployeeAuthorised,
    EmployeeRevoked,
    Fact,
    LimitsSet,
    PaymentCommandRejected,
    PaymentExpired,
    PaymentReserved,
    PaymentVoided,
    PeriodClosed,
    PurchaseAuthorized,
    PurchaseRefunded,
    PurchaseRejected,
    RefundRejected,
)

# Pruning an account costs a pass over its memos: done when its newest event has moved an eighth
# of the horizon since the last time, so the state stays under 9/8 of the horizon (measured: daily
# pruning took a third of the decision time of `ledger bench core`).
PRUNE_FRACTION: Final = 8


def evolve(state: AccountState | None, fact: Fact, policy: Policy) -> AccountState | None:
    """Apply one fact of this account. Idempotent: a fact applied twice changes nothing."""
    if isinstance(fact, AccountOpened):
        return state if state is not None else _opened(fact)
    if state is None:
        return None
    if isinstance(fact, PurchaseAuthorized):
        if state.holds:
            apply_captured(state, fact)  # a capture: its hold's room is given back first
        _apply_authorized(state, fact)
    elif isinstance(fact, PurchaseRejected):
        _apply_purchase_rejected(state, fact)
    elif isinstance(fact, PurchaseRefunded):
        _apply_refunded(state, fact)
    elif isinstance(fact, RefundRejected):
        _apply_refund_rejected(state, fact)
    elif isinstance(fact, PaymentReserved):
        apply_reserved(state, fact)
    elif isinstance(fact, PaymentVoided):
        apply_voided(state, fact)
    elif isinstance(fact, PaymentExpired):
        apply_expired(state, fact)
    elif isinstance(fact, PaymentCommandRejected):
        pass  # decided afresh each time: nothing to remember
    else:
        _apply_admin(state, fact)
    if (
        state.watermark_seconds - state.pruned_at_seconds
        >= policy.horizon_seconds // PRUNE_FRACTION
    ):
        prune(state, state.watermark_seconds - policy.horizon_seconds)
        state.pruned_at_seconds = state.watermark_seconds
    return state


def _opened(fact: AccountOpened) -> AccountState:
    command = AccountOpenRequested(
        command_id=fact.command_id,
        account_id=fact.account_id,
        isp_id=fact.isp_id,
        kind=fact.kind,
        occurred_at=fact.occurred_at,
        company_name=fact.company_name,
    )
    at = calendar.epoch_seconds(fact.occurred_at)
    return AccountState(
        account_id=fact.account_id,
        isp_id=fact.isp_id,
        kind=fact.kind,
        company_name=fact.company_name,
        opened_fingerprint=fingerprint(command),
        opened_at_seconds=at,
        watermark_seconds=at,
        pruned_at_seconds=at,
    )


def _advance(state: AccountState, at: int) -> None:
    state.watermark_seconds = max(state.watermark_seconds, at)


def _apply_authorized(state: AccountState, fact: PurchaseAuthorized) -> None:
    if fact.purchase_id in state.purchases:
        return
    at = calendar.epoch_seconds(fact.occurred_at)
    period = fact.late_for_period or fact.billing_period
    day = calendar.day_key(at)
    state.purchases[fact.purchase_id] = PurchaseMemo(
        fingerprint=fact.body_fingerprint,
        at_seconds=at,
        authorized=True,
        reason=None,
        amount_cents=fact.amount_cents,
        refunded_cents=0,
        vat_rate_bp=fact.vat_rate_bp,
        commission_bp=fact.commission_bp,
        revenue_share_bp=fact.revenue_share_bp,
        day=day,
        period=period,
        billing_period=fact.billing_period,
        late_for_period=fact.late_for_period,
        user_id=fact.user_id,
        publisher_id=fact.publisher_id,
        origin=fact.origin,
    )
    amount = fact.amount_cents
    state.day_spend[day] = state.day_spend.get(day, 0) + amount
    state.period_spend[period] = state.period_spend.get(period, 0) + amount
    if state.kind == "enterprise":
        key = employee_spend_key(fact.user_id, period)
        state.employee_spend[key] = state.employee_spend.get(key, 0) + amount
    insort(state.recent.setdefault(fact.user_id, []), at)
    insort(state.attempts, at)
    state.owed_cents += amount
    state.purchases_authorized += 1
    _advance(state, at)


def _apply_purchase_rejected(state: AccountState, fact: PurchaseRejected) -> None:
    if fact.reason in UNREMEMBERED or fact.purchase_id in state.purchases:
        return
    at = calendar.epoch_seconds(fact.occurred_at)
    state.purchases[fact.purchase_id] = PurchaseMemo(
        fingerprint=fact.body_fingerprint,
        at_seconds=at,
        authorized=False,
        reason=fact.reason,
        amount_cents=fact.amount_cents,
        refunded_cents=0,
        vat_rate_bp=0,
        commission_bp=0,
        revenue_share_bp=0,
        day="",
        period="",
        billing_period="",
        late_for_period=None,
        user_id=fact.user_id,
        publisher_id=fact.publisher_id,
        origin=fact.origin,
    )
    insort(state.attempts, at)  # remembered, so an attempt: probing counts (issue 14)
    _advance(state, at)


def _apply_refunded(state: AccountState, fact: PurchaseRefunded) -> None:
    if fact.refund_id in state.refunds:
        return
    # A refund is decided only against a remembered purchase, and a purchase outlives its refunds.
    purchase = present(
        state.purchases.get(fact.purchase_id),
        "refund %s of a purchase the account forgot", fact.refund_id,
    )  # fmt: skip
    at = calendar.epoch_seconds(fact.occurred_at)
    state.refunds[fact.refund_id] = RefundMemo(
        fingerprint=fact.body_fingerprint,
        at_seconds=at,
        purchase_id=fact.purchase_id,
        accepted=True,
        reason=None,
        refunded_before_cents=fact.refunded_before_cents,
        billing_period=fact.billing_period,
        late_for_period=fact.late_for_period,
        origin=fact.origin,
    )
    amount = fact.amount_cents
    purchase.refunded_cents += amount
    invariant(purchase.refunded_cents <= purchase.amount_cents, "refunded more than the purchase")
    # The cap room comes back in the day and period of the purchase, not of the refund.
    state.day_spend[purchase.day] = state.day_spend.get(purchase.day, 0) - amount
    state.period_spend[purchase.period] = state.period_spend.get(purchase.period, 0) - amount
    if state.kind == "enterprise":
        key = employee_spend_key(purchase.user_id, purchase.period)
        state.employee_spend[key] = state.employee_spend.get(key, 0) - amount
    state.owed_cents -= amount
    state.refunds_applied += 1
    _advance(state, at)


def _apply_refund_rejected(state: AccountState, fact: RefundRejected) -> None:
    if fact.reason in UNREMEMBERED or fact.refund_id in state.refunds:
        return
    at = calendar.epoch_seconds(fact.occurred_at)
    state.refunds[fact.refund_id] = RefundMemo(
        fingerprint=fact.body_fingerprint,
        at_seconds=at,
        purchase_id=fact.purchase_id,
        accepted=False,
        reason=fact.reason,
        refunded_before_cents=0,
        billing_period=None,
        late_for_period=None,
        origin=fact.origin,
    )
    _advance(state, at)


def _apply_admin(state: AccountState, fact: Fact) -> None:
    if isinstance(fact, CommandRejected | PeriodClosed):
        return
    at = calendar.epoch_seconds(fact.occurred_at)
    if isinstance(fact, AccountBlocked):
        set_from(state.blocks, at, fact.reason)
    elif isinstance(fact, AccountUnblocked):
        set_from(state.blocks, at, None)
    elif isinstance(fact, LimitsSet):
        set_from(state.limits, at, fact.limits)
    elif isinstance(fact, EmployeeAuthorised):
        set_from(
            state.employees.setdefault(fact.user_id, []), at, EmployeeGrant(True, fact.budget_cents)
        )
    elif isinstance(fact, EmployeeRevoked):
        set_from(state.employees.setdefault(fact.user_id, []), at, EmployeeGrant(False, None))
    else:
        raise InvariantBroken(f"a fact of another account's kind: {type(fact).__name__}")


def prune(state: AccountState, cutoff: int) -> None:
    """Forget what no decision after `cutoff` can need: purchase and refund memos older than
    it (such purchases are rejected as stale), spend of days and periods before it, velocity
    timestamps (per user, and the account's attempts) older than the longest window, and
    superseded settings.

    A purchase is kept as long as an accepted refund of it is: a refund remembered answers a
    retry with the same fact again, which it builds from its purchase (issue 12: without it, a
    retry got a rejection without a reason under the refund's id). Finished holds go like
    purchases; an open hold stays (ledger.core.payment.prune_holds)."""
    state.refunds = {key: memo for key, memo in state.refunds.items() if memo.at_seconds >= cutoff}
    refunded = {memo.purchase_id for memo in state.refunds.values() if memo.accepted}
    state.purchases = {
        key: memo
        for key, memo in state.purchases.items()
        if memo.at_seconds >= cutoff or key in refunded
    }
    if state.holds:
        prune_holds(state, cutoff)
    first_day = calendar.day_key(cutoff)
    state.day_spend = {day: cents for day, cents in state.day_spend.items() if day >= first_day}
    # The cutoff's period starts at most one calendar month before the cutoff's month.
    first_period = calendar.previous_period(first_day[:7])
    state.period_spend = {p: c for p, c in state.period_spend.items() if p >= first_period}
    state.employee_spend = {
        key: cents
        for key, cents in state.employee_spend.items()
        if key.rsplit("|", 1)[1] >= first_period
    }
    oldest_recent = state.watermark_seconds - VELOCITY_WINDOW_MAX_SECONDS
    for user, stamps in list(state.recent.items()):
        kept = stamps[bisect_right(stamps, oldest_recent - 1) :]
        if kept:
            state.recent[user] = kept
        else:
            del state.recent[user]
    state.attempts = state.attempts[bisect_right(state.attempts, oldest_recent - 1) :]
    prune_before(state.blocks, cutoff)
    prune_before(state.limits, cutoff)
    for timeline in state.employees.values():
        prune_before(timeline, cutoff)
