"""Caps that hold (issue 14): the event-time watermark with an ISP's allowed lateness
(`too_late`), the velocity per account counting refused attempts (`account_velocity_exceeded`),
and the bound they give on one bill, proved below and checked on random histories through the
batch (ledger/core/batch.py) and the one-command-at-a-time runner, which must decide the same."""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from random import Random
from typing import Any

import msgspec
import pytest
from hypothesis import given, target
from hypothesis import strategies as st

from ledger import simulate
from ledger.core import calendar
from ledger.core.authorizer import Policy
from ledger.core.batch import PartitionSummary, decide_batch, decode_summary, encode_summary
from ledger.core.reference import (
    CONSUMER_DEFAULTS,
    ENTERPRISE_DEFAULTS,
    PartitionReference,
    Reference,
)
from ledger.core.runner import LocalAuthorizer
from ledger.core.state import AccountState, decode_account, encode_state
from ledger.kafka.partitioning import partition_for
from schemas import codec
from schemas.commands import Command, LimitOverrides, PurchaseRequested
from schemas.facts import Fact, PurchaseAuthorized, PurchaseRefunded, PurchaseRejected
from schemas.reference import IspRegistered
from tests import builders as b
from tests.builders import T0, at
from tests.unit.model import Model
from tests.unit.test_batch import STATE_BEFORE_DECIDED_THROUGH
from tests.unit.test_properties import HORIZON, _commands, busy_history, fast, history
from tests.unit.test_properties import _outcome as _property_outcome

HOUR = 3600
DAY = calendar.SECONDS_PER_DAY


def _reference(lateness: int | None = None, **consumer: int) -> Reference:
    orange = msgspec.structs.replace(
        b.ORANGE, allowed_lateness_seconds=lateness, consumer_limits=LimitOverrides(**consumer)
    )
    return Reference.of([orange, b.ALICE, b.CANALPLAY, b.LEMONDE, b.BLOCKED_PUB])


def _outcome(facts: list[Fact]) -> str:
    (fact,) = facts
    if isinstance(fact, PurchaseRejected):
        return fact.reason
    assert isinstance(fact, PurchaseAuthorized)
    return "authorized"


def _seconds(moment: datetime) -> int:
    return calendar.epoch_seconds(moment)


# --- the schema ------------------------------------------------------------------------------


def test_the_new_fields_are_optional_and_bounded() -> None:
    old = b'{"type":"isp.registered.v1","isp_id":"o","name":"O","billing_day":1,'
    old += b'"commission_bp":1500,"occurred_at":"2006-03-01T10:00:00Z"}'
    isp = codec.decode_reference(old)
    assert isinstance(isp, IspRegistered) and isp.allowed_lateness_seconds is None
    assert CONSUMER_DEFAULTS.velocity_max_attempts_per_account is None
    assert ENTERPRISE_DEFAULTS.velocity_max_attempts_per_account is None
    for bad in (-1, 27 * DAY + 1):
        with pytest.raises(codec.InvalidMessage, match="allowed_lateness_seconds"):
            codec.decode_reference(old[:-1] + b',"allowed_lateness_seconds":%d}' % bad)
    for bad in (0, 1001):
        with pytest.raises(msgspec.ValidationError, match="velocity_max_attempts_per_account"):
            msgspec.convert({"velocity_max_attempts_per_account": bad}, LimitOverrides)
    limits = CONSUMER_DEFAULTS.overridden(LimitOverrides(velocity_max_attempts_per_account=9))
    assert limits.velocity_max_attempts_per_account == 9
    assert limits.overridden(LimitOverrides()).velocity_max_attempts_per_account == 9


# An encoded PartitionSummary from before the watermark (ledger/core/batch.py at 99d7c5c):
# next_offset 7, orange's 2006-02 closed, no balances.
SUMMARY_BEFORE_WATERMARK = bytes.fromhex(
    "94079181a66f72616e676581a7323030362d3032d92061626162616261626162616261626162616261626162"
    "616261626162616261628080"
)


