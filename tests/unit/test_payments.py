"""Held payments (issue 14, ledger/core/payment.py): the rules one at a time through the runner,
then random histories of holds, captures, voids and expiry barriers through the batch against the
runner (the same facts, byte for byte, however cut into batches and wherever a batch crashes),
and the properties: a capture never exceeds its hold, and a hold's room is released once."""

from __future__ import annotations

from datetime import timedelta
from random import Random
from typing import Any

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from ledger.core import calendar
from ledger.core.authorizer import Policy
from ledger.core.batch import PartitionSummary, decode_summary, encode_summary
from ledger.core.runner import LocalAuthorizer
from ledger.core.state import AccountState, decode_account, encode_state
from schemas import codec
from schemas.commands import (
    Command,
    HoldsExpireRequested,
    PaymentHoldRequested,
    PeriodCloseRequested,
)
from schemas.facts import (
    Fact,
    PaymentCommandRejected,
    PaymentExpired,
    PaymentReserved,
    PaymentVoided,
    PurchaseAuthorized,
    PurchaseRefunded,
    PurchaseRejected,
)
from tests import builders as b
from tests.builders import REFERENCE, T0, at
from tests.unit.test_batch import Emitted, Log, Worker, _cut
from tests.unit.test_properties import fast

POLICY = Policy(horizon_seconds=20 * 86_400)


def _ledger(*accounts: tuple[str, str]) -> LocalAuthorizer:
    ledger = LocalAuthorizer(REFERENCE, POLICY)
    for account_id, kind in accounts or (("a", "consumer"),):
        ledger.handle(b.open_account(account_id, kind=kind, command_id=f"open-{account_id}"))
    return ledger


def _one(ledger: LocalAuthorizer, command: Command, origin: int | None = None) -> Fact:
    (fact,) = ledger.handle(command, origin)
    return fact


def _room(state: AccountState, day_of: Any = T0) -> tuple[int, int]:
    day = calendar.day_key(calendar.epoch_seconds(day_of))
    return state.day_spend.get(day, 0), state.period_spend.get("2006-03", 0)


# --- holds ---------------------------------------------------------------------------------------


def test_a_hold_is_reserved_takes_room_and_moves_no_money() -> None:
    ledger = _ledger()
    fact = _one(ledger, b.hold("a", 1_200, at(1), payment_id="h1", consent="ab" * 32), 7)
    assert isinstance(fact, PaymentReserved)
    assert (fact.amount_cents, fact.period, fact.origin) == (1_200, "2006-03", 7)
    assert (fact.vat_rate_bp, fact.commission_bp, fact.revenue_share_bp) == (1960, 1500, 6000)
    assert fact.consent == "ab" * 32 and fact.event_id.startswith("payment.h1.")
    state = ledger.states["a"]
    assert _room(state) == (1_200, 1_200)
    assert state.owed_cents == 0 and state.purchases_authorized == 0
    assert state.holds["h1"].status == "reserved"
    # The same hold again is the same fact again (even later in the log).
    assert _one(ledger, b.hold("a", 1_200, at(1), payment_id="h1", consent="ab" * 32), 9) == fact
    assert _room(ledger.states["a"]) == (1_200, 1_200)


def test_a_hold_is_judged_by_the_purchase_rules() -> None:
    ledger = _ledger()
    over = _one(ledger, b.hold("a", 1_501, at(1), payment_id="h1"), 3)
    assert isinstance(over, PurchaseRejected) and over.reason == "amount_above_maximum"
    assert (over.purchase_id, over.amount_cents, over.isp_id) == ("h1", 1_501, "orange")
    ledger.handle(b.block("a", at(2)))
    blocked = _one(ledger, b.hold("a", 100, at(3), payment_id="h2"))
    assert isinstance(blocked, PurchaseRejected) and blocked.reason == "account_blocked"
    assert ledger.states["a"].holds == {}


