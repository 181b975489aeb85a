"""The authorizer's decision function: (account state, command) → (new state, facts).

It is split the usual event-sourced way:
- `decide(state, command, context)` is pure: it reads the state and returns the facts;
- `evolve(state, fact, policy)` applies one fact to the state (in place, for speed: the caller
  owns the state, which is one table slot) and returns it; applying a fact twice changes nothing;
- `step` is the two together.
Decisions use the command's `occurred_at`, never the clock, so a replay decides the same way.
"""

from __future__ import annotations

from bisect import bisect_right, insort
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from hashlib import blake2b
from typing import Final

from ledger.core import calendar, money
from ledger.core.reference import (
    VELOCITY_WINDOW_MAX_SECONDS,
    Limits,
    Reference,
    base_limits,
    vat_rate_bp,
)
from ledger.core.state import (
    AccountState,
    ClosedPeriods,
    EmployeeGrant,
    PurchaseMemo,
    RefundMemo,
    employee_spend_key,
)
from ledger.core.timeline import prune_before, set_from, value_at
from schemas import codec
from schemas.commands import (
    AccountBlockRequested,
    AccountCommand,
    AccountOpenRequested,
    AccountUnblockRequested,
    EmployeeAuthoriseRequested,
    EmployeeRevokeRequested,
    LimitsSetRequested,
    Message,
    PeriodCloseRequested,
    PurchaseRequested,
    RefundRequested,
)
from schemas.facts import (
    AccountBlocked,
    AccountOpened,
    AccountUnblocked,
    CommandRejected,
    EmployeeAuthorised,
    EmployeeRevoked,
    Fact,
    LimitsSet,
    PeriodClosed,
    PurchaseAuthorized,
    PurchaseRefunded,
    PurchaseRejected,
    RefundRejected,
    event_id_of,
)
from schemas.reference import IspRegistered
from schemas.types import CommandRejection, PurchaseRejection, RefundRejection

HORIZON_SECONDS_DEFAULT: Final = 90 * calendar.SECONDS_PER_DAY
# Pruning an account costs a pass over its memos: done when its newest event has moved an eighth
# of the horizon since the last time, so the state stays under 9/8 of the horizon (measured: daily
# pruning took a third of the decision time of `ledger bench core`).
PRUNE_FRACTION: Final = 8
# Rejections that say nothing about the purchase id itself: they are not remembered, so they
# neither take the id nor answer for it later.
_UNREMEMBERED: Final = frozenset(
    {"duplicate_with_different_body", "stale_purchase", "stale_refund", "account_unknown"}
)


@dataclass(frozen=True, slots=True)
class Policy:
    """How long an account remembers purchase ids. A purchase or refund older than the horizon
    (behind the newest one the account has seen) is rejected as stale, so that every id still
    answerable is remembered: idempotency holds within the horizon, and the state is bounded."""

    horizon_seconds: int = HORIZON_SECONDS_DEFAULT

    def __post_init__(self) -> None:
        if self.horizon_seconds < calendar.SECONDS_PER_DAY:
            raise ValueError("the idempotency horizon must be at least one day")


@dataclass(frozen=True)
class Context:
    reference: Reference
    closed_periods: Mapping[str, Collection[str]] = field(default_factory=dict)  # isp → periods
    policy: Policy = field(default_factory=Policy)
    # An ISP's limits for a kind of account, resolved once per reference record.
    _base_limits: dict[tuple[int, str], tuple[IspRegistered, Limits]] = field(
        default_factory=dict, repr=False, compare=False
    )

    def base_limits(self, isp: IspRegistered, kind: str) -> Limits:
        # Keyed by identity for speed; the record is kept beside its limits, so that an id reused
        # by a newer record after the old one is gone never finds the old limits.
        found = self._base_limits.get((id(isp), kind))
        if found is None or found[0] is not isp:
            found = self._base_limits[id(isp), kind] = (isp, base_limits(isp, kind))  # type: ignore[arg-type]
        return found[1]


@dataclass(frozen=True, slots=True)
class Decision:
    state: AccountState | None
    facts: list[Fact]


def fingerprint(command: Message) -> str:
    """Of the body, not of the version that carried it (schemas.codec.body): a purchase sent as
    v1 and again as v2 is the same purchase."""
    return blake2b(codec.body(command), digest_size=16).hexdigest()


