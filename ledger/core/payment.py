"""Two-phase payments (issue 14, docs/design/checkout.md): a hold takes cap room now, the publisher
captures (all or part) or voids it later, and holds left alone expire by a barrier carrying its
own time. Deciding and evolving are here; the dispatch is ledger.core.authorizer's and the
expiry's walk over a partition's holds ledger.core.batch's (and the runner's).

- A hold is judged by the purchase rules (`_judge_purchase`, on the purchase the hold stands
  for); accepted, it is `payment.reserved.v1`, rejected `purchase.rejected.v1` as a purchase.
- A capture is `purchase.authorized.v1` for the captured amount, with purchase_id = payment_id
  and the hold's time, rates and user: the money and the cap belong to the day and period the
  subscriber confirmed in; it is billed in that period or, once closed, the next open one.
- A void is `payment.voided.v1`; an expiry `payment.expired.v1`. Both release the room.
- A capture or void refused is `payment.command_rejected.v1`, decided afresh each time it comes.
"""

from __future__ import annotations

from bisect import insort
from collections.abc import Iterable, Mapping
from datetime import UTC
from typing import Final

from ledger.core import calendar, money
from ledger.core.context import Context, billing_period, event_id, fingerprint
from ledger.core.invariant import present
from ledger.core.purchase import _judge_purchase, _rejected
from ledger.core.state import AccountState, HoldMemo, employee_spend_key
from schemas.commands import (
    HoldsExpireRequested,
    PaymentCaptureRequested,
    PaymentHoldRequested,
    PaymentVoidRequested,
    PurchaseRequested,
)
from schemas.facts import (
    Fact,
    PaymentCommandRejected,
    PaymentExpired,
    PaymentReserved,
    PaymentVoided,
    PurchaseAuthorized,
    event_id_of,
)
from schemas.types import PaymentAction, PaymentCommandRejection

KIND: Final = "payment"

# An open hold of a partition, as its summary indexes it: account → payment → expiry (seconds,
# rounded down, so that the index finds every hold due; the exact time decides).
OpenHolds = dict[str, dict[str, int]]


# --- the hold ----------------------------------------------------------------------------------


def as_purchase(command: PaymentHoldRequested) -> PurchaseRequested:
    """The purchase a hold stands for: judged by the very rules of a purchase."""
    return PurchaseRequested(
        purchase_id=command.payment_id, account_id=command.account_id, user_id=command.user_id,
        publisher_id=command.publisher_id, amount_cents=command.amount_cents,
        category=command.category, description=command.description,
        occurred_at=command.occurred_at, content_id=command.content_id,
    )  # fmt: skip


def _reserved(
    command: PaymentHoldRequested, state: AccountState, hold: HoldMemo
) -> PaymentReserved:
    return PaymentReserved(
        event_id=event_id(KIND, command.payment_id, hold.fingerprint, None, hold.origin),
        payment_id=command.payment_id,
        account_id=command.account_id,
        account_kind=state.kind,
        isp_id=state.isp_id,
        user_id=command.user_id,
        publisher_id=command.publisher_id,
        category=command.category,
        description=command.description,
        occurred_at=command.occurred_at,
        amount_cents=command.amount_cents,
        hold_expires_at=command.hold_expires_at,
        vat_rate_bp=hold.vat_rate_bp,
        commission_bp=hold.commission_bp,
        revenue_share_bp=hold.revenue_share_bp,
        period=hold.period,
        body_fingerprint=hold.fingerprint,
        origin=hold.origin,
        content_id=command.content_id,
        consent=command.consent,
    )


def decide_hold(
    state: AccountState | None, command: PaymentHoldRequested, context: Context, origin: int | None
) -> Fact:
    body_fingerprint = fingerprint(command)
    purchase = as_purchase(command)
    if state is None:
        return _rejected(purchase, body_fingerprint, "account_unknown", None, origin)
    isp_id = state.isp_id
    hold = state.holds.get(command.payment_id)
    if hold is not None:
        if hold.fingerprint != body_fingerprint:
            return _rejected(purchase, body_fingerprint, "duplicate_with_different_body", isp_id,
                             origin)  # fmt: skip
        return _reserved(command, state, hold)  # the same hold again: the same fact again
    memo = state.purchases.get(command.payment_id)
    if memo is not None:  # a purchase, or this hold rejected before
        if memo.fingerprint != body_fingerprint or memo.reason is None:
            return _rejected(purchase, body_fingerprint, "duplicate_with_different_body", isp_id,
                             origin)  # fmt: skip
        return _rejected(purchase, body_fingerprint, memo.reason, isp_id, memo.origin)
    at = calendar.epoch_seconds(command.occurred_at)
    rejection, judged = _judge_purchase(state, purchase, context, at, body_fingerprint, origin)
    if rejection is not None:
        return _rejected(purchase, body_fingerprint, rejection, isp_id, origin)
    judged = present(judged, "hold %s: accepted without its memo", command.payment_id)
    return _reserved(command, state, _hold_memo(command, judged.vat_rate_bp, judged.commission_bp,
                                                judged.revenue_share_bp, judged.day, judged.period,
                                                body_fingerprint, origin))  # fmt: skip