def test_old_summaries_and_states_decode_without_the_new_fields() -> None:
    summary = decode_summary(SUMMARY_BEFORE_WATERMARK)
    assert (summary.next_offset, summary.watermark_seconds) == (7, 0)
    assert "2006-02" in summary.closed.of("orange")
    assert msgspec.msgpack.decode(encode_summary(summary))[-1] == 0  # a trailing field
    state = decode_account(STATE_BEFORE_DECIDED_THROUGH)
    assert state.attempts == []
    assert decode_account(encode_state(state)) == state


# --- too_late --------------------------------------------------------------------------------


def test_a_purchase_behind_the_watermark_by_more_than_the_lateness_is_too_late() -> None:
    ledger = LocalAuthorizer(_reference(lateness=HOUR))
    ledger.handle(b.open_account("acct"))
    ledger.handle(b.open_account("other"))
    ledger.handle(b.open_account("at-alice", isp_id="alice"))  # alice allows any lateness
    now = at(days=2)
    assert _outcome(ledger.handle(b.purchase("acct", 266, now))) == "authorized"
    assert ledger.progress.watermark_seconds == _seconds(now)
    assert _outcome(ledger.handle(b.purchase("acct", 266, now - timedelta(minutes=59)))) == (
        "authorized"
    )
    late = b.purchase("acct", 266, now - timedelta(minutes=61), purchase_id="late")
    first = ledger.handle(late, origin=10)
    assert _outcome(first) == "too_late"
    assert _outcome(ledger.handle(b.purchase("at-alice", 266, T0))) == "authorized"
    # The watermark is the partition's: another account's purchase moves it for every account.
    ledger.handle(b.purchase("other", 266, at(days=5)))
    assert _outcome(ledger.handle(b.purchase("acct", 266, at(days=4)))) == "too_late"
    # Not remembered: the id is not taken, it is no attempt, and each time is a decision of its
    # own (its id carries the command's offset).
    state = ledger.states["acct"]
    assert "late" not in state.purchases
    assert len(state.attempts) == 2
    again = ledger.handle(late, origin=11)
    assert _outcome(again) == "too_late" and again[0].event_id != first[0].event_id


def test_a_close_moves_the_watermark_to_the_end_of_the_period_it_closed() -> None:
    ledger = LocalAuthorizer(_reference(lateness=HOUR))
    ledger.handle(b.open_account("acct"))
    ledger.handle(b.purchase("acct", 266, at(days=10)))
    _, end = calendar.period_bounds("2006-03", 1)  # April 1st, 00:00 in Paris
    early = ledger.handle(b.close("orange", "2006-05", at(days=50), command_id="too-early"))
    assert type(early[0]).__name__ == "CommandRejected"  # period_not_ended: no progress
    assert ledger.progress.watermark_seconds == _seconds(at(days=10))
    ledger.handle(b.close("orange", "2006-03", at(days=50)))
    assert ledger.progress.watermark_seconds == _seconds(end)  # not the close's own time
    facts = ledger.handle(b.purchase("acct", 300, end - timedelta(minutes=30)))
    assert _outcome(facts) == "authorized"
    assert isinstance(facts[0], PurchaseAuthorized)
    assert (facts[0].billing_period, facts[0].late_for_period) == ("2006-04", "2006-03")
    assert _outcome(ledger.handle(b.purchase("acct", 300, end - timedelta(hours=2)))) == (
        "too_late"
    )
    assert _outcome(ledger.handle(b.purchase("acct", 300, end + timedelta(days=3)))) == (
        "authorized"
    )


