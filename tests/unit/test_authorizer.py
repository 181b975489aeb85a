"""The authorizer's rules, one at a time, on the pure core (no broker, no database)."""

from __future__ import annotations

from datetime import timedelta

import pytest

from ledger.core.authorizer import HORIZON_SECONDS_DEFAULT, Policy
from ledger.core.runner import LocalAuthorizer
from ledger.core.state import decode_account, decode_closed, encode_state
from schemas.facts import (
    AccountBlocked,
    AccountOpened,
    CommandRejected,
    EmployeeAuthorised,
    Fact,
    PeriodClosed,
    PurchaseAuthorized,
    PurchaseRefunded,
    PurchaseRejected,
    RefundRejected,
)
from tests import builders as b
from tests.builders import REFERENCE, at


def _one(ledger: LocalAuthorizer, command: object) -> Fact:
    facts = ledger.handle(command)  # type: ignore[arg-type]
    assert len(facts) == 1
    return facts[0]


def _reason(fact: Fact) -> str:
    if isinstance(fact, PurchaseAuthorized | PurchaseRefunded):
        return "ok"
    return fact.reason  # type: ignore[union-attr, no-any-return]


@pytest.fixture
def ledger() -> LocalAuthorizer:
    ledger = LocalAuthorizer(REFERENCE)
    assert isinstance(_one(ledger, b.open_account("acct")), AccountOpened)
    return ledger


def test_authorized_purchase_carries_its_split_and_postings(ledger: LocalAuthorizer) -> None:
    fact = _one(ledger, b.purchase("acct", 266, purchase_id="p1"))
    assert isinstance(fact, PurchaseAuthorized)
    assert (fact.net_cents, fact.vat_cents, fact.vat_rate_bp) == (222, 44, 1960)
    assert fact.isp_id == "orange" and fact.billing_period == "2006-03"
    assert fact.late_for_period is None
    assert sum(p.amount_cents for p in fact.postings) == 0
    parties = {p.party: p.amount_cents for p in fact.postings}
    assert parties == {"account": 266, "tax": -44, "isp": -33, "publisher": -133, "platform": -56}


def test_unknown_account_isp_and_publishers(ledger: LocalAuthorizer) -> None:
    assert _reason(_one(ledger, b.purchase("nobody"))) == "account_unknown"
    assert _reason(_one(ledger, b.purchase("acct", publisher_id="nope"))) == "publisher_unknown"
    assert _reason(_one(ledger, b.purchase("acct", publisher_id="shady"))) == "publisher_blocked"
    fact = _one(ledger, b.open_account("acct2", isp_id="free"))
    assert isinstance(fact, CommandRejected) and fact.reason == "isp_unknown"
    assert _reason(_one(ledger, b.purchase("acct2"))) == "account_unknown"


def test_amount_band(ledger: LocalAuthorizer) -> None:
    assert _reason(_one(ledger, b.purchase("acct", 14))) == "amount_below_minimum"
    assert _reason(_one(ledger, b.purchase("acct", 15))) == "ok"
    assert _reason(_one(ledger, b.purchase("acct", 1_500, at(1)))) == "ok"
    assert _reason(_one(ledger, b.purchase("acct", 1_501, at(2)))) == "amount_above_maximum"


def test_daily_cap_in_paris_days_and_refund_gives_room_back(ledger: LocalAuthorizer) -> None:
    # €30 a day by default: two €15 purchases fill the day.
    first = _one(ledger, b.purchase("acct", 1_500, at(0), purchase_id="d1"))
    assert _reason(first) == "ok"
    assert _reason(_one(ledger, b.purchase("acct", 1_500, at(10)))) == "ok"
    assert _reason(_one(ledger, b.purchase("acct", 15, at(20)))) == "daily_cap_exceeded"
    # 23:30 Paris (22:30 UTC) the same day is still the same day; 00:30 Paris is the next.
    assert _reason(_one(ledger, b.purchase("acct", 15, at(12 * 60 + 30)))) == "daily_cap_exceeded"
    assert _reason(_one(ledger, b.purchase("acct", 15, at(14 * 60 + 30)))) == "ok"
    # A refund of the first purchase frees room on its own day, not on the refund's day.
    assert _reason(_one(ledger, b.refund("acct", "d1", 500, at(14 * 60 + 40)))) == "ok"
    assert _reason(_one(ledger, b.purchase("acct", 500, at(30)))) == "ok"
    assert _reason(_one(ledger, b.purchase("acct", 15, at(31)))) == "daily_cap_exceeded"