def test_holds_count_against_the_daily_cap_and_velocity_like_purchases() -> None:
    ledger = _ledger()
    assert isinstance(_one(ledger, b.hold("a", 1_500, at(1), payment_id="h1")), PaymentReserved)
    assert isinstance(_one(ledger, b.purchase("a", 1_400, at(2), purchase_id="p1")),
                      PurchaseAuthorized)  # fmt: skip
    refused = _one(ledger, b.hold("a", 200, at(3), payment_id="h2"))
    assert isinstance(refused, PurchaseRejected) and refused.reason == "daily_cap_exceeded"
    assert refused.purchase_id == "h2" and refused.event_id.startswith("purchase.h2.")
    # Rejected holds are remembered as purchases are: the same hold again, the same rejection.
    assert _one(ledger, b.hold("a", 200, at(3), payment_id="h2")) == refused
    for n in range(5):  # the velocity limit: 5 a minute
        _one(ledger, b.hold("a", 15, at(3, days=1), payment_id=f"v{n}"))
    velocity = _one(ledger, b.hold("a", 15, at(3, days=1), payment_id="v9"))
    assert isinstance(velocity, PurchaseRejected) and velocity.reason == "velocity_exceeded"


def test_unknown_account_and_unknown_publisher_refuse_the_hold() -> None:
    ledger = _ledger()
    unknown = _one(ledger, b.hold("nobody", 100, at(1), payment_id="h1"))
    assert isinstance(unknown, PurchaseRejected) and unknown.reason == "account_unknown"
    publisher = _one(ledger, b.hold("a", 100, at(1), payment_id="h2", publisher_id="nope"))
    assert isinstance(publisher, PurchaseRejected) and publisher.reason == "publisher_unknown"


def test_a_purchase_and_a_payment_share_one_namespace_of_ids() -> None:
    ledger = _ledger()
    _one(ledger, b.hold("a", 100, at(1), payment_id="x1"))
    clash = _one(ledger, b.purchase("a", 100, at(2), purchase_id="x1"))
    assert isinstance(clash, PurchaseRejected)
    assert clash.reason == "duplicate_with_different_body"
    _one(ledger, b.purchase("a", 100, at(3), purchase_id="x2"))
    clash = _one(ledger, b.hold("a", 100, at(4), payment_id="x2"))
    assert isinstance(clash, PurchaseRejected)
    assert clash.reason == "duplicate_with_different_body"
    other = _one(ledger, b.hold("a", 101, at(1), payment_id="x1"))
    assert isinstance(other, PurchaseRejected)
    assert other.reason == "duplicate_with_different_body"


def test_a_hold_longer_than_seven_days_or_ending_before_it_starts_is_invalid() -> None:
    good = codec.encode(b.hold("a", 100, T0, payment_id="h", hold_for=timedelta(days=7)))
    assert isinstance(codec.decode_command(good), PaymentHoldRequested)
    for hold_for in (timedelta(days=7, seconds=1), timedelta(0), timedelta(seconds=-1)):
        raw = good.replace(
            b'"hold_expires_at":"2006-03-08T10:00:00Z"',
            b'"hold_expires_at":"' + (T0 + hold_for).isoformat().encode() + b'"',
        )
        with pytest.raises(codec.InvalidMessage) as error:
            codec.decode_command(raw)
        assert error.value.reason == "invalid_field"
    bad_digest = good.replace(b'"consent":null', b'"consent":"ABC"')
    with pytest.raises(codec.InvalidMessage):
        codec.decode_command(bad_digest)


# --- capture -----------------------------------------------------------------------------------


