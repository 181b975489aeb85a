"""Property tests: random command histories through the core and through the independent model
(tests/unit/model.py) give the same answers, and the core's invariants hold on every history."""

from __future__ import annotations

from collections import defaultdict
from datetime import timedelta
from typing import Any

import msgspec
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ledger.core import calendar
from ledger.core.authorizer import Policy, evolve
from ledger.core.reference import CONSUMER_DEFAULTS
from ledger.core.runner import LocalAuthorizer
from ledger.core.state import AccountState
from schemas.commands import LimitOverrides
from schemas.facts import (
    CommandRejected,
    Fact,
    PurchaseAuthorized,
    PurchaseRefunded,
    PurchaseRejected,
    RefundRejected,
)
from tests import builders as b
from tests.builders import REFERENCE, T0
from tests.unit.model import Model

HORIZON = 20 * 86_400  # short, so that histories reach past it
ACCOUNTS = {
    "a0": ("orange", "consumer"),
    "a1": ("alice", "consumer"),
    "e0": ("orange", "enterprise"),
}
USERS = ("u1", "u2", "u3")
PUBLISHERS = ("canalplay", "lemonde-archives", "shady", "nope")
AMOUNTS = (10, 15, 266, 266, 500, 999, 1_500, 1_501, 3_000)

# A step is a small tuple of choices; `_commands` turns a list of them into commands, so that
# hypothesis shrinks the choices and the failing history stays readable. Purchases come most
# often, from valid publishers mostly, so that histories reach the caps and the velocity limit.
_purchase = st.tuples(
    st.just("purchase"),
    st.sampled_from(list(ACCOUNTS)),
    st.sampled_from(USERS),
    st.sampled_from(PUBLISHERS[:2] * 4 + PUBLISHERS[2:]),
    st.sampled_from(AMOUNTS),
)
_refund = st.tuples(st.just("refund"), st.integers(0, 50), st.integers(1, 1_500))
_again = st.tuples(st.just("again"), st.integers(0, 50), st.booleans())
_wait = st.tuples(st.just("wait"), st.integers(0, 4 * 3600), st.integers(0, 3600))
_jump = st.tuples(st.just("wait"), st.integers(86_400, 6 * 86_400), st.integers(0, 3600))
_STEPS = {
    "purchase": _purchase,
    "refund": _refund,
    "again": _again,
    "wait": _wait,
    "jump": _jump,
    "open": st.tuples(st.just("open"), st.sampled_from(list(ACCOUNTS))),
    "block": st.tuples(st.just("block"), st.sampled_from(list(ACCOUNTS)), st.booleans()),
    "limits": st.tuples(
        st.just("limits"),
        st.sampled_from(list(ACCOUNTS)),
        st.sampled_from([None, 500, 2_000]),
        st.sampled_from([None, 1, 1, 3]),
        st.sampled_from([None, 1_000, 20_000]),
    ),
    "employee": st.tuples(
        st.just("employee"),
        st.sampled_from(USERS),
        st.booleans(),
        st.sampled_from([None, 0, 1_600, 5_000]),
    ),
    "close": st.tuples(st.just("close"), st.sampled_from(["orange", "alice"]), st.integers(1, 3)),
    "long_ago": st.tuples(st.just("long_ago")),
}
# How often each kind of step comes, out of 40.
_WEIGHTS = {
    "purchase": 18,
    "refund": 5,
    "again": 4,
    "wait": 4,
    "jump": 1,
    "open": 1,
    "block": 1,
    "limits": 2,
    "employee": 3,
    "close": 2,
    "long_ago": 1,
}
step = st.sampled_from([kind for kind, weight in _WEIGHTS.items() for _ in range(weight)]).flatmap(
    _STEPS.__getitem__
)