def test_without_a_lateness_a_backdated_load_fills_one_bill_with_several_caps() -> None:
    """Why the rule matters: an ISP without it (as before issue 14) lets a producer fill the
    unused room of three closed periods onto the open one's bill; the same commands with an
    hour's lateness leave that bill within the bound."""
    monthly, daily = 6_000, 3_000

    def april_bill(lateness: int | None) -> int:
        limits = {"daily_cap_cents": daily, "monthly_cap_cents": monthly}
        ledger = LocalAuthorizer(_reference(lateness, **limits))
        ledger.handle(b.open_account("acct", when=datetime(2006, 1, 2, tzinfo=UTC)))
        now = datetime(2006, 4, 5, 12, tzinfo=UTC)
        commands: list[Command] = [b.purchase("acct", 1_500, now)]
        commands += [b.close("orange", p, now, command_id=p) for p in ("2006-01", "2006-02")]
        commands.append(b.close("orange", "2006-03", now, command_id="2006-03"))
        for month in (1, 2, 3):
            for day in (10, 11):
                for hour in (9, 10):
                    when = datetime(2006, month, day, hour, tzinfo=UTC)
                    commands.append(b.purchase("acct", 1_500, when))
        facts = [fact for command in commands for fact in ledger.handle(command)]
        return sum(
            f.amount_cents
            for f in facts
            if isinstance(f, PurchaseAuthorized) and f.billing_period == "2006-04"
        )

    assert april_bill(None) == 1_500 + 3 * monthly  # three months of caps on one bill
    assert april_bill(HOUR) == 1_500 <= monthly + daily * 2


# --- velocity per account --------------------------------------------------------------------


def test_attempts_of_every_user_count_against_the_account() -> None:
    ledger = LocalAuthorizer(_reference())
    ledger.handle(b.open_account("acct"))
    ledger.handle(b.set_limits("acct", velocity_max_attempts_per_account=3))

    def buy(seconds: float, user: str, amount: int = 100) -> str:
        return _outcome(ledger.handle(b.purchase("acct", amount, at(seconds / 60), user_id=user)))

    assert [buy(0, "u1"), buy(6, "u2"), buy(12, "u3")] == ["authorized"] * 3
    assert buy(18, "u4") == "account_velocity_exceeded"
    # The refusal is an attempt too: at 63 s the window (3 s, 63 s] holds 6, 12 and 18.
    assert buy(63, "u5") == "account_velocity_exceeded"
    assert buy(124, "u6") == "authorized"  # (64 s, 124 s] holds none
    assert ledger.states["acct"].attempts == [_seconds(T0) + s for s in (0, 6, 12, 18, 63, 124)]


def test_refused_attempts_count_and_the_user_limit_comes_first() -> None:
    ledger = LocalAuthorizer(
        _reference(velocity_max_attempts_per_account=3, velocity_max_purchases=1)
    )
    ledger.handle(b.open_account("acct"))
    outcomes = [
        _outcome(ledger.handle(b.purchase("acct", amount, at(n / 60), user_id=f"u{n}")))
        for n, amount in enumerate((5_000, 5_000, 5_000, 100))
    ]
    assert outcomes == ["amount_above_maximum"] * 3 + ["account_velocity_exceeded"]
    ledger.handle(b.open_account("two"))
    first = _outcome(ledger.handle(b.purchase("two", 100, at(1), user_id="u1")))
    second = _outcome(ledger.handle(b.purchase("two", 100, at(1.1), user_id="u1")))
    assert (first, second) == ("authorized", "velocity_exceeded")


def test_without_the_limit_attempts_are_kept_but_refuse_nothing() -> None:
    ledger = LocalAuthorizer(_reference())
    ledger.handle(b.open_account("acct"))
    outcomes = {
        _outcome(ledger.handle(b.purchase("acct", 100, at(n / 60), user_id=f"u{n}")))
        for n in range(20)
    }
    assert outcomes == {"authorized"}
    assert len(ledger.states["acct"].attempts) == 20


def test_attempts_are_pruned_to_the_longest_window() -> None:
    ledger = LocalAuthorizer(_reference(), Policy(horizon_seconds=8 * DAY))
    ledger.handle(b.open_account("acct"))
    for n in range(5):
        ledger.handle(b.purchase("acct", 100, at(n), user_id=f"u{n}"))
    ledger.handle(b.purchase("acct", 100, at(days=3)))
    assert ledger.states["acct"].attempts == [_seconds(at(days=3))]