def test_a_partial_capture_bills_the_captured_amount_at_the_holds_time_and_frees_the_rest() -> None:
    ledger = _ledger()
    _one(ledger, b.hold("a", 1_500, at(1), payment_id="h1"), 1)
    fact = _one(ledger, b.capture("a", "h1", 1_000, at(30)), 2)
    assert isinstance(fact, PurchaseAuthorized)
    assert (fact.purchase_id, fact.amount_cents, fact.occurred_at) == ("h1", 1_000, at(1))
    assert (fact.billing_period, fact.late_for_period, fact.origin) == ("2006-03", None, 2)
    assert (fact.user_id, fact.publisher_id, fact.category) == ("u1", "canalplay", "vod")
    assert fact.net_cents + fact.vat_cents == 1_000
    assert sum(posting.amount_cents for posting in fact.postings) == 0
    state = ledger.states["a"]
    assert _room(state) == (1_000, 1_000)  # the 500 not captured are free again
    assert state.owed_cents == 1_000 and state.purchases_authorized == 1
    assert state.recent["u1"] == [calendar.epoch_seconds(at(1))]  # one purchase, one stamp
    assert state.holds["h1"].status == "captured"
    # The same capture again: the same fact; another one: refused.
    assert _one(ledger, b.capture("a", "h1", 1_000, at(30)), 5) == fact
    again = _one(ledger, b.capture("a", "h1", 500, at(31)), 6)
    assert isinstance(again, PaymentCommandRejected) and again.reason == "reservation_captured"
    assert again.event_id.endswith(".rejected.reservation_captured.6")
    void = _one(ledger, b.void("a", "h1", at(32)))
    assert isinstance(void, PaymentCommandRejected) and void.reason == "reservation_captured"
    assert _room(ledger.states["a"]) == (1_000, 1_000) and ledger.states["a"].owed_cents == 1_000


def test_a_captured_payment_is_refunded_as_a_purchase() -> None:
    ledger = _ledger()
    _one(ledger, b.hold("a", 1_500, at(1), payment_id="h1"))
    _one(ledger, b.capture("a", "h1", 1_500, at(30)))
    refund = _one(ledger, b.refund("a", "h1", 500, at(40), refund_id="r1"))
    assert isinstance(refund, PurchaseRefunded) and refund.amount_cents == 500
    assert _room(ledger.states["a"]) == (1_000, 1_000)
    assert ledger.states["a"].owed_cents == 1_000


def test_a_capture_above_the_hold_or_by_another_publisher_is_refused() -> None:
    ledger = _ledger()
    _one(ledger, b.hold("a", 1_000, at(1), payment_id="h1"))
    over = _one(ledger, b.capture("a", "h1", 1_001, at(2)), 3)
    assert isinstance(over, PaymentCommandRejected) and over.reason == "capture_exceeds_hold"
    assert (over.action, over.amount_cents, over.isp_id) == ("capture", 1_001, "orange")
    other = _one(ledger, b.capture("a", "h1", 100, at(2), publisher_id="lemonde-archives"))
    assert isinstance(other, PaymentCommandRejected) and other.reason == "payment_unknown"
    nothing = _one(ledger, b.capture("a", "nope", 100, at(2)))
    assert isinstance(nothing, PaymentCommandRejected) and nothing.reason == "payment_unknown"
    nobody = _one(ledger, b.capture("ghost", "h1", 100, at(2)))
    assert isinstance(nobody, PaymentCommandRejected) and nobody.isp_id is None
    _one(ledger, b.purchase("a", 100, at(3), purchase_id="p1"))
    purchase = _one(ledger, b.capture("a", "p1", 100, at(4)))
    assert isinstance(purchase, PaymentCommandRejected) and purchase.reason == "payment_unknown"
    assert ledger.states["a"].holds["h1"].status == "reserved"  # refusals change nothing


def test_a_hold_whose_period_closed_is_billed_late_at_capture() -> None:
    ledger = _ledger()
    when = at(-5, days=30)  # 2006-03-31 09:55 UTC, in March's period
    _one(ledger, b.hold("a", 800, when, payment_id="h1", hold_for=timedelta(days=3)))
    ledger.handle(b.close("orange", "2006-03", at(days=31)))
    fact = _one(ledger, b.capture("a", "h1", 800, at(days=31, minutes=5)))
    assert isinstance(fact, PurchaseAuthorized)
    assert (fact.billing_period, fact.late_for_period) == ("2006-04", "2006-03")
    assert ledger.states["a"].period_spend["2006-03"] == 800  # the cap of the consent's period