def test_monthly_cap_per_billing_period(ledger: LocalAuthorizer) -> None:
    # €100 a billing month: seven €15 purchases on separate days; the 7th is over the cap.
    outcomes = [_reason(_one(ledger, b.purchase("acct", 1_500, at(days=d)))) for d in range(7)]
    assert outcomes == ["ok"] * 6 + ["monthly_cap_exceeded"]
    assert _reason(_one(ledger, b.purchase("acct", 1_000, at(days=7)))) == "ok"  # 9000 + 1000
    assert _reason(_one(ledger, b.purchase("acct", 15, at(days=8)))) == "monthly_cap_exceeded"
    # Orange bills by calendar month: April starts afresh.
    assert _reason(_one(ledger, b.purchase("acct", 1_500, at(days=31)))) == "ok"


def test_velocity_is_a_sliding_window_per_user(ledger: LocalAuthorizer) -> None:
    # Five purchases a minute by default.
    times = [at(seconds / 60) for seconds in (0, 10, 20, 30, 40)]
    assert [_reason(_one(ledger, b.purchase("acct", 20, t))) for t in times] == ["ok"] * 5
    assert _reason(_one(ledger, b.purchase("acct", 20, at(50 / 60)))) == "velocity_exceeded"
    assert _reason(_one(ledger, b.purchase("acct", 20, at(50 / 60), user_id="u2"))) == "ok"
    # 60 s after the first, it has left the window (the window is (t - 60 s, t]).
    assert _reason(_one(ledger, b.purchase("acct", 20, at(1)))) == "ok"


def test_blocks_are_effective_from_their_time(ledger: LocalAuthorizer) -> None:
    assert isinstance(_one(ledger, b.block("acct", at(10))), AccountBlocked)
    assert _reason(_one(ledger, b.purchase("acct", when=at(11)))) == "account_blocked"
    # A purchase that occurred before the block, arriving late, is judged at its own time.
    assert _reason(_one(ledger, b.purchase("acct", when=at(9)))) == "ok"
    _one(ledger, b.unblock("acct", at(20)))
    assert _reason(_one(ledger, b.purchase("acct", when=at(21)))) == "ok"
    assert _reason(_one(ledger, b.purchase("acct", when=at(15)))) == "account_blocked"


def test_limits_change_at_runtime_from_their_time(ledger: LocalAuthorizer) -> None:
    _one(ledger, b.set_limits("acct", at(10), max_purchase_cents=500, daily_cap_cents=1_000))
    assert _reason(_one(ledger, b.purchase("acct", 600, at(11)))) == "amount_above_maximum"
    assert _reason(_one(ledger, b.purchase("acct", 600, at(5)))) == "ok"  # before the change
    assert _reason(_one(ledger, b.purchase("acct", 401, at(12)))) == "daily_cap_exceeded"
    assert _reason(_one(ledger, b.purchase("acct", 15, at(13), user_id="u9"))) == "ok"
    other = _one(ledger, b.set_limits("ghost", at(10), daily_cap_cents=1))
    assert isinstance(other, CommandRejected) and other.reason == "account_unknown"