def _commands(steps: list[tuple[Any, ...]], with_closes: bool = True) -> list[Any]:
    clock = T0
    commands: list[Any] = [
        b.open_account(a, isp, kind, T0, f"open-{a}") for a, (isp, kind) in ACCOUNTS.items()
    ]
    purchases: list[Any] = []
    numbered = 0
    for choice in steps:
        numbered += 1
        kind = choice[0]
        when = clock
        if kind == "wait":
            clock += timedelta(seconds=choice[1])
            when = clock - timedelta(seconds=choice[2])  # out of order by up to an hour
            continue
        if kind == "long_ago":
            when = clock - timedelta(days=25)
            commands.append(b.purchase("a0", 266, when, purchase_id=f"old-{numbered}"))
        elif kind == "purchase":
            _, account, user, publisher, amount = choice
            command = b.purchase(
                account,
                amount,
                when,
                purchase_id=f"p{numbered}",
                user_id=user,
                publisher_id=publisher,
            )
            purchases.append(command)
            commands.append(command)
        elif kind == "refund" and purchases:
            target = purchases[choice[1] % len(purchases)]
            commands.append(
                b.refund(
                    target.account_id, target.purchase_id, choice[2], when, refund_id=f"r{numbered}"
                )
            )
        elif kind == "again" and commands:
            earlier = commands[choice[1] % len(commands)]
            if choice[2] and hasattr(earlier, "amount_cents"):
                earlier = msgspec.structs.replace(earlier, amount_cents=earlier.amount_cents + 1)
            commands.append(earlier)
        elif kind == "open":
            commands.append(
                b.open_account(choice[1], "alice", "enterprise", when, f"reopen-{numbered}")
            )
        elif kind == "block":
            maker = b.block if choice[2] else b.unblock
            commands.append(maker(choice[1], when))
        elif kind == "limits":
            given_limits = {
                k: v
                for k, v in zip(
                    ("max_purchase_cents", "velocity_max_purchases", "daily_cap_cents"),
                    choice[2:],
                    strict=True,
                )
                if v is not None
            }
            commands.append(b.set_limits(choice[1], when, **given_limits))
        elif kind == "employee":
            _, user, grant, budget = choice
            maker = b.authorise("e0", user, when, budget) if grant else b.revoke("e0", user, when)
            commands.append(maker)
        elif kind == "close" and with_closes:
            key = calendar.period_of(
                calendar.epoch_seconds(when - timedelta(days=31 * choice[2])), 1
            )
            commands.append(b.close(choice[1], key, when, command_id=f"close-{choice[1]}-{key}"))
    return commands


def _outcome(fact: Fact) -> str:
    if isinstance(fact, PurchaseRejected | RefundRejected | CommandRejected):
        return fact.reason
    return "ok"


def _run(commands: list[Any]) -> tuple[LocalAuthorizer, list[Fact]]:
    ledger = LocalAuthorizer(REFERENCE, Policy(horizon_seconds=HORIZON))
    facts = [fact for command in commands for fact in ledger.handle(command)]
    return ledger, facts


history = st.lists(step, min_size=10, max_size=150)
fast = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


# One busy household: many valid purchases, short waits and raised caps, to reach the velocity
# limit and the monthly cap that the mixed histories reach rarely.
_busy_step = st.one_of(
    st.tuples(
        st.just("purchase"),
        st.just("a0"),
        st.sampled_from(USERS[:2]),
        st.just("canalplay"),
        st.sampled_from((266, 999, 1_500)),
    ),
    st.tuples(st.just("wait"), st.integers(0, 40), st.integers(0, 30)),
    st.tuples(st.just("wait"), st.integers(3_600, 40_000), st.just(0)),
    st.tuples(
        st.just("limits"),
        st.just("a0"),
        st.just(None),
        st.sampled_from([None, 2, 5]),
        st.sampled_from([None, 20_000]),
    ),
    _refund,
    _again,
)
busy_history = st.lists(_busy_step, min_size=20, max_size=150)


@fast
@given(history | busy_history)
def test_core_answers_as_the_model_does(steps: list[tuple[Any, ...]]) -> None:
    commands = _commands(steps)
    ledger = LocalAuthorizer(REFERENCE, Policy(horizon_seconds=HORIZON))
    model = Model(REFERENCE, HORIZON)
    for index, command in enumerate(commands):
        (fact,) = ledger.handle(command)
        expected = model.handle(command)
        assert _outcome(fact) == expected.outcome, (index, command, fact)
        if isinstance(fact, PurchaseAuthorized):
            assert fact.net_cents == expected.net_cents
        if isinstance(fact, PurchaseAuthorized | PurchaseRefunded):
            assert (fact.billing_period, fact.late_for_period) == (
                expected.billing_period,
                expected.late_for,
            )