def test_an_employees_hold_takes_and_releases_the_budget() -> None:
    ledger = _ledger(("e", "enterprise"))
    ledger.handle(b.authorise("e", "bob", T0, budget_cents=2_000))
    _one(ledger, b.hold("e", 1_500, at(1), payment_id="h1", user_id="bob"))
    refused = _one(ledger, b.hold("e", 600, at(2), payment_id="h2", user_id="bob"))
    assert isinstance(refused, PurchaseRejected) and refused.reason == "employee_budget_exceeded"
    _one(ledger, b.capture("e", "h1", 1_000, at(3)))
    assert ledger.states["e"].employee_spend["bob|2006-03"] == 1_000
    assert isinstance(_one(ledger, b.hold("e", 600, at(4), payment_id="h3", user_id="bob")),
                      PaymentReserved)  # fmt: skip


# --- void and expiry ---------------------------------------------------------------------------


def test_a_void_releases_the_room_once_and_refuses_a_later_capture() -> None:
    ledger = _ledger()
    _one(ledger, b.hold("a", 1_500, at(1), payment_id="h1"))
    void = _one(ledger, b.void("a", "h1", at(2)), 4)
    assert isinstance(void, PaymentVoided) and void.amount_cents == 1_500
    assert _room(ledger.states["a"]) == (0, 0)
    assert _one(ledger, b.void("a", "h1", at(2)), 8) == void  # the same void again
    assert _room(ledger.states["a"]) == (0, 0)
    other = _one(ledger, b.void("a", "h1", at(3)))
    assert isinstance(other, PaymentCommandRejected) and other.reason == "reservation_voided"
    capture = _one(ledger, b.capture("a", "h1", 100, at(3)))
    assert isinstance(capture, PaymentCommandRejected) and capture.reason == "reservation_voided"


def test_the_barrier_expires_the_holds_due_and_a_later_capture_is_refused() -> None:
    ledger = _ledger(("a", "consumer"), ("c", "consumer"))
    _one(ledger, b.hold("a", 500, at(0), payment_id="h1", hold_for=timedelta(minutes=10)))
    _one(ledger, b.hold("c", 400, at(1), payment_id="h0", hold_for=timedelta(minutes=9)))
    _one(ledger, b.hold("a", 300, at(2), payment_id="h2", hold_for=timedelta(hours=2)))
    assert ledger.handle(b.expire(at(9))) == []  # nothing due yet
    facts = ledger.handle(b.expire(at(10)), 20)
    # Both due at 10:10, h0 before h1 (by payment id); h2 is not due.
    assert [(type(f), f.payment_id) for f in facts] == [  # type: ignore[union-attr]
        (PaymentExpired, "h0"), (PaymentExpired, "h1"),
    ]  # fmt: skip
    assert facts[1].occurred_at == at(10) and facts[1].origin == 20
    assert facts[1].event_id.startswith("payment.h1.") and facts[1].event_id.endswith(".expired")
    assert _room(ledger.states["a"]) == (300, 300) and _room(ledger.states["c"]) == (0, 0)
    assert ledger.handle(b.expire(at(11))) == []  # expired once
    late = _one(ledger, b.capture("a", "h1", 100, at(5)))
    assert isinstance(late, PaymentCommandRejected) and late.reason == "reservation_expired"
    void = _one(ledger, b.void("a", "h1", at(5)))
    assert isinstance(void, PaymentCommandRejected) and void.reason == "reservation_expired"


def test_a_capture_after_the_holds_end_is_refused_before_the_barrier_comes() -> None:
    ledger = _ledger()
    _one(ledger, b.hold("a", 500, at(0), payment_id="h1", hold_for=timedelta(minutes=10)))
    late = _one(ledger, b.capture("a", "h1", 100, at(10)))
    assert isinstance(late, PaymentCommandRejected) and late.reason == "reservation_expired"
    assert ledger.states["a"].holds["h1"].status == "reserved"  # the barrier expires it
    assert [type(f) for f in ledger.handle(b.expire(at(10)))] == [PaymentExpired]


def test_finished_holds_are_pruned_but_open_ones_never() -> None:
    ledger = _ledger()
    _one(ledger, b.hold("a", 500, at(0), payment_id="open", hold_for=timedelta(days=7)))
    _one(ledger, b.hold("a", 500, at(1), payment_id="done"))
    _one(ledger, b.void("a", "done", at(2)))
    # Weeks later (past the 20-day horizon), a purchase moves the account on and prunes it.
    _one(ledger, b.purchase("a", 100, at(days=40), purchase_id="late"))
    state = ledger.states["a"]
    assert set(state.holds) == {"open"}
    facts = ledger.handle(b.expire(at(days=40)))
    assert [f.payment_id for f in facts] == ["open"]  # type: ignore[union-attr]


