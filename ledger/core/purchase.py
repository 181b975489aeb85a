"""Deciding a purchase: the fraud limits of DESIGN.md §7 in order, against the account's state;
the same purchase again is answered with the same fact again."""

from __future__ import annotations

from bisect import bisect_right

import msgspec

from ledger.core import calendar, money
from ledger.core.context import Context, billing_period, event_id, fingerprint, limits_at
from ledger.core.invariant import present
from ledger.core.reference import vat_rate_bp
from ledger.core.state import AccountState, PurchaseMemo, employee_spend_key
from ledger.core.timeline import value_at
from schemas.commands import PurchaseRequested
from schemas.facts import Fact, PurchaseAuthorized, PurchaseAuthorizedV2, PurchaseRejected
from schemas.types import PurchaseRejection


def _rejected(
    command: PurchaseRequested,
    body_fingerprint: str,
    reason: PurchaseRejection,
    isp_id: str | None,
    origin: int | None,
) -> PurchaseRejected:
    return PurchaseRejected(
        event_id=event_id("purchase", command.purchase_id, body_fingerprint, reason, origin),
        purchase_id=command.purchase_id,
        account_id=command.account_id,
        user_id=command.user_id,
        publisher_id=command.publisher_id,
        amount_cents=command.amount_cents,
        occurred_at=command.occurred_at,
        reason=reason,
        body_fingerprint=body_fingerprint,
        isp_id=isp_id,
        origin=origin,
    )


def _authorized(
    command: PurchaseRequested, state: AccountState, memo: PurchaseMemo, context: Context
) -> PurchaseAuthorized:
    """v1, or v2 with the consent once the partition activated `authorized_v2` before the
    purchase's first decision (issue 16): `memo.origin`, so a purchase answered again after the
    activation is answered with the fact it got before it, byte for byte."""
    split = money.split_amount(
        command.amount_cents, memo.vat_rate_bp, memo.commission_bp, memo.revenue_share_bp
    )
    fact = PurchaseAuthorized(
        event_id=event_id("purchase", command.purchase_id, memo.fingerprint, None, memo.origin),
        purchase_id=command.purchase_id,
        account_id=command.account_id,
        account_kind=state.kind,
        isp_id=state.isp_id,
        user_id=command.user_id,
        publisher_id=command.publisher_id,
        category=command.category,
        description=command.description,
        occurred_at=command.occurred_at,
        amount_cents=command.amount_cents,
        net_cents=split.net_cents,
        vat_cents=split.vat_cents,
        vat_rate_bp=memo.vat_rate_bp,
        commission_bp=memo.commission_bp,
        revenue_share_bp=memo.revenue_share_bp,
        billing_period=memo.billing_period,
        late_for_period=memo.late_for_period,
        body_fingerprint=memo.fingerprint,
        origin=memo.origin,
        postings=money.purchase_postings(
            split, command.account_id, state.isp_id, command.publisher_id
        ),
    )
    if context.reference.active("authorized_v2", memo.origin):
        return PurchaseAuthorizedV2(**msgspec.structs.asdict(fact), consent=command.consent)
    return fact


def decide_purchase(
    state: AccountState | None, command: PurchaseRequested, context: Context, origin: int | None
) -> Fact:
    body_fingerprint = fingerprint(command)
    if state is None:
        return _rejected(command, body_fingerprint, "account_unknown", None, origin)
    if command.purchase_id in state.holds:  # one namespace of ids: a held payment's (issue 14)
        return _rejected(
            command, body_fingerprint, "duplicate_with_different_body", state.isp_id, origin
        )
    memo = state.purchases.get(command.purchase_id)
    if memo is not None:
        if memo.fingerprint != body_fingerprint:
            return _rejected(
                command, body_fingerprint, "duplicate_with_different_body", state.isp_id, origin
            )
        if memo.authorized:
            return _authorized(command, state, memo, context)
        reason: PurchaseRejection = present(
            memo.reason, "purchase %s: rejected without a reason", command.purchase_id
        )
        return _rejected(command, body_fingerprint, reason, state.isp_id, memo.origin)
    at = calendar.epoch_seconds(command.occurred_at)
    rejection, memo = _judge_purchase(state, command, context, at, body_fingerprint, origin)
    if rejection is not None:
        return _rejected(command, body_fingerprint, rejection, state.isp_id, origin)
    memo = present(memo, "an authorization without its memo")
    return _authorized(command, state, memo, context)