# --- against the model ------------------------------------------------------------------------


@fast
@given(
    history | busy_history,
    st.dictionaries(st.integers(0, 150), st.integers(0, 3 * HOUR), max_size=40),
    st.sampled_from((0, 1_800, 2 * HOUR)),
    st.sampled_from((None, 2, 4)),
)
def test_core_answers_as_the_model_does_with_the_rules_on(
    steps: list[tuple[Any, ...]], backdated: dict[int, int], lateness: int, attempts: int | None
) -> None:
    """tests/unit/test_properties.py's histories, some purchases dated up to 3 hours back (the
    same purchase sent again dated the same), on an orange that allows `lateness` and `attempts`
    per account (alice: neither), through the core and the independent model (tests/unit/model.py,
    which has both rules from the issue's text)."""
    limits = LimitOverrides(velocity_max_attempts_per_account=attempts)
    orange = msgspec.structs.replace(
        b.ORANGE,
        allowed_lateness_seconds=lateness,
        consumer_limits=limits,
        enterprise_limits=limits,
    )
    reference = Reference.of([orange, b.ALICE, b.CANALPLAY, b.LEMONDE, b.BLOCKED_PUB])
    numbers: dict[str, int] = {}

    def dated(command: Any) -> Any:
        if not isinstance(command, PurchaseRequested):
            return command
        back = backdated.get(numbers.setdefault(command.purchase_id, len(numbers)), 0)
        return msgspec.structs.replace(
            command, occurred_at=command.occurred_at - timedelta(seconds=back)
        )

    commands = [dated(command) for command in _commands(steps)]
    ledger = LocalAuthorizer(reference, Policy(horizon_seconds=HORIZON))
    model = Model(reference, HORIZON)
    for index, command in enumerate(commands):
        (fact,) = ledger.handle(command)
        expected = model.handle(command)
        assert _property_outcome(fact) == expected.outcome, (index, command, fact)
        if isinstance(fact, PurchaseAuthorized | PurchaseRefunded):
            assert (fact.billing_period, fact.late_for_period) == (
                expected.billing_period,
                expected.late_for,
            )


# --- the batch's recovery --------------------------------------------------------------------

Log = list[tuple[int, Command | None]]


class _Worker:
    """One partition as a worker keeps it: its encoded states and summary (tests/unit/test_batch.py
    has the full contract; this one for a reference of its own)."""

    def __init__(self, reference: Reference, policy: Policy | None = None) -> None:
        self.reference, self.policy = reference, policy or Policy()
        self.store: dict[bytes, bytes] = {}
        self.emitted: list[bytes] = []

    def summary(self) -> PartitionSummary:
        return decode_summary(self.store.get(b"\x00summary"))

    def load(self, account_id: str) -> AccountState | None:
        raw = self.store.get(account_id.encode())
        return None if raw is None else decode_account(raw)

    def run(self, commands: Log, summary: bool = True) -> None:
        reference = PartitionReference.of(self.reference)
        batch = decide_batch(0, self.summary(), commands, self.load, reference, self.policy)
        self.emitted += [codec.encode(fact) for _, fact in batch.facts]
        for account_id, state in batch.states.items():
            self.store[account_id.encode()] = encode_state(state)
        if summary:
            self.store[b"\x00summary"] = encode_summary(batch.summary)


def _oracle(reference: Reference, log: Log, policy: Policy | None = None) -> LocalAuthorizer:
    ledger = LocalAuthorizer(reference, policy)
    for offset, command in log:
        if command is not None:
            ledger.handle(command, origin=offset)
    return ledger