def test_isp_default_limits_apply() -> None:
    from schemas.commands import LimitOverrides
    from schemas.reference import IspRegistered

    strict = IspRegistered(
        isp_id="club",
        name="Club-Internet",
        billing_day=5,
        commission_bp=1000,
        occurred_at=b.T0,
        consumer_limits=LimitOverrides(max_purchase_cents=300),
    )
    ledger = LocalAuthorizer(REFERENCE)
    ledger.update_reference(strict)
    _one(ledger, b.open_account("c1", isp_id="club"))
    assert _reason(_one(ledger, b.purchase("c1", 301))) == "amount_above_maximum"
    fact = _one(ledger, b.purchase("c1", 300, at(1)))
    assert isinstance(fact, PurchaseAuthorized) and fact.commission_bp == 1000


def test_enterprise_employees_budgets_and_company_cap() -> None:
    ledger = LocalAuthorizer(REFERENCE)
    _one(ledger, b.open_account("acme", kind="enterprise"))
    assert _reason(_one(ledger, b.purchase("acme", user_id="alice"))) == "employee_not_authorised"
    fact = _one(ledger, b.authorise("acme", "alice", at(1), budget_cents=3_000))
    assert isinstance(fact, EmployeeAuthorised)
    _one(ledger, b.authorise("acme", "bob", at(1)))  # the default budget, €200
    assert _reason(_one(ledger, b.purchase("acme", 1_500, at(2), user_id="alice"))) == "ok"
    assert _reason(_one(ledger, b.purchase("acme", 1_500, at(3), user_id="alice"))) == "ok"
    assert _reason(_one(ledger, b.purchase("acme", 15, at(4), user_id="alice"))) == (
        "employee_budget_exceeded"
    )
    assert _reason(_one(ledger, b.purchase("acme", 1_500, at(5), user_id="bob"))) == "ok"
    _one(ledger, b.revoke("acme", "bob", at(6)))
    assert _reason(_one(ledger, b.purchase("acme", 20, at(7), user_id="bob"))) == (
        "employee_not_authorised"
    )
    # The company's monthly cap bounds all employees together.
    _one(ledger, b.set_limits("acme", at(8), monthly_cap_cents=5_000))
    _one(ledger, b.authorise("acme", "carol", at(8)))
    assert _reason(_one(ledger, b.purchase("acme", 500, at(9), user_id="carol"))) == "ok"
    assert _reason(_one(ledger, b.purchase("acme", 15, at(10), user_id="carol"))) == (
        "monthly_cap_exceeded"
    )
    # Employee commands need an enterprise account, and a known employee to revoke.
    _one(ledger, b.open_account("home"))
    assert _reason(_one(ledger, b.authorise("home", "kid"))) == "not_enterprise"
    assert _reason(_one(ledger, b.revoke("acme", "mallory"))) == "employee_unknown"


def test_same_purchase_id_same_body_same_answer(ledger: LocalAuthorizer) -> None:
    command = b.purchase("acct", 266, purchase_id="dup")
    first = _one(ledger, command)
    again = _one(ledger, command)
    assert again == first  # identical: same event id, same content
    different = _one(ledger, b.purchase("acct", 267, purchase_id="dup"))
    assert isinstance(different, PurchaseRejected)
    assert different.reason == "duplicate_with_different_body"
    assert different.event_id != first.event_id
    # The spend was counted once.
    assert ledger.states["acct"].day_spend == {"2006-03-01": 266}


def test_a_rejection_is_answered_the_same_way_again(ledger: LocalAuthorizer) -> None:
    command = b.purchase("acct", 5_000, purchase_id="big")
    first = _one(ledger, command)
    assert _reason(first) == "amount_above_maximum"
    _one(ledger, b.set_limits("acct", at(-1), max_purchase_cents=6_000, daily_cap_cents=10_000))
    assert _one(ledger, command) == first