def test_a_state_with_holds_round_trips_through_its_encoding() -> None:
    ledger = _ledger()
    _one(ledger, b.hold("a", 500, at(0), payment_id="h1"))
    _one(ledger, b.hold("a", 500, at(1), payment_id="h2"))
    _one(ledger, b.capture("a", "h2", 200, at(2)))
    state = ledger.states["a"]
    assert decode_account(encode_state(state)) == state
    summary = PartitionSummary(holds={"a": {"h1": 1}})
    assert decode_summary(encode_summary(summary)) == summary


# --- the batch against the runner ------------------------------------------------------------

ACCOUNTS = ("a0", "a1", "a2")
PAYMENT_STEP = st.one_of(
    st.tuples(st.just("hold"), st.sampled_from(ACCOUNTS), st.sampled_from((100, 900, 1_500)),
              st.sampled_from((5, 30, 120, 600))),
    st.tuples(st.just("capture"), st.integers(0, 30), st.sampled_from((0.5, 1.0, 1.2))),
    st.tuples(st.just("void"), st.integers(0, 30)),
    st.tuples(st.just("purchase"), st.sampled_from(ACCOUNTS), st.sampled_from((100, 1_000))),
    st.tuples(st.just("again"), st.integers(0, 40)),
    st.tuples(st.just("wait"), st.integers(0, 240)),
    st.tuples(st.just("expire"),),
    st.tuples(st.just("expire"),),  # twice as often: barriers are what this is about
    st.tuples(st.just("close"),),
)  # fmt: skip


def payment_commands(steps: list[tuple[Any, ...]]) -> list[Command]:
    """Times in minutes from T0; holds of 5 minutes to 10 hours; barriers at the clock."""
    commands: list[Command] = [b.open_account(a, command_id=f"open-{a}") for a in ACCOUNTS]
    holds: list[PaymentHoldRequested] = []
    clock = T0
    for number, choice in enumerate(steps):
        kind = choice[0]
        if kind == "wait":
            clock += timedelta(minutes=choice[1])
        elif kind == "hold":
            _, account, amount, minutes = choice
            made = b.hold(account, amount, clock, payment_id=f"h{number}",
                          hold_for=timedelta(minutes=minutes))  # fmt: skip
            holds.append(made)
            commands.append(made)
        elif kind in ("capture", "void") and holds:
            target = holds[choice[1] % len(holds)]
            if kind == "void":
                commands.append(b.void(target.account_id, target.payment_id, clock))
            else:
                amount = max(1, int(target.amount_cents * choice[2]))
                commands.append(b.capture(target.account_id, target.payment_id, amount, clock))
        elif kind == "purchase":
            commands.append(b.purchase(choice[1], choice[2], clock, purchase_id=f"p{number}"))
        elif kind == "again" and len(commands) > len(ACCOUNTS):
            commands.append(commands[len(ACCOUNTS) + choice[1] % (len(commands) - len(ACCOUNTS))])
        elif kind == "expire":
            commands.append(b.expire(clock, command_id=f"x{number}"))
        elif kind == "close":
            period = calendar.previous_period(calendar.period_of(calendar.epoch_seconds(clock), 1))
            commands.append(b.close("orange", period, clock, command_id=f"close-{period}"))
    return commands


payment_history = st.lists(PAYMENT_STEP, min_size=1, max_size=60)


def _log(commands: list[Command]) -> Log:
    return [(offset, command) for offset, command in enumerate(commands)]