def test_the_watermark_moves_on_past_commands_a_state_already_holds() -> None:
    # The batch's states are written, its summary is lost: the replay finds the purchase in its
    # account's state and does not decide it again, but moves the watermark on as it did; so the
    # next purchase, two hours behind it, is too late, as it is one command at a time.
    reference = _reference(lateness=HOUR)
    first: Log = [
        (0, b.open_account("a")),
        (1, b.open_account("b")),
        (2, b.purchase("a", 266, at(days=10), purchase_id="a1")),
    ]
    worker = _Worker(reference)
    worker.run(first, summary=False)
    worker.run(first)
    assert worker.summary().watermark_seconds == _seconds(at(days=10))
    late: Log = [(3, b.purchase("b", 266, at(days=10) - timedelta(hours=2), purchase_id="b1"))]
    worker.run(late)
    (fact,) = (codec.decode_fact(raw) for raw in worker.emitted[-1:])
    assert isinstance(fact, PurchaseRejected) and fact.reason == "too_late"
    oracle = _oracle(reference, first + late)
    assert worker.summary().watermark_seconds == oracle.progress.watermark_seconds
    assert len(worker.emitted) == 4  # the held commands were not emitted again


# --- the bound -------------------------------------------------------------------------------

BOUND_START = datetime(2006, 1, 3, 9, tzinfo=UTC)
MONTHLY_CAP_CENTS = 6_000
DAILY_CAP_CENTS = 3_000
LATENESS_CHOICES = (0, 1, 1_800, HOUR, DAY - 1, DAY, 3 * DAY + 5, 27 * DAY)
BOUND_ACCOUNTS = (("c1", "u1"), ("co", "e1"))


def bill_bound_cents(monthly_cap_cents: int, daily_cap_cents: int, lateness_seconds: int) -> int:
    """The most one account's purchases billed in one period P can add up to (no refunds):
    `monthly_cap + daily_cap * (ceil(L / 86400) + 1)`, for an allowed lateness L below the
    shortest period (27 days at most, schemas/reference.py).

    A purchase is billed in the period it occurred in, or, when that period Q was closed in its
    partition when it was decided, in the first open period after Q (late for Q).
    1. Those that occurred in P: each was authorized only if the account's spend in P (every
       purchase authorized that occurred in P, wherever billed) stayed within the monthly cap:
       at most `monthly_cap` in all.
    2. Those that occurred in Q < P, late: Q was closed when each was decided, so the partition's
       watermark W was at least end(Q) (a close moves it to the end of the period it closes), and
       the purchase passed only if at >= W - L >= end(Q) - L. Every period from Q to the one
       before P was closed too (P is the first open one after Q); if Q were before the one just
       before P, W would be at least the end of that one, at least 28 days less an hour (one
       shortest period; summer time) past end(Q), more than L, and the purchase would be too
       late. So Q is the period just before P, and these purchases occurred in
       [end(Q) - L, end(Q)). end(Q) is a midnight in Paris, and that interval meets at most
       ceil(L / 86400) + 1 of Paris's days (one of 23 hours at most among them: summer time
       starts once a year), each spending at most `daily_cap`.
    Together: `monthly_cap + daily_cap * (ceil(L / 86400) + 1)`."""
    return monthly_cap_cents + daily_cap_cents * (math.ceil(lateness_seconds / DAY) + 1)


def _bound_reference(billing_day: int, lateness: int, attempts: int | None) -> Reference:
    caps: dict[str, Any] = {
        "daily_cap_cents": DAILY_CAP_CENTS,
        "monthly_cap_cents": MONTHLY_CAP_CENTS,
        "velocity_max_purchases": 1000,
        "velocity_max_attempts_per_account": attempts,
    }
    isp = IspRegistered(
        isp_id="late", name="Late", billing_day=billing_day, commission_bp=1000,
        occurred_at=BOUND_START, consumer_limits=LimitOverrides(**caps),
        enterprise_limits=LimitOverrides(**caps, employee_budget_cents=10**9),
        allowed_lateness_seconds=lateness,
    )  # fmt: skip
    return Reference.of([isp, b.CANALPLAY])