def step(
    state: AccountState | None, command: AccountCommand, context: Context, origin: int | None = None
) -> Decision:
    """`origin` is the command's offset in its partition of ledger.commands (see Origin in
    schemas/facts.py); None outside a stream."""
    facts = decide(state, command, context, origin)
    for fact in facts:
        state = evolve(state, fact, context.policy)
    return Decision(state, facts)


def decide(
    state: AccountState | None, command: AccountCommand, context: Context, origin: int | None = None
) -> list[Fact]:
    if isinstance(command, PurchaseRequested):
        return [_decide_purchase(state, command, context, origin)]
    if isinstance(command, RefundRequested):
        return [_decide_refund(state, command, context, origin)]
    return [_decide_admin(state, command, context)]


# --- purchases ------------------------------------------------------------------------------


def _event_id(
    kind: str, key: str, body_fingerprint: str, reason: str | None, origin: int | None
) -> str:
    """Deterministic: the same decision gets the same id again, another decision another id
    (schemas.facts.event_id_of). A rejection the account does not remember is decided afresh each
    time it comes, so each such decision gets its own id (the origin tells them apart; a replay of
    the same command has the same origin)."""
    return event_id_of(
        kind, key, body_fingerprint, reason, origin if reason in _UNREMEMBERED else None
    )


