"""Deciding a refund of (part of) a purchase the account remembers; the same refund again is
answered with the same fact again."""

from __future__ import annotations

from ledger.core import calendar, money
from ledger.core.context import Context, billing_period, event_id, fingerprint
from ledger.core.invariant import present
from ledger.core.state import AccountState, PurchaseMemo, RefundMemo
from schemas.commands import RefundRequested
from schemas.facts import Fact, PurchaseRefunded, RefundRejected
from schemas.types import RefundRejection


def _refund_rejected(
    command: RefundRequested, body_fingerprint: str, reason: RefundRejection, origin: int | None
) -> RefundRejected:
    return RefundRejected(
        event_id=event_id("refund", command.refund_id, body_fingerprint, reason, origin),
        refund_id=command.refund_id,
        purchase_id=command.purchase_id,
        account_id=command.account_id,
        amount_cents=command.amount_cents,
        occurred_at=command.occurred_at,
        reason=reason,
        body_fingerprint=body_fingerprint,
        origin=origin,
    )


def _refunded(
    command: RefundRequested, state: AccountState, purchase: PurchaseMemo, memo: RefundMemo
) -> PurchaseRefunded:
    split = money.refund_split(
        memo.refunded_before_cents,
        command.amount_cents,
        purchase.vat_rate_bp,
        purchase.commission_bp,
        purchase.revenue_share_bp,
    )
    billed = present(memo.billing_period, "refund %s: accepted with no period", command.refund_id)
    return PurchaseRefunded(
        event_id=event_id("refund", command.refund_id, memo.fingerprint, None, memo.origin),
        refund_id=command.refund_id,
        purchase_id=command.purchase_id,
        account_id=command.account_id,
        account_kind=state.kind,
        isp_id=state.isp_id,
        user_id=purchase.user_id,
        publisher_id=purchase.publisher_id,
        occurred_at=command.occurred_at,
        amount_cents=command.amount_cents,
        net_cents=split.net_cents,
        vat_cents=split.vat_cents,
        refunded_before_cents=memo.refunded_before_cents,
        purchase_billing_period=purchase.billing_period,
        billing_period=billed,
        late_for_period=memo.late_for_period,
        reason=command.reason,
        body_fingerprint=memo.fingerprint,
        origin=memo.origin,
        postings=money.refund_postings(
            split, command.account_id, state.isp_id, purchase.publisher_id
        ),
    )


def decide_refund(
    state: AccountState | None, command: RefundRequested, context: Context, origin: int | None
) -> Fact:
    body_fingerprint = fingerprint(command)
    if state is None:
        return _refund_rejected(command, body_fingerprint, "account_unknown", origin)
    memo = state.refunds.get(command.refund_id)
    if memo is not None:
        if memo.fingerprint != body_fingerprint:
            return _refund_rejected(
                command, body_fingerprint, "duplicate_with_different_body", origin
            )
        if memo.accepted:
            # A purchase is remembered as long as a refund of it is (`prune`).
            purchase = present(
                state.purchases.get(memo.purchase_id),
                "refund %s: its purchase was forgotten", command.refund_id,
            )  # fmt: skip
            return _refunded(command, state, purchase, memo)
        remembered: RefundRejection = present(
            memo.reason, "refund %s: rejected without a reason", command.refund_id
        )
        return _refund_rejected(command, body_fingerprint, remembered, memo.origin)
    at = calendar.epoch_seconds(command.occurred_at)
    reason, memo = _judge_refund(state, command, context, at, body_fingerprint, origin)
    if reason is not None:
        return _refund_rejected(command, body_fingerprint, reason, origin)
    memo = present(memo, "an accepted refund without its memo")
    return _refunded(command, state, state.purchases[command.purchase_id], memo)


def _judge_refund(
    state: AccountState,
    command: RefundRequested,
    context: Context,
    at: int,
    body_fingerprint: str,
    origin: int | None,
) -> tuple[RefundRejection | None, RefundMemo | None]:
    if at < state.watermark_seconds - context.policy.horizon_seconds:
        return "stale_refund", None
    purchase = state.purchases.get(command.purchase_id)
    if purchase is None:
        return "purchase_unknown", None
    if not purchase.authorized:
        return "purchase_not_authorized", None
    if at < purchase.at_seconds:
        return "refund_before_purchase", None
    if purchase.refunded_cents + command.amount_cents > purchase.amount_cents:
        return "refund_exceeds_purchase", None
    isp = context.isp(state.isp_id, at, origin)
    # The ISP's calendar cannot change under a purchase it billed: without the ISP in the
    # reference data, the refund is billed in the purchase's own calendar month.
    billing_day = isp.billing_day if isp else 1
    own_period = calendar.period_of(at, billing_day)
    billed, late_for = billing_period(own_period, context.closed_periods.get(state.isp_id, ()))
    return None, RefundMemo(
        fingerprint=body_fingerprint,
        at_seconds=at,
        purchase_id=command.purchase_id,
        accepted=True,
        reason=None,
        refunded_before_cents=purchase.refunded_cents,
        billing_period=billed,
        late_for_period=late_for,
        origin=origin,
    )