def test_refunds(ledger: LocalAuthorizer) -> None:
    _one(ledger, b.purchase("acct", 1_000, purchase_id="p1"))
    first = _one(ledger, b.refund("acct", "p1", 400, at(1), refund_id="r1"))
    assert isinstance(first, PurchaseRefunded)
    assert (first.amount_cents, first.refunded_before_cents) == (400, 0)
    assert sum(p.amount_cents for p in first.postings) == 0
    assert _reason(_one(ledger, b.refund("acct", "p1", 601, at(2)))) == "refund_exceeds_purchase"
    second = _one(ledger, b.refund("acct", "p1", 600, at(2), refund_id="r2"))
    assert isinstance(second, PurchaseRefunded) and second.refunded_before_cents == 400
    assert _reason(_one(ledger, b.refund("acct", "p1", 1, at(3)))) == "refund_exceeds_purchase"
    assert _reason(_one(ledger, b.refund("acct", "nope", 1, at(3)))) == "purchase_unknown"
    assert _reason(_one(ledger, b.refund("acct", "p1", 1, at(-5)))) == "refund_before_purchase"
    assert _reason(_one(ledger, b.refund("ghost", "p1", 1))) == "account_unknown"
    # Same refund id: same answer; other body: named rejection.
    assert _one(ledger, b.refund("acct", "p1", 400, at(1), refund_id="r1")) == first
    assert _reason(_one(ledger, b.refund("acct", "p1", 300, at(1), refund_id="r1"))) == (
        "duplicate_with_different_body"
    )
    _one(ledger, b.purchase("acct", 10_000, at(4), purchase_id="rej"))
    assert _reason(_one(ledger, b.refund("acct", "rej", 10, at(5)))) == "purchase_not_authorized"
    # A rejected refund is answered the same way again.
    denied = b.refund("acct", "nope", 5, at(6), refund_id="r-denied")
    assert _one(ledger, denied) == _one(ledger, denied)


def test_stale_purchases_beyond_the_horizon(ledger: LocalAuthorizer) -> None:
    _one(ledger, b.purchase("acct", when=at(days=100)))
    assert _reason(_one(ledger, b.purchase("acct", when=at(days=9)))) == "stale_purchase"
    assert _reason(_one(ledger, b.purchase("acct", when=at(days=11)))) == "ok"
    assert _reason(_one(ledger, b.refund("acct", "x", 5, at(days=1)))) == "stale_refund"


def test_state_stays_bounded_over_a_long_history(ledger: LocalAuthorizer) -> None:
    ledger = LocalAuthorizer(REFERENCE, Policy(horizon_seconds=30 * 86_400))
    _one(ledger, b.open_account("acct"))
    for day in range(365):
        _one(ledger, b.purchase("acct", 100, at(days=day)))
        _one(ledger, b.set_limits("acct", at(days=day), daily_cap_cents=2_000 + day))
    state = ledger.states["acct"]
    assert len(state.purchases) <= 32
    assert len(state.day_spend) <= 32
    assert len(state.period_spend) <= 3
    assert len(state.limits) <= 32
    assert sum(len(v) for v in state.recent.values()) <= 2


def test_policy_horizon_is_at_least_a_day() -> None:
    with pytest.raises(ValueError, match="at least one day"):
        Policy(horizon_seconds=60)
    assert Policy().horizon_seconds == HORIZON_SECONDS_DEFAULT


def test_account_open_is_idempotent_and_exclusive() -> None:
    ledger = LocalAuthorizer(REFERENCE)
    command = b.open_account("acct", command_id="open-acct")
    first = _one(ledger, command)
    assert _one(ledger, command) == first
    other = _one(ledger, b.open_account("acct", isp_id="alice"))
    assert isinstance(other, CommandRejected) and other.reason == "account_exists"
    assert ledger.states["acct"].isp_id == "orange"