def _hold_memo(
    command: PaymentHoldRequested | PaymentReserved,
    vat_rate_bp: int,
    commission_bp: int,
    revenue_share_bp: int,
    day: str,
    period: str,
    body_fingerprint: str,
    origin: int | None,
) -> HoldMemo:
    # In UTC: a state decoded from the store has its times in UTC (msgpack), and a capture's fact
    # must be the same whether its hold's state was decoded or not.
    occurred_at = command.occurred_at.astimezone(UTC)
    expires_at = command.hold_expires_at.astimezone(UTC)
    return HoldMemo(
        fingerprint=body_fingerprint,
        occurred_at=occurred_at,
        at_seconds=calendar.epoch_seconds(occurred_at),
        expires_at=expires_at,
        expires_at_seconds=calendar.epoch_seconds(expires_at),
        status="reserved",
        amount_cents=command.amount_cents,
        vat_rate_bp=vat_rate_bp,
        commission_bp=commission_bp,
        revenue_share_bp=revenue_share_bp,
        day=day,
        period=period,
        user_id=command.user_id,
        publisher_id=command.publisher_id,
        category=command.category,
        description=command.description,
        origin=origin,
    )


# --- capture and void --------------------------------------------------------------------------


def _refused(
    command: PaymentCaptureRequested | PaymentVoidRequested,
    action: PaymentAction,
    body_fingerprint: str,
    reason: PaymentCommandRejection,
    isp_id: str | None,
    origin: int | None,
) -> PaymentCommandRejected:
    """Decided afresh each time: the origin is in the id, as for a purchase of an unknown
    account (a later command may find the payment in another state)."""
    return PaymentCommandRejected(
        event_id=event_id_of(KIND, command.payment_id, body_fingerprint, reason, origin),
        payment_id=command.payment_id,
        account_id=command.account_id,
        publisher_id=command.publisher_id,
        action=action,
        amount_cents=command.amount_cents if isinstance(command, PaymentCaptureRequested) else None,
        occurred_at=command.occurred_at,
        reason=reason,
        body_fingerprint=body_fingerprint,
        isp_id=isp_id,
        origin=origin,
    )


def _finished(hold: HoldMemo) -> PaymentCommandRejection | None:
    if hold.status == "captured":
        return "reservation_captured"
    if hold.status == "voided":
        return "reservation_voided"
    if hold.status == "expired":
        return "reservation_expired"
    return None


def _captured(
    state: AccountState,
    payment_id: str,
    hold: HoldMemo,
    amount_cents: int,
    body_fingerprint: str,
    billed: str,
    late_for: str | None,
    origin: int | None,
) -> PurchaseAuthorized:
    split = money.split_amount(
        amount_cents, hold.vat_rate_bp, hold.commission_bp, hold.revenue_share_bp
    )
    return PurchaseAuthorized(
        event_id=event_id("purchase", payment_id, body_fingerprint, None, origin),
        purchase_id=payment_id,
        account_id=state.account_id,
        account_kind=state.kind,
        isp_id=state.isp_id,
        user_id=hold.user_id,
        publisher_id=hold.publisher_id,
        category=hold.category,
        description=hold.description,
        occurred_at=hold.occurred_at,
        amount_cents=amount_cents,
        net_cents=split.net_cents,
        vat_cents=split.vat_cents,
        vat_rate_bp=hold.vat_rate_bp,
        commission_bp=hold.commission_bp,
        revenue_share_bp=hold.revenue_share_bp,
        billing_period=billed,
        late_for_period=late_for,
        body_fingerprint=body_fingerprint,
        postings=money.purchase_postings(split, state.account_id, state.isp_id, hold.publisher_id),
        origin=origin,
    )