@fast
@given(history)
def test_postings_balance_and_refunds_never_exceed_the_purchase(
    steps: list[tuple[Any, ...]],
) -> None:
    _, facts = _run(_commands(steps))
    bought: dict[str, int] = {}
    refunded: dict[str, int] = defaultdict(int)
    for fact in facts:
        if isinstance(fact, PurchaseAuthorized | PurchaseRefunded):
            assert sum(p.amount_cents for p in fact.postings) == 0
            assert fact.net_cents + fact.vat_cents == fact.amount_cents
        if isinstance(fact, PurchaseAuthorized):
            bought.setdefault(fact.purchase_id, fact.amount_cents)
        elif isinstance(fact, PurchaseRefunded):
            refunded[fact.refund_id] = fact.amount_cents  # a duplicate fact counts once
    per_purchase: dict[str, int] = defaultdict(int)
    for fact in facts:
        if isinstance(fact, PurchaseRefunded) and refunded.pop(fact.refund_id, None) is not None:
            per_purchase[fact.purchase_id] += fact.amount_cents
    for purchase_id, total in per_purchase.items():
        assert total <= bought[purchase_id]


@fast
@given(st.lists(step.filter(lambda s: s[0] != "limits"), min_size=10, max_size=150))
def test_default_caps_are_never_exceeded(steps: list[tuple[Any, ...]]) -> None:
    _, facts = _run(_commands(steps))
    seen: set[str] = set()
    day: dict[tuple[str, str], int] = defaultdict(int)
    month: dict[tuple[str, str], int] = defaultdict(int)
    where: dict[str, tuple[str, str]] = {}
    for fact in facts:
        if fact.event_id in seen or getattr(fact, "account_id", None) in (None, "e0"):
            continue
        seen.add(fact.event_id)
        if isinstance(fact, PurchaseAuthorized):
            at = calendar.epoch_seconds(fact.occurred_at)
            where[fact.purchase_id] = (
                calendar.day_key(at),
                fact.late_for_period or fact.billing_period,
            )
            key_day, key_month = where[fact.purchase_id]
            day[fact.account_id, key_day] += fact.amount_cents
            month[fact.account_id, key_month] += fact.amount_cents
            assert day[fact.account_id, key_day] <= CONSUMER_DEFAULTS.daily_cap_cents
            assert month[fact.account_id, key_month] <= CONSUMER_DEFAULTS.monthly_cap_cents
        elif isinstance(fact, PurchaseRefunded):
            key_day, key_month = where[fact.purchase_id]
            day[fact.account_id, key_day] -= fact.amount_cents
            month[fact.account_id, key_month] -= fact.amount_cents


@fast
@given(history)
def test_the_same_commands_replayed_give_the_same_facts(steps: list[tuple[Any, ...]]) -> None:
    commands = _commands(steps)
    first_ledger, first = _run(commands)
    second_ledger, second = _run(commands)
    assert first == second
    assert first_ledger.states == second_ledger.states


@fast
@given(history, st.randoms(use_true_random=False))
def test_interleaving_accounts_changes_nothing(steps: list[tuple[Any, ...]], rnd: Any) -> None:
    commands = _commands(steps, with_closes=False)
    _, facts = _run(commands)
    # Shuffle the accounts among themselves, keeping each account's own order.
    queues: dict[str, list[Any]] = defaultdict(list)
    for command in commands:
        queues[command.account_id].append(command)
    shuffled: list[Any] = []
    while queues:
        account = rnd.choice(sorted(queues))
        shuffled.append(queues[account].pop(0))
        if not queues[account]:
            del queues[account]
    _, other = _run(shuffled)

    def per_account(all_facts: list[Fact]) -> dict[str, list[Fact]]:
        grouped: dict[str, list[Fact]] = defaultdict(list)
        for fact in all_facts:
            grouped[getattr(fact, "account_id", "")].append(fact)
        return grouped

    assert per_account(facts) == per_account(other)


@fast
@given(history)
def test_state_is_a_fold_of_the_facts_and_evolve_is_idempotent(
    steps: list[tuple[Any, ...]],
) -> None:
    ledger, facts = _run(_commands(steps, with_closes=False))
    policy = Policy(horizon_seconds=HORIZON)
    rebuilt: dict[str, AccountState | None] = {}
    for fact in facts:
        account = getattr(fact, "account_id", None)
        if account is None:
            continue
        state = evolve(rebuilt.get(account), fact, policy)
        state = evolve(state, fact, policy)  # twice: no change
        rebuilt[account] = state
    assert {k: v for k, v in rebuilt.items() if v is not None} == ledger.states


def test_limits_overrides_reject_nonsense() -> None:
    import pytest

    with pytest.raises(msgspec.ValidationError, match="velocity_max_purchases"):
        msgspec.convert({"velocity_max_purchases": 0}, LimitOverrides)
    with pytest.raises(msgspec.ValidationError, match="must not exceed"):
        msgspec.convert({"min_purchase_cents": 10, "max_purchase_cents": 5}, LimitOverrides)