_back = st.one_of(
    st.integers(0, 2 * HOUR), st.integers(0, 3 * DAY), st.integers(0, 100 * DAY)
)  # how far back a purchase is dated: a little, some days, months (past the horizon at times)
_account = st.integers(0, len(BOUND_ACCOUNTS) - 1)
_buy = st.tuples(st.just("buy"), _account, st.sampled_from((500, 1_000, 1_500, 1_500)), _back)
# Dated a little before the end of one of the three periods before the clock's: where the lateness
# decides, once that period is closed.
_late = st.tuples(st.just("late"), _account, st.integers(1, 3), st.integers(0, 3 * DAY))
_STEP = st.one_of(  # hypothesis draws (and shrinks) towards the first: purchases
    _late,
    _buy,
    st.tuples(st.just("wait"), st.integers(0, 2 * DAY)),
    # To the end of the clock's period (and a little more), closing it most of the time.
    st.tuples(st.just("next"), st.integers(0, 2 * DAY), st.sampled_from((True, True, False))),
    st.tuples(st.just("close"), st.one_of(st.just(0), st.integers(0, 10))),
)


def _bound_commands(steps: list[tuple[Any, ...]], billing_day: int) -> list[Command]:
    commands: list[Command] = []
    for account, user in BOUND_ACCOUNTS:
        kind = "enterprise" if account == "co" else "consumer"
        commands.append(b.open_account(account, "late", kind, BOUND_START - timedelta(days=100)))
        if kind == "enterprise":
            commands.append(b.authorise(account, user, BOUND_START - timedelta(days=100)))
    clock = BOUND_START
    closed: set[str] = set()
    for n, step in enumerate(steps):
        if step[0] == "wait":
            clock += timedelta(seconds=step[1])
        elif step[0] == "buy":
            account, user = BOUND_ACCOUNTS[step[1]]
            when = clock - timedelta(seconds=step[3])
            commands.append(b.purchase(account, step[2], when, purchase_id=f"p{n}", user_id=user))
        elif step[0] == "late":
            account, user = BOUND_ACCOUNTS[step[1]]
            period = calendar.period_of(_seconds(clock), billing_day)
            for _ in range(step[2]):
                period = calendar.previous_period(period)
            end = calendar.period_bounds(period, billing_day)[1]
            when = min(clock, end - timedelta(seconds=1 + step[3]))
            commands.append(b.purchase(account, 1_500, when, purchase_id=f"p{n}", user_id=user))
        elif step[0] == "next":
            period = calendar.period_of(_seconds(clock), billing_day)
            clock = calendar.period_bounds(period, billing_day)[1] + timedelta(seconds=step[1])
            if step[2] and period not in closed:
                closed.add(period)
                commands.append(b.close("late", period, clock, command_id=f"close-{period}"))
        else:  # close one of the periods that have ended (the latest first), in any order
            ended: list[str] = []
            period = calendar.period_of(_seconds(BOUND_START) - 110 * DAY, billing_day)
            while calendar.period_bounds(period, billing_day)[1] <= clock:
                if period not in closed:
                    ended.insert(0, period)
                period = calendar.next_period(period)
            if ended:
                period = ended[step[1] % len(ended)]
                closed.add(period)
                commands.append(b.close("late", period, clock, command_id=f"close-{period}"))
    return commands


def _bills(facts: Iterable[Fact]) -> dict[tuple[str, str], int]:
    bills: dict[tuple[str, str], int] = defaultdict(int)
    for fact in facts:
        if isinstance(fact, PurchaseAuthorized):
            bills[fact.account_id, fact.billing_period] += fact.amount_cents
    return bills


def _cut(log: Log, rnd: Random) -> list[Log]:
    batches, start = [], 0
    while start < len(log):
        size = rnd.choice((1, 2, 5, 30, 1_000))
        batches.append(log[start : start + size])
        start += size
    return batches