def _payment_of(
    state: AccountState | None, command: PaymentCaptureRequested | PaymentVoidRequested
) -> HoldMemo | None:
    """The hold the command names, if it is the calling publisher's (another publisher's payment
    is unknown to it: nothing tells it apart from one that does not exist)."""
    hold = None if state is None else state.holds.get(command.payment_id)
    return hold if hold is not None and hold.publisher_id == command.publisher_id else None


def decide_capture(
    state: AccountState | None,
    command: PaymentCaptureRequested,
    context: Context,
    origin: int | None,
) -> Fact:
    body_fingerprint = fingerprint(command)
    hold = _payment_of(state, command)
    if state is None or hold is None:
        isp_id = None if state is None else state.isp_id
        return _refused(command, "capture", body_fingerprint, "payment_unknown", isp_id, origin)
    isp_id = state.isp_id
    if hold.status == "captured" and hold.finish_fingerprint == body_fingerprint:
        # The same capture again: the same fact again.
        return _captured(
            state, command.payment_id, hold, hold.captured_cents, body_fingerprint,
            hold.billing_period or hold.period, hold.late_for_period, hold.finish_origin,
        )  # fmt: skip
    finished = _finished(hold)
    if finished is None and command.occurred_at >= hold.expires_at:
        finished = "reservation_expired"  # in event time, before the barrier came
    if finished is None and command.amount_cents > hold.amount_cents:
        finished = "capture_exceeds_hold"
    if finished is not None:
        return _refused(command, "capture", body_fingerprint, finished, isp_id, origin)
    billed, late_for = billing_period(hold.period, context.closed_periods.get(isp_id, ()))
    return _captured(state, command.payment_id, hold, command.amount_cents, body_fingerprint,
                     billed, late_for, origin)  # fmt: skip


def _voided(
    command: PaymentVoidRequested, state: AccountState, hold: HoldMemo, body_fingerprint: str,
    origin: int | None,
) -> PaymentVoided:  # fmt: skip
    return PaymentVoided(
        event_id=f"{event_id_of(KIND, command.payment_id, body_fingerprint)}.voided",
        payment_id=command.payment_id,
        account_id=command.account_id,
        isp_id=state.isp_id,
        publisher_id=hold.publisher_id,
        amount_cents=hold.amount_cents,
        occurred_at=command.occurred_at,
        body_fingerprint=body_fingerprint,
        origin=origin,
    )


def decide_void(
    state: AccountState | None, command: PaymentVoidRequested, context: Context, origin: int | None
) -> Fact:
    body_fingerprint = fingerprint(command)
    hold = _payment_of(state, command)
    if state is None or hold is None:
        isp_id = None if state is None else state.isp_id
        return _refused(command, "void", body_fingerprint, "payment_unknown", isp_id, origin)
    if hold.status == "voided" and hold.finish_fingerprint == body_fingerprint:
        return _voided(command, state, hold, body_fingerprint, hold.finish_origin)
    finished = _finished(hold)
    if finished is None and command.occurred_at >= hold.expires_at:
        finished = "reservation_expired"
    if finished is not None:
        return _refused(command, "void", body_fingerprint, finished, state.isp_id, origin)
    return _voided(command, state, hold, body_fingerprint, origin)


# --- expiry ------------------------------------------------------------------------------------


def due_holds(open_holds: Mapping[str, Mapping[str, int]], as_of_seconds: int) -> list[
    tuple[int, str, str]
]:  # fmt: skip
    """(expiry, payment, account) of every indexed hold due at `as_of_seconds`, in the order the
    barrier expires them: by expiry, then payment and account id (the same order live, in a
    replay and in the runner)."""
    return sorted(
        (expires, payment_id, account_id)
        for account_id, holds in open_holds.items()
        for payment_id, expires in holds.items()
        if expires <= as_of_seconds
    )


def open_holds_of(states: Iterable[AccountState]) -> OpenHolds:
    """The index of the open holds of these accounts, as a partition's summary keeps it."""
    index: OpenHolds = {}
    for state in states:
        index_account(index, state)
    return index


def index_account(index: OpenHolds, state: AccountState) -> None:
    """Make the index say what the account's state says of its open holds (the state is the
    truth: the summary is written after it, and may have been lost)."""
    found = {
        payment_id: hold.expires_at_seconds
        for payment_id, hold in state.holds.items()
        if hold.status == "reserved"
    }
    if found:
        index[state.account_id] = found
    else:
        index.pop(state.account_id, None)