def _rejected(
    command: PurchaseRequested,
    body_fingerprint: str,
    reason: PurchaseRejection,
    isp_id: str | None,
    origin: int | None,
) -> PurchaseRejected:
    return PurchaseRejected(
        event_id=_event_id("purchase", command.purchase_id, body_fingerprint, reason, origin),
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
    command: PurchaseRequested, state: AccountState, memo: PurchaseMemo
) -> PurchaseAuthorized:
    split = money.split_amount(
        command.amount_cents, memo.vat_rate_bp, memo.commission_bp, memo.revenue_share_bp
    )
    return PurchaseAuthorized(
        event_id=_event_id("purchase", command.purchase_id, memo.fingerprint, None, memo.origin),
        purchase_id=command.purchase_id,
        account_id=command.account_id,
        account_kind=state.kind,  # type: ignore[arg-type]
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


def limits_at(state: AccountState, base: Limits, seconds: int) -> Limits:
    return base.overridden(value_at(state.limits, seconds)) if state.limits else base


def billing_period(period: str, closed: Collection[str]) -> tuple[str, str | None]:
    """The period a fact is billed in: its own, or the first open one after it when its own was
    closed already (a late adjustment, pointing back to the period it belongs to)."""
    billed = period
    while billed in closed:
        billed = calendar.next_period(billed)
    return billed, (period if billed != period else None)


def _decide_purchase(
    state: AccountState | None, command: PurchaseRequested, context: Context, origin: int | None
) -> Fact:
    body_fingerprint = fingerprint(command)
    if state is None:
        return _rejected(command, body_fingerprint, "account_unknown", None, origin)
    memo = state.purchases.get(command.purchase_id)
    if memo is not None:
        if memo.fingerprint != body_fingerprint:
            return _rejected(
                command, body_fingerprint, "duplicate_with_different_body", state.isp_id, origin
            )
        if memo.authorized:
            return _authorized(command, state, memo)
        reason: PurchaseRejection = memo.reason  # type: ignore[assignment]
        return _rejected(command, body_fingerprint, reason, state.isp_id, memo.origin)
    at = calendar.epoch_seconds(command.occurred_at)
    rejection, memo = _judge_purchase(state, command, context, at, body_fingerprint, origin)
    if rejection is not None:
        return _rejected(command, body_fingerprint, rejection, state.isp_id, origin)
    assert memo is not None
    return _authorized(command, state, memo)


def _judge_purchase(
    state: AccountState,
    command: PurchaseRequested,
    context: Context,
    at: int,
    body_fingerprint: str,
    origin: int | None,
) -> tuple[PurchaseRejection | None, PurchaseMemo | None]:
    """The rules of DESIGN.md §7, in order; the first that fails names the rejection."""
    if at < state.watermark - context.policy.horizon_seconds:
        return "stale_purchase", None
    isp = context.reference.isps.get(state.isp_id)
    if isp is None:
        return "isp_unknown", None
    if state.blocks and value_at(state.blocks, at) is not None:
        return "account_blocked", None
    publisher = context.reference.publishers.get(command.publisher_id)
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
        at=at,
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


# --- refunds --------------------------------------------------------------------------------


def _refund_rejected(
    command: RefundRequested, body_fingerprint: str, reason: RefundRejection, origin: int | None
) -> RefundRejected:
    return RefundRejected(
        event_id=_event_id("refund", command.refund_id, body_fingerprint, reason, origin),
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
    assert memo.billing_period is not None
    return PurchaseRefunded(
        event_id=_event_id("refund", command.refund_id, memo.fingerprint, None, memo.origin),
        refund_id=command.refund_id,
        purchase_id=command.purchase_id,
        account_id=command.account_id,
        account_kind=state.kind,  # type: ignore[arg-type]
        isp_id=state.isp_id,
        user_id=purchase.user_id,
        publisher_id=purchase.publisher_id,
        occurred_at=command.occurred_at,
        amount_cents=command.amount_cents,
        net_cents=split.net_cents,
        vat_cents=split.vat_cents,
        refunded_before_cents=memo.refunded_before_cents,
        purchase_billing_period=purchase.billing_period,
        billing_period=memo.billing_period,
        late_for_period=memo.late_for_period,
        reason=command.reason,
        body_fingerprint=memo.fingerprint,
        origin=memo.origin,
        postings=money.refund_postings(
            split, command.account_id, state.isp_id, purchase.publisher_id
        ),
    )


def _decide_refund(
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
            purchase = state.purchases.get(memo.purchase_id)
            assert purchase is not None, f"refund {command.refund_id}: its purchase was forgotten"
            return _refunded(command, state, purchase, memo)
        return _refund_rejected(command, body_fingerprint, memo.reason, memo.origin)  # type: ignore[arg-type]
    at = calendar.epoch_seconds(command.occurred_at)
    reason, memo = _judge_refund(state, command, context, at, body_fingerprint, origin)
    if reason is not None:
        return _refund_rejected(command, body_fingerprint, reason, origin)
    assert memo is not None
    return _refunded(command, state, state.purchases[command.purchase_id], memo)


def _judge_refund(
    state: AccountState,
    command: RefundRequested,
    context: Context,
    at: int,
    body_fingerprint: str,
    origin: int | None,
) -> tuple[RefundRejection | None, RefundMemo | None]:
    if at < state.watermark - context.policy.horizon_seconds:
        return "stale_refund", None
    purchase = state.purchases.get(command.purchase_id)
    if purchase is None:
        return "purchase_unknown", None
    if not purchase.authorized:
        return "purchase_not_authorized", None
    if at < purchase.at:
        return "refund_before_purchase", None
    if purchase.refunded_cents + command.amount_cents > purchase.amount_cents:
        return "refund_exceeds_purchase", None
    isp = context.reference.isps.get(state.isp_id)
    # The ISP's calendar cannot change under a purchase it billed: without the ISP in the
    # reference data, the refund is billed in the purchase's own calendar month.
    billing_day = isp.billing_day if isp else 1
    own_period = calendar.period_of(at, billing_day)
    billed, late_for = billing_period(own_period, context.closed_periods.get(state.isp_id, ()))
    return None, RefundMemo(
        fingerprint=body_fingerprint,
        at=at,
        purchase_id=command.purchase_id,
        accepted=True,
        reason=None,
        refunded_before_cents=purchase.refunded_cents,
        billing_period=billed,
        late_for_period=late_for,
        origin=origin,
    )


# --- account administration -----------------------------------------------------------------


AdminCommand = (
    AccountOpenRequested
    | AccountBlockRequested
    | AccountUnblockRequested
    | LimitsSetRequested
    | EmployeeAuthoriseRequested
    | EmployeeRevokeRequested
    | PeriodCloseRequested
)


def _command_id(command: AdminCommand, reason: CommandRejection | None = None) -> str:
    """An admin fact is a function of its command's body and the outcome: a command rejected (an
    unknown account, ISP or employee) and accepted later has two facts under two ids (issue 12);
    the same outcome again is the same fact again."""
    return event_id_of("command", command.command_id, fingerprint(command), reason)


def _command_rejected(command: AdminCommand, reason: CommandRejection) -> CommandRejected:
    tag: str = command.__struct_config__.tag  # type: ignore[assignment]
    return CommandRejected(
        event_id=_command_id(command, reason),
        command_id=command.command_id,
        command_type=tag,
        occurred_at=command.occurred_at,
        reason=reason,
        account_id=getattr(command, "account_id", None),
        isp_id=getattr(command, "isp_id", None),
    )


def _decide_admin(state: AccountState | None, command: AccountCommand, context: Context) -> Fact:
    assert not isinstance(command, PurchaseRequested | RefundRequested)
    event_id = _command_id(command)
    if isinstance(command, AccountOpenRequested):
        return _decide_open(state, command, context, event_id)
    if state is None:
        return _command_rejected(command, "account_unknown")
    if isinstance(command, AccountBlockRequested):
        return AccountBlocked(
            event_id, command.command_id, command.account_id, command.reason, command.occurred_at
        )
    if isinstance(command, AccountUnblockRequested):
        return AccountUnblocked(
            event_id, command.command_id, command.account_id, command.occurred_at
        )
    if isinstance(command, LimitsSetRequested):
        return LimitsSet(
            event_id, command.command_id, command.account_id, command.limits, command.occurred_at
        )
    if state.kind != "enterprise":
        return _command_rejected(command, "not_enterprise")
    if isinstance(command, EmployeeAuthoriseRequested):
        return EmployeeAuthorised(
            event_id,
            command.command_id,
            command.account_id,
            command.user_id,
            command.occurred_at,
            command.budget_cents,
        )
    assert isinstance(command, EmployeeRevokeRequested)
    if command.user_id not in state.employees:
        return _command_rejected(command, "employee_unknown")
    return EmployeeRevoked(
        event_id, command.command_id, command.account_id, command.user_id, command.occurred_at
    )


def _decide_open(
    state: AccountState | None, command: AccountOpenRequested, context: Context, event_id: str
) -> Fact:
    opened = AccountOpened(
        event_id,
        command.command_id,
        command.account_id,
        command.isp_id,
        command.kind,
        command.occurred_at,
        command.company_name,
    )
    if state is not None:
        if state.opened_fingerprint == fingerprint(command):
            return opened  # the same request again: the same fact again
        return _command_rejected(command, "account_exists")
    if command.isp_id not in context.reference.isps:
        return _command_rejected(command, "isp_unknown")
    return opened


# --- evolve ---------------------------------------------------------------------------------


def evolve(state: AccountState | None, fact: Fact, policy: Policy) -> AccountState | None:
    """Apply one fact of this account. Idempotent: a fact applied twice changes nothing."""
    if isinstance(fact, AccountOpened):
        return state if state is not None else _opened(fact)
    if state is None:
        return None
    if isinstance(fact, PurchaseAuthorized):
        _apply_authorized(state, fact)
    elif isinstance(fact, PurchaseRejected):
        _apply_purchase_rejected(state, fact)
    elif isinstance(fact, PurchaseRefunded):
        _apply_refunded(state, fact)
    elif isinstance(fact, RefundRejected):
        _apply_refund_rejected(state, fact)
    else:
        _apply_admin(state, fact)
    if state.watermark - state.pruned_at >= policy.horizon_seconds // PRUNE_FRACTION:
        prune(state, state.watermark - policy.horizon_seconds)
        state.pruned_at = state.watermark
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
        opened_at=at,
        watermark=at,
        pruned_at=at,
    )


def _advance(state: AccountState, at: int) -> None:
    state.watermark = max(state.watermark, at)


def _apply_authorized(state: AccountState, fact: PurchaseAuthorized) -> None:
    if fact.purchase_id in state.purchases:
        return
    at = calendar.epoch_seconds(fact.occurred_at)
    period = fact.late_for_period or fact.billing_period
    day = calendar.day_key(at)
    state.purchases[fact.purchase_id] = PurchaseMemo(
        fingerprint=fact.body_fingerprint,
        at=at,
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
    state.owed_cents += amount
    state.purchases_authorized += 1
    _advance(state, at)


def _apply_purchase_rejected(state: AccountState, fact: PurchaseRejected) -> None:
    if fact.reason in _UNREMEMBERED or fact.purchase_id in state.purchases:
        return
    at = calendar.epoch_seconds(fact.occurred_at)
    state.purchases[fact.purchase_id] = PurchaseMemo(
        fingerprint=fact.body_fingerprint,
        at=at,
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
    _advance(state, at)


def _apply_refunded(state: AccountState, fact: PurchaseRefunded) -> None:
    if fact.refund_id in state.refunds:
        return
    purchase = state.purchases.get(fact.purchase_id)
    # A refund is decided only against a remembered purchase, and a purchase outlives its refunds.
    assert purchase is not None, f"refund {fact.refund_id} of a purchase the account forgot"
    at = calendar.epoch_seconds(fact.occurred_at)
    state.refunds[fact.refund_id] = RefundMemo(
        fingerprint=fact.body_fingerprint,
        at=at,
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
    assert purchase.refunded_cents <= purchase.amount_cents, "refunded more than the purchase"
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
    if fact.reason in _UNREMEMBERED or fact.refund_id in state.refunds:
        return
    at = calendar.epoch_seconds(fact.occurred_at)
    state.refunds[fact.refund_id] = RefundMemo(
        fingerprint=fact.body_fingerprint,
        at=at,
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
        raise AssertionError(f"a fact of another account's kind: {type(fact).__name__}")


def prune(state: AccountState, cutoff: int) -> None:
    """Forget what no decision after `cutoff` can need: purchase and refund memos older than
    it (such purchases are rejected as stale), spend of days and periods before it, velocity
    timestamps older than the longest window, and superseded settings.

    A purchase is kept as long as an accepted refund of it is: a refund remembered answers a
    retry with the same fact again, which it builds from its purchase (issue 12: without it, a
    retry got a rejection without a reason under the refund's id)."""
    state.refunds = {key: memo for key, memo in state.refunds.items() if memo.at >= cutoff}
    refunded = {memo.purchase_id for memo in state.refunds.values() if memo.accepted}
    state.purchases = {
        key: memo for key, memo in state.purchases.items() if memo.at >= cutoff or key in refunded
    }
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
    oldest_recent = state.watermark - VELOCITY_WINDOW_MAX_SECONDS
    for user, stamps in list(state.recent.items()):
        kept = stamps[bisect_right(stamps, oldest_recent - 1) :]
        if kept:
            state.recent[user] = kept
        else:
            del state.recent[user]
    prune_before(state.blocks, cutoff)
    prune_before(state.limits, cutoff)
    for timeline in state.employees.values():
        prune_before(timeline, cutoff)


# --- billing periods per partition ----------------------------------------------------------


def decide_close(
    closed: ClosedPeriods, command: PeriodCloseRequested, reference: Reference
) -> Fact:
    """A period closes in a partition when its close command passes there. It cannot close before
    it has ended, and closes once: the same command again gives the same fact again."""
    body_fingerprint = fingerprint(command)
    isp = reference.isps.get(command.isp_id)
    if isp is None:
        return _command_rejected(command, "isp_unknown")
    closed_by = closed.of(command.isp_id).get(command.period)
    if closed_by is not None and closed_by != body_fingerprint:
        return _command_rejected(command, "period_already_closed")
    _, end = calendar.period_bounds(command.period, isp.billing_day)
    if closed_by is None and command.occurred_at < end:
        return _command_rejected(command, "period_not_ended")
    # One id per partition's close of a period, whichever command closed it: there is one such
    # fact (a second close is refused above), so two different facts under this id would be a
    # broken close barrier, which the projection writer stops on rather than applying both.
    return PeriodClosed(
        event_id=f"period.{command.isp_id}.{command.period}.{command.partition}",
        command_id=command.command_id,
        isp_id=command.isp_id,
        period=command.period,
        partition=command.partition,
        partitions=command.partitions,
        occurred_at=command.occurred_at,
    )


def evolve_close(closed: ClosedPeriods, fact: Fact, command: PeriodCloseRequested) -> ClosedPeriods:
    if isinstance(fact, PeriodClosed):
        closed.by_isp.setdefault(fact.isp_id, {}).setdefault(fact.period, fingerprint(command))
    return closed