@fast
@given(
    st.lists(_STEP, min_size=20, max_size=120),
    st.sampled_from((1, 10, 28)),
    st.sampled_from(LATENESS_CHOICES),
    st.sampled_from((None, 4)),
    st.randoms(use_true_random=False),
)
def test_no_bill_exceeds_the_monthly_cap_plus_the_lateness_allowance(
    steps: list[tuple[Any, ...]],
    billing_day: int,
    lateness: int,
    attempts: int | None,
    rnd: Random,
) -> None:
    reference = _bound_reference(billing_day, lateness, attempts)
    commands = _bound_commands(steps, billing_day)
    oracle = LocalAuthorizer(reference)
    facts = [fact for n, command in enumerate(commands) for fact in oracle.handle(command, n)]
    log: Log = list(enumerate(commands))

    # The batch decides the same, however cut, and a crash that loses one batch's summary (its
    # states written) changes nothing.
    batches = _cut(log, rnd)
    worker = _Worker(reference)
    crashed = rnd.randrange(len(batches)) if batches else -1
    for number, part in enumerate(batches):
        if number == crashed:
            worker.run(part, summary=False)
        worker.run(part)
    assert set(worker.emitted) == {codec.encode(fact) for fact in facts}
    assert worker.summary().watermark_seconds == oracle.progress.watermark_seconds

    # The proof's two steps, fact by fact: a purchase billed late was made within the lateness
    # of its period's end, and is billed in the period right after it.
    for fact in facts:
        if isinstance(fact, PurchaseAuthorized) and fact.late_for_period is not None:
            end = calendar.period_bounds(fact.late_for_period, billing_day)[1]
            assert _seconds(fact.occurred_at) >= _seconds(end) - lateness
            assert fact.billing_period == calendar.next_period(fact.late_for_period)
    bound = bill_bound_cents(MONTHLY_CAP_CENTS, DAILY_CAP_CENTS, lateness)
    bills = _bills(facts)
    target(max(bills.values(), default=0) / bound, label="the fullest bill / the bound")
    for (account, period), cents in bills.items():
        assert cents <= bound, f"{account}'s bill for {period}: {cents} > {bound}"


# --- the simulator ---------------------------------------------------------------------------


def test_the_simulators_history_is_in_event_order_so_the_rules_refuse_none_of_it() -> None:
    """`ledger simulate` (the demo's traffic) is a trusted feed with an hour's lateness and a
    velocity per account on every ISP: decided per partition, as the stream decides it (one
    LocalAuthorizer, one watermark, per partition), nothing of it is too late and no account
    is refused for its velocity (its bursts are one user's: the user's limit refuses first)."""
    partitions = 4  # the stack's default
    workload = simulate.generate(simulate.Scale(months=1, scale=0.01, seed=2006))
    isps = [r for r in workload.reference if isinstance(r, IspRegistered)]
    assert {isp.allowed_lateness_seconds for isp in isps} == {simulate.ALLOWED_LATENESS_SECONDS}
    reference = Reference.of(workload.reference)
    ledgers = [LocalAuthorizer(reference) for _ in range(partitions)]
    outcomes: dict[str, int] = defaultdict(int)
    behind = 0  # the most a purchase is behind its partition's watermark, in seconds
    commands = [*workload.setup, *(c for month in workload.months for c in month)]
    for command in commands:
        if isinstance(command, bytes):
            continue
        ledger = ledgers[partition_for(command.account_id, partitions)]  # type: ignore[union-attr]
        if isinstance(command, PurchaseRequested):
            behind = max(behind, ledger.progress.watermark_seconds - _seconds(command.occurred_at))
        for fact in ledger.handle(command):
            if isinstance(fact, PurchaseRejected | PurchaseAuthorized):
                outcomes[fact.reason if isinstance(fact, PurchaseRejected) else "authorized"] += 1
    assert 0 < behind <= 15 * 60
    assert outcomes["too_late"] == outcomes["account_velocity_exceeded"] == 0
    assert outcomes["authorized"] > 5_000 and outcomes["velocity_exceeded"] > 0