def test_closing_a_period_moves_later_facts_to_the_next_period(ledger: LocalAuthorizer) -> None:
    march = at(days=10)  # 2006-03-11
    _one(ledger, b.purchase("acct", 300, march, purchase_id="before"))
    too_early = _one(ledger, b.close("orange", "2006-03", at(days=20)))
    assert isinstance(too_early, CommandRejected) and too_early.reason == "period_not_ended"
    close = b.close("orange", "2006-03", at(days=31), command_id="close-march")
    closed = _one(ledger, close)
    assert isinstance(closed, PeriodClosed)
    assert _one(ledger, close) == closed  # the same close again: the same fact
    twice = _one(ledger, b.close("orange", "2006-03", at(days=32), command_id="close-again"))
    assert isinstance(twice, CommandRejected) and twice.reason == "period_already_closed"
    late = _one(ledger, b.purchase("acct", 300, march + timedelta(hours=1), purchase_id="late"))
    assert isinstance(late, PurchaseAuthorized)
    assert (late.billing_period, late.late_for_period) == ("2006-04", "2006-03")
    # Late purchases still count against the caps of the period they occurred in.
    assert ledger.states["acct"].period_spend["2006-03"] == 600
    refund = _one(ledger, b.refund("acct", "before", 100, at(days=31, minutes=5)))
    assert isinstance(refund, PurchaseRefunded)
    assert refund.purchase_billing_period == "2006-03" and refund.billing_period == "2006-04"
    unknown = _one(ledger, b.close("free", "2006-03", at(days=31)))
    assert isinstance(unknown, CommandRejected) and unknown.reason == "isp_unknown"


def test_state_round_trips_through_its_encoding(ledger: LocalAuthorizer) -> None:
    _one(ledger, b.purchase("acct", 300, purchase_id="p1"))
    _one(ledger, b.refund("acct", "p1", 100, at(1)))
    _one(ledger, b.block("acct", at(2)))
    _one(ledger, b.set_limits("acct", at(3), daily_cap_cents=5))
    state = ledger.states["acct"]
    assert decode_account(encode_state(state)) == state
    _one(ledger, b.close("orange", "2006-02", at(1)))
    assert decode_closed(encode_state(ledger.closed)) == ledger.closed


def test_rejected_refund_does_not_change_the_purchase(ledger: LocalAuthorizer) -> None:
    _one(ledger, b.purchase("acct", 300, purchase_id="p1"))
    assert isinstance(_one(ledger, b.refund("acct", "p1", 301, at(1))), RefundRejected)
    assert ledger.states["acct"].purchases["p1"].refunded_cents == 0


def test_an_isp_gone_from_the_reference_data_refuses_purchases(ledger: LocalAuthorizer) -> None:
    from ledger.core.reference import Reference

    without_orange = LocalAuthorizer(Reference.of([b.ALICE, b.CANALPLAY]))
    without_orange.states = ledger.states
    assert _reason(_one(without_orange, b.purchase("acct"))) == "isp_unknown"


def test_employee_facts_on_an_unknown_account_change_nothing() -> None:
    from ledger.core.authorizer import evolve

    fact = EmployeeAuthorised("e", "c", "ghost", "u", b.T0, None)
    assert evolve(None, fact, Policy()) is None


def test_duplicates_carry_the_first_origin_so_they_are_identical(ledger: LocalAuthorizer) -> None:
    command = b.purchase("acct", 266, purchase_id="o1")
    (first,) = ledger.handle(command, origin=10)
    (again,) = ledger.handle(command, origin=42)  # a client's retry, later in the partition
    assert isinstance(first, PurchaseAuthorized) and first.origin == 10
    assert again == first
    refund = b.refund("acct", "o1", 100, at(1), refund_id="or1")
    (refunded,) = ledger.handle(refund, origin=50)
    assert ledger.handle(refund, origin=77) == [refunded]
    assert isinstance(refunded, PurchaseRefunded) and refunded.origin == 50


def test_unremembered_rejections_are_new_decisions_each_time(ledger: LocalAuthorizer) -> None:
    command = b.purchase("nobody", purchase_id="u1")
    (first,) = ledger.handle(command, origin=5)
    (replayed,) = ledger.handle(command, origin=5)  # the same command after a crash
    (retried,) = ledger.handle(command, origin=9)  # sent again by the client
    assert replayed == first
    assert retried.event_id != first.event_id
    assert _reason(retried) == "account_unknown"