def _judge_purchase(
    state: AccountState,
    command: PurchaseRequested,
    context: Context,
    at: int,
    body_fingerprint: str,
    origin: int | None,
) -> tuple[PurchaseRejection | None, PurchaseMemo | None]:
    """The rules of DESIGN.md §7, in order; the first that fails names the rejection."""
    if at < state.watermark_seconds - context.policy.horizon_seconds:
        return "stale_purchase", None
    isp = context.isp(state.isp_id, at, origin)
    if isp is None:
        return "isp_unknown", None
    # Event time (issue 14): older than its partition's progress by more than the ISP allows.
    lateness = isp.allowed_lateness_seconds
    if lateness is not None and at < context.progress.watermark_seconds - lateness:
        return "too_late", None
    if state.blocks and value_at(state.blocks, at) is not None:
        return "account_blocked", None
    publisher = context.publisher(command.publisher_id, at, origin)
    if publisher is None:
        return "publisher_unknown", None
    if publisher.blocked:
        return "publisher_blocked", None
    enterprise = state.kind == "enterprise"
    grant = value_at(state.employees.get(command.user_id, []), at) if enterprise else None
    if enterprise and (grant is None or not grant.authorised):
        return "employee_not_authorised", None
    limits = limits_at(state, context.base_limits(isp, state.kind), at)
    amount = command.amount_cents
    if amount < limits.min_purchase_cents:
        return "amount_below_minimum", None
    if amount > limits.max_purchase_cents:
        return "amount_above_maximum", None
    recent = state.recent.get(command.user_id, [])
    in_window = bisect_right(recent, at) - bisect_right(recent, at - limits.velocity_window_seconds)
    if in_window >= limits.velocity_max_purchases:
        return "velocity_exceeded", None
    attempts_max = limits.velocity_max_attempts_per_account
    if attempts_max is not None:  # every user's attempts, refused ones too (issue 14)
        attempts = state.attempts
        window_start = at - limits.velocity_window_seconds
        if bisect_right(attempts, at) - bisect_right(attempts, window_start) >= attempts_max:
            return "account_velocity_exceeded", None
    day = calendar.day_key(at)
    if state.day_spend.get(day, 0) + amount > limits.daily_cap_cents:
        return "daily_cap_exceeded", None
    period = calendar.period_of(at, isp.billing_day)
    if state.period_spend.get(period, 0) + amount > limits.monthly_cap_cents:
        return "monthly_cap_exceeded", None
    if grant is not None:
        budget = limits.employee_budget_cents if grant.budget_cents is None else grant.budget_cents
        spent = state.employee_spend.get(employee_spend_key(command.user_id, period), 0)
        if spent + amount > budget:
            return "employee_budget_exceeded", None
    billed, late_for = billing_period(period, context.closed_periods.get(isp.isp_id, ()))
    return None, PurchaseMemo(
        fingerprint=body_fingerprint,
        at_seconds=at,
        authorized=True,
        reason=None,
        amount_cents=amount,
        refunded_cents=0,
        vat_rate_bp=vat_rate_bp(publisher.vat_category, at),
        commission_bp=isp.commission_bp,
        revenue_share_bp=publisher.revenue_share_bp,
        day=day,
        period=period,
        billing_period=billed,
        late_for_period=late_for,
        user_id=command.user_id,
        publisher_id=command.publisher_id,
        origin=origin,
    )