class PaymentOracle:
    """The partition one command at a time (the runner), with the offset of the last command
    that changed each account, the barrier included for the accounts it expired holds of."""

    def __init__(self, log: Log) -> None:
        self.ledger = LocalAuthorizer(REFERENCE, POLICY)
        self.facts: list[tuple[int, str, Fact]] = []
        self.decided_through: dict[str, int] = {}
        for offset, command in log:
            if command is None:
                continue
            facts = self.ledger.handle(command, origin=offset)
            for fact in facts:
                key = fact.isp_id if isinstance(command, PeriodCloseRequested) else fact.account_id  # type: ignore[union-attr]
                self.facts.append((offset, key, fact))
                if isinstance(command, HoldsExpireRequested):
                    self.decided_through[fact.account_id] = offset  # type: ignore[union-attr]
            account = getattr(command, "account_id", None)
            if account is not None and account in self.ledger.states:
                self.decided_through[account] = offset

    def emitted(self, offsets: set[int] | None = None) -> Emitted:
        return [(k, codec.encode(f)) for o, k, f in self.facts if offsets is None or o in offsets]

    def states(self) -> dict[str, AccountState]:
        return {
            account: msgspec.structs.replace(state, decided_through=self.decided_through[account])
            for account, state in self.ledger.states.items()
        }


def _open_index(states: dict[str, AccountState]) -> dict[str, dict[str, int]]:
    index: dict[str, dict[str, int]] = {}
    for account, state in states.items():
        for payment_id, hold in state.holds.items():
            if hold.status == "reserved":
                index.setdefault(account, {})[payment_id] = hold.expires_at_seconds
    return index


@fast
@given(payment_history, st.randoms(use_true_random=False))
def test_batches_expire_and_capture_as_one_command_at_a_time(
    steps: list[tuple[Any, ...]], rnd: Random
) -> None:
    log = _log(payment_commands(steps))
    oracle = PaymentOracle(log)
    worker = Worker(0)
    for commands in _cut(log, rnd):
        batch = worker.run(commands)
        assert (batch.redelivered, batch.already_applied) == (0, 0)
    assert worker.emitted == oracle.emitted()
    assert worker.states() == oracle.states()
    assert worker.summary().holds == _open_index(oracle.ledger.states)


CRASHES = ("before_states", "some_states", "all_states", "after_summary")


@fast
@given(payment_history, st.randoms(use_true_random=False), st.sampled_from(CRASHES))
def test_a_crash_in_a_batch_with_holds_and_barriers_changes_nothing(
    steps: list[tuple[Any, ...]], rnd: Random, crash: str
) -> None:
    log = _log(payment_commands(steps))
    oracle = PaymentOracle(log)
    batches = _cut(log, rnd)
    crashed_at = rnd.randrange(len(batches))
    worker = Worker(0)
    for commands in batches[:crashed_at]:
        worker.run(commands)
    crashed = worker.decide(batches[crashed_at])
    states = len(crashed.states)
    written = {"before_states": 0, "some_states": rnd.randint(0, states)}.get(crash, states)
    worker.write(crashed, written, summary=crash == "after_summary")
    restart_at = worker.summary().next_offset
    resume = rnd.randint(0, restart_at)
    for commands in _cut([record for record in log if record[0] >= resume], rnd):
        worker.run(commands)
    # Every fact the oracle decided went out at least once, and nothing else did; the partition
    # ends as if nothing had happened: states, index of open holds, balances.
    assert set(worker.emitted) == set(oracle.emitted())
    assert worker.states() == oracle.states()
    assert worker.summary().holds == _open_index(oracle.ledger.states)


# --- properties ----------------------------------------------------------------------------------


@fast
@given(payment_history)
def test_captures_never_exceed_holds_and_room_is_released_once(
    steps: list[tuple[Any, ...]],
) -> None:
    oracle = PaymentOracle(_log(payment_commands(steps)))
    facts = [fact for _, _, fact in oracle.facts]
    held: dict[tuple[str, str], int] = {}
    ends: dict[tuple[str, str], str] = {}
    spend: dict[tuple[str, str], int] = {}  # (account, period) → purchases + open holds
    seen: set[str] = set()
    for fact in facts:
        if fact.event_id in seen:
            continue  # the same decision again
        seen.add(fact.event_id)
        if isinstance(fact, PaymentReserved):
            held[fact.account_id, fact.payment_id] = fact.amount_cents
            key = (fact.account_id, fact.period)
            spend[key] = spend.get(key, 0) + fact.amount_cents
        elif isinstance(fact, PurchaseAuthorized | PaymentVoided | PaymentExpired):
            payment = (
                fact.account_id,
                getattr(fact, "purchase_id", getattr(fact, "payment_id", "")),
            )
            if payment in held:
                assert payment not in ends, f"{payment} finished twice"
                ends[payment] = type(fact).__name__
                assert fact.amount_cents <= held[payment]
                spend[fact.account_id, _period_of(fact, facts)] -= held[payment]
            if isinstance(fact, PurchaseAuthorized):
                key = (fact.account_id, fact.late_for_period or fact.billing_period)
                spend[key] = spend.get(key, 0) + fact.amount_cents
    for (account, period), cents in spend.items():
        assert oracle.ledger.states[account].period_spend.get(period, 0) == cents