def decide_expiry(
    state: AccountState, payment_id: str, command: HoldsExpireRequested, origin: int | None
) -> PaymentExpired | None:
    """The hold's expiry, if it is still reserved and due at the barrier's `as_of`."""
    hold = state.holds.get(payment_id)
    if hold is None or hold.status != "reserved" or hold.expires_at > command.as_of:
        return None
    return PaymentExpired(
        event_id=f"{event_id_of(KIND, payment_id, hold.fingerprint)}.expired",
        payment_id=payment_id,
        account_id=state.account_id,
        isp_id=state.isp_id,
        publisher_id=hold.publisher_id,
        amount_cents=hold.amount_cents,
        occurred_at=command.as_of,
        origin=origin,
    )


# --- evolve ------------------------------------------------------------------------------------


def apply_reserved(state: AccountState, fact: PaymentReserved) -> None:
    """The hold takes room like a purchase: the day's, the period's, the employee's budget, and
    a velocity stamp."""
    if fact.payment_id in state.holds:
        return
    at = calendar.epoch_seconds(fact.occurred_at)
    day = calendar.day_key(at)
    hold = _hold_memo(fact, fact.vat_rate_bp, fact.commission_bp, fact.revenue_share_bp, day,
                      fact.period, fact.body_fingerprint, fact.origin)  # fmt: skip
    state.holds[fact.payment_id] = hold
    amount = fact.amount_cents
    state.day_spend[day] = state.day_spend.get(day, 0) + amount
    state.period_spend[fact.period] = state.period_spend.get(fact.period, 0) + amount
    if state.kind == "enterprise":
        key = employee_spend_key(fact.user_id, fact.period)
        state.employee_spend[key] = state.employee_spend.get(key, 0) + amount
    insort(state.recent.setdefault(fact.user_id, []), at)
    insort(state.attempts, at)  # an attempt, for the account's velocity
    state.watermark_seconds = max(state.watermark_seconds, at)


def _release(state: AccountState, hold: HoldMemo) -> None:
    """Give the room the hold took back, once (the caller changes its status from reserved).
    A key already pruned (a day behind the horizon) has nothing left to give back."""
    amount = hold.amount_cents
    if hold.day in state.day_spend:
        state.day_spend[hold.day] -= amount
    if hold.period in state.period_spend:
        state.period_spend[hold.period] -= amount
    if state.kind == "enterprise":
        key = employee_spend_key(hold.user_id, hold.period)
        if key in state.employee_spend:
            state.employee_spend[key] -= amount


def apply_captured(state: AccountState, fact: PurchaseAuthorized) -> None:
    """Before the capture's purchase is applied as any purchase (which takes the room of the
    amount captured and a velocity stamp): the hold's room and stamp are given back."""
    hold = state.holds.get(fact.purchase_id)
    if hold is None or hold.status != "reserved":
        return
    _release(state, hold)
    stamps = state.recent.get(hold.user_id)
    if stamps is not None and hold.at_seconds in stamps:
        stamps.remove(hold.at_seconds)
    if hold.at_seconds in state.attempts:  # the capture is the same attempt: counted once
        state.attempts.remove(hold.at_seconds)
    hold.status = "captured"
    hold.captured_cents = fact.amount_cents
    hold.finish_fingerprint = fact.body_fingerprint
    hold.finish_origin = fact.origin
    hold.billing_period = fact.billing_period
    hold.late_for_period = fact.late_for_period
    hold.finished_at_seconds = hold.at_seconds


def apply_voided(state: AccountState, fact: PaymentVoided) -> None:
    hold = state.holds.get(fact.payment_id)
    if hold is None or hold.status != "reserved":
        return
    _release(state, hold)
    hold.status = "voided"
    hold.finish_fingerprint = fact.body_fingerprint
    hold.finish_origin = fact.origin
    hold.finished_at_seconds = calendar.epoch_seconds(fact.occurred_at)


def apply_expired(state: AccountState, fact: PaymentExpired) -> None:
    hold = state.holds.get(fact.payment_id)
    if hold is None or hold.status != "reserved":
        return
    _release(state, hold)
    hold.status = "expired"
    hold.finish_origin = fact.origin
    hold.finished_at_seconds = calendar.epoch_seconds(fact.occurred_at)


def prune_holds(state: AccountState, cutoff: int) -> None:
    """Forget finished holds older than the cutoff, like purchases, unless the capture's purchase
    is still remembered (refunded: its capture must still answer a retry). An open hold is never
    forgotten, whatever its age: it still holds room and must still expire."""
    state.holds = {
        payment_id: hold
        for payment_id, hold in state.holds.items()
        if hold.status == "reserved" or hold.at_seconds >= cutoff or payment_id in state.purchases
    }