def _period_of(fact: Fact, facts: list[Fact]) -> str:
    payment_id = getattr(fact, "payment_id", None) or getattr(fact, "purchase_id", "")
    return next(
        f.period for f in facts
        if isinstance(f, PaymentReserved) and f.payment_id == payment_id
        and f.account_id == fact.account_id  # type: ignore[union-attr]
    )  # fmt: skip


def test_a_barrier_whose_batch_lost_its_summary_expires_nothing_twice() -> None:
    log = _log([
        b.open_account("a0", command_id="open-a0"),
        b.hold("a0", 500, at(0), payment_id="h1", hold_for=timedelta(minutes=10)),
        b.hold("a0", 500, at(1), payment_id="h2", hold_for=timedelta(minutes=10)),
        b.expire(at(20), command_id="x"),
    ])  # fmt: skip
    worker = Worker(0)
    worker.run(log[:2])
    # h2 and the barrier in one batch: its states are written, its summary is lost.
    crashed = worker.decide(log[2:])
    assert [type(f) for _, f in crashed.facts] == [PaymentReserved, PaymentExpired, PaymentExpired]
    worker.write(crashed, summary=False)
    assert worker.summary().holds == {"a0": {"h1": calendar.epoch_seconds(at(10))}}
    again = worker.run(log[2:])
    # The hold's command finds its state holding it, and the index is made again from that state
    # (the truth), so the barrier finds nothing due: nothing is emitted twice.
    assert again.facts == [] and again.already_applied == 1
    assert worker.summary().holds == {}
    assert worker.states()["a0"].decided_through == 3


# --- holds and the caps of issue 14 together ---------------------------------------------------


def test_a_hold_moves_the_watermark_and_counts_as_one_attempt_even_once_captured() -> None:
    orange = msgspec.structs.replace(
        b.ORANGE, allowed_lateness_seconds=3_600,
        consumer_limits=msgspec.structs.replace(
            b.ORANGE.consumer_limits, velocity_max_attempts_per_account=3
        ),
    )  # fmt: skip
    ledger = LocalAuthorizer(REFERENCE.with_record(orange), POLICY)
    ledger.handle(b.open_account("a", command_id="open-a"))
    assert isinstance(_one(ledger, b.hold("a", 100, at(300), payment_id="h1"), 1), PaymentReserved)
    # The hold moved the partition's watermark: a purchase four hours behind it is too late.
    late = _one(ledger, b.purchase("a", 100, at(60), purchase_id="p-late"), 2)
    assert isinstance(late, PurchaseRejected) and late.reason == "too_late"
    assert ledger.states["a"].attempts == [calendar.epoch_seconds(at(300))]
    captured = _one(ledger, b.capture("a", "h1", 60, at(300.2)), 3)
    assert isinstance(captured, PurchaseAuthorized)
    # The capture is the hold's attempt, not a second one.
    assert ledger.states["a"].attempts == [calendar.epoch_seconds(at(300))]
    # Two more attempts reach the account's limit of three; a fourth is refused.
    for n in range(2):
        fact = _one(ledger, b.purchase("a", 20, at(300.5), purchase_id=f"p{n}"), 4 + n)
        assert isinstance(fact, PurchaseAuthorized)
    refused = _one(ledger, b.purchase("a", 20, at(300.5), purchase_id="p9"), 9)
    assert isinstance(refused, PurchaseRejected) and refused.reason == "account_velocity_exceeded"
