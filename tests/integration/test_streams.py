"""The stream workers on the real broker: a scripted scenario decided exactly as the pure core
decides it, poison set aside, balances counted once, a worker killed with -9 and restarted, and two
workers sharing the partitions through a rebalance."""

from __future__ import annotations

import random
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import msgspec
import pytest

from ledger.core.reference import Reference
from ledger.core.state import decode_account
from ledger.kafka import topics
from ledger.kafka.groups import ACCOUNTS_TABLE
from ledger.kafka.partitioning import partition_for
from ledger.stack.state import StackState
from ledger.tables import read_balances, read_table
from schemas import codec
from schemas.commands import Command, LimitOverrides
from schemas.facts import (
    Fact,
    PurchaseAuthorized,
    PurchaseRefunded,
    PurchaseRejected,
    RefundRejected,
)
from tests import builders as b
from tests.harness import (
    Produced,
    Worker,
    distinct_facts,
    end_offsets,
    fold_balances,
    metric,
    oracle,
    produce,
    read_until,
    wait_for,
)
from tests.world import T0, World


@pytest.fixture
def workers(tmp_path: Path) -> Iterator[list[Worker]]:
    started: list[Worker] = []
    yield started
    for worker in started:
        worker.stop()


def _start(workers: list[Worker], tmp_path: Path, name: str, data: str | None = None) -> Worker:
    worker = Worker(name, tmp_path / (data or name)).start()
    workers.append(worker)
    return worker


def _read_facts(
    stack: StackState, start: dict[int, int], expected: dict[str, Fact], seconds: float = 120
) -> dict[str, Fact]:
    assert stack.kafka is not None
    wanted = set(expected)

    def complete(records: list) -> bool:
        ids = {codec.decode_fact(r.value).event_id for r in records}
        return wanted <= ids

    records = read_until(stack.kafka.bootstrap_servers, topics.EVENTS, start, complete, seconds)
    facts = distinct_facts(records)
    mine = {k: v for k, v in facts.items() if k in wanted or _account_of(v) in _accounts(expected)}
    return mine


def _account_of(fact: Fact) -> str | None:
    return getattr(fact, "account_id", None)


def _accounts(facts: dict[str, Fact]) -> set[str]:
    return {a for a in (_account_of(f) for f in facts.values()) if a}


def _outcomes(facts: dict[str, Fact], account: str) -> list[str]:
    mine = [
        f
        for f in facts.values()
        if _account_of(f) == account
        and isinstance(f, PurchaseAuthorized | PurchaseRejected | PurchaseRefunded | RefundRejected)
    ]
    mine.sort(key=lambda f: f.origin or 0)
    return [
        "ok" if isinstance(f, PurchaseAuthorized | PurchaseRefunded) else f.reason for f in mine
    ]  # type: ignore[union-attr]


def _scenario(world: World) -> list[Command]:
    c1, c2, c3, e1 = (world.account(n) for n in ("c1", "c2", "c3", "e1"))
    vod, press, shady = world.vod.publisher_id, world.press.publisher_id, world.shady.publisher_id
    isp = world.isp.isp_id
    at = lambda minutes: T0 + timedelta(minutes=minutes)  # noqa: E731
    return [
        b.open_account(c1, isp, when=at(0), command_id=f"open-{c1}"),
        b.open_account(c2, isp, when=at(0), command_id=f"open-{c2}"),
        b.open_account(c3, isp, when=at(0), command_id=f"open-{c3}"),
        b.open_account(e1, isp, "enterprise", when=at(0), command_id=f"open-{e1}"),
        # c1: the daily cap (€30), a refund giving room back, a duplicate of each kind.
        b.purchase(c1, 1_500, at(1), purchase_id=f"{c1}-p1", publisher_id=vod),
        b.purchase(c1, 1_500, at(2), purchase_id=f"{c1}-p2", publisher_id=press),
        b.purchase(c1, 15, at(3), purchase_id=f"{c1}-p3", publisher_id=vod),
        b.refund(c1, f"{c1}-p1", 500, at(4), refund_id=f"{c1}-r1"),
        b.purchase(c1, 500, at(5), purchase_id=f"{c1}-p4", publisher_id=vod),
        b.purchase(c1, 1_500, at(1), purchase_id=f"{c1}-p1", publisher_id=vod),
        b.purchase(c1, 1_499, at(1), purchase_id=f"{c1}-p1", publisher_id=vod),
        b.refund(c1, f"{c1}-p1", 1_001, at(6), refund_id=f"{c1}-r2"),
        b.purchase(c1, 10, at(7), purchase_id=f"{c1}-p5", publisher_id=shady),
        # c2: a monthly cap lowered at runtime, then velocity (5 a minute).
        b.set_limits(c2, at(0), monthly_cap_cents=2_000),
        *[
            b.purchase(c2, 300, at(10 + i / 10), purchase_id=f"{c2}-v{i}", publisher_id=vod)
            for i in range(6)
        ],
        b.purchase(c2, 600, at(20), purchase_id=f"{c2}-m1", publisher_id=vod),
        b.purchase(c2, 500, at(21), purchase_id=f"{c2}-m2", publisher_id=vod),
        # c3: blocked (parental), then unblocked.
        b.block(c3, at(1)),
        b.purchase(c3, 266, at(2), purchase_id=f"{c3}-p1", publisher_id=vod),
        b.unblock(c3, at(3)),
        b.purchase(c3, 266, at(4), purchase_id=f"{c3}-p2", publisher_id=vod),
        # e1: Internet Plus Pro, an authorised employee with a budget and one who is not.
        b.authorise(e1, "alice", at(1), budget_cents=2_000),
        b.purchase(e1, 1_500, at(2), purchase_id=f"{e1}-p1", user_id="alice", publisher_id=press),
        b.purchase(e1, 600, at(3), purchase_id=f"{e1}-p2", user_id="alice", publisher_id=press),
        b.purchase(e1, 100, at(4), purchase_id=f"{e1}-p3", user_id="bob", publisher_id=press),
        b.purchase(
            world.account("nobody"), 100, at(4), purchase_id=f"{world.run}-x", publisher_id=vod
        ),
    ]


def test_scenario_is_decided_as_the_core_decides_and_poison_is_set_aside(
    stack: StackState, workers: list[Worker], tmp_path: Path
) -> None:
    assert stack.kafka is not None
    bootstrap, partitions = stack.kafka.bootstrap_servers, stack.topic_partitions or 4
    world = World()
    events_start = end_offsets(bootstrap, topics.EVENTS)
    dlq_start = end_offsets(bootstrap, topics.DLQ)
    c1 = world.account("c1")
    wrong = (partition_for(c1, partitions) + 1) % partitions
    valid_elsewhere = codec.encode(
        b.purchase(c1, 100, T0, purchase_id=f"{c1}-wrong", publisher_id=world.vod.publisher_id)
    )
    poison = [
        (None, b"{not json", 0),
        (c1.encode(), b'{"type":"purchase.requested.v1","amount_cents":-5}', 0),
        (c1.encode(), valid_elsewhere, wrong),
    ]
    # Issue 14's rules, on an ISP of their own (the world's has neither, as before).
    late_isp = msgspec.structs.replace(
        world.isp,
        isp_id=f"late-{world.run}",
        allowed_lateness_seconds=3600,
        consumer_limits=LimitOverrides(velocity_max_attempts_per_account=2),
    )
    records = [*world.records, late_isp]
    commands = [*_scenario(world), *_caps_scenario(world, late_isp.isp_id)]
    produced = produce(bootstrap, partitions, records, commands, poison)
    _, expected = oracle(Reference.of(records), produced)
    worker = _start(workers, tmp_path, "scenario")

    facts = _read_facts(stack, events_start, expected)
    assert facts == expected, worker.log_tail()
    # The same, said as the business would say it.
    # A duplicate with the same body is the same fact again (one event id): it shows once.
    assert _outcomes(facts, c1) == [
        "ok", "ok", "daily_cap_exceeded", "ok", "ok", "duplicate_with_different_body",
        "refund_exceeds_purchase", "publisher_blocked",
    ]  # fmt: skip
    assert _outcomes(facts, world.account("c2")) == [
        "ok", "ok", "ok", "ok", "ok", "velocity_exceeded", "monthly_cap_exceeded", "ok",
    ]  # fmt: skip
    assert _outcomes(facts, world.account("c3")) == ["account_blocked", "ok"]
    assert _outcomes(facts, world.account("e1")) == [
        "ok",
        "employee_budget_exceeded",
        "employee_not_authorised",
    ]
    assert _outcomes(facts, world.account("nobody")) == ["account_unknown"]
    assert _outcomes(facts, world.account("c4")) == [
        "ok", "too_late", "ok", "account_velocity_exceeded",
    ]  # fmt: skip

    letters = read_until(
        bootstrap,
        topics.DLQ,
        dlq_start,
        lambda r: (
            len(
                {
                    (
                        codec.decode_dead_letter(x.value).partition,
                        codec.decode_dead_letter(x.value).offset,
                    )
                    for x in r
                }
            )
            >= 3
        ),
        60,
    )
    dead = {
        (d.partition, d.offset): d for d in (codec.decode_dead_letter(r.value) for r in letters)
    }
    assert set(dead) == set(produced.poison)
    assert {d.reason for d in dead.values()} == {
        "malformed_json",
        "invalid_field",
        "wrong_partition",
    }
    assert all(d.source_topic == topics.COMMANDS for d in dead.values())

    def balances_match() -> bool:
        got = read_balances(bootstrap, ACCOUNTS_TABLE, "publisher", partitions)
        want = fold_balances(expected.values(), "publisher", partitions)
        return all(got.get(k) == v for k, v in want.items())

    wait_for(balances_match, 60, "the publisher balances")
    isps = read_balances(bootstrap, ACCOUNTS_TABLE, "isp", partitions)
    assert (
        isps[world.isp.isp_id]
        == fold_balances(expected.values(), "isp", partitions)[world.isp.isp_id]
    )
    account = decode_account(read_table(bootstrap, ACCOUNTS_TABLE, partitions)[c1.encode()])
    assert account.owed_cents == 1_500 + 1_500 - 500 + 500

    samples = worker.metrics()
    assert metric(samples, "ledger_dead_letters_total") >= 3
    assert metric(samples, "ledger_decisions_total{outcome=rejected,reason=velocity_exceeded}") >= 1


def _caps_scenario(world: World, isp_id: str) -> list[Command]:
    """c4, on an ISP that allows an hour's lateness and 2 attempts a minute per account: a
    purchase 3 hours behind its partition's watermark, then a third attempt within the minute by
    another user. Dated now: the partition's watermark is shared with the tests before this one
    on the same stack, whose purchases are dated in 2006 or, through the API, at most minutes
    ahead of the clock."""
    c4, vod = world.account("c4"), world.vod.publisher_id
    now = datetime.now(UTC).replace(microsecond=0)
    return [
        b.open_account(c4, isp_id, when=T0, command_id=f"open-{c4}"),
        b.purchase(c4, 100, now, purchase_id=f"{c4}-p1", user_id="u1", publisher_id=vod),
        b.purchase(
            c4, 100, now - timedelta(hours=3), purchase_id=f"{c4}-old", publisher_id=vod
        ),
        b.purchase(c4, 100, now + timedelta(seconds=1), purchase_id=f"{c4}-p2", user_id="u2",
                   publisher_id=vod),
        b.purchase(c4, 100, now + timedelta(seconds=2), purchase_id=f"{c4}-p3", user_id="u3",
                   publisher_id=vod),
    ]  # fmt: skip


def _busy_world(world: World, accounts: int, purchases: int, seed: int) -> list[Command]:
    rnd = random.Random(seed)
    names = [world.account(f"a{i}") for i in range(accounts)]
    commands: list[Command] = [
        b.open_account(n, world.isp.isp_id, when=T0, command_id=f"open-{n}") for n in names
    ]
    for i in range(purchases):
        name = rnd.choice(names)
        command = b.purchase(
            name,
            rnd.choice((99, 266, 499, 990)),
            T0 + timedelta(seconds=30 * i),
            purchase_id=f"{name}-{i}",
            publisher_id=rnd.choice((world.vod, world.press)).publisher_id,
        )
        commands.append(command)
        if rnd.random() < 0.05:
            commands.append(command)  # a client's retry
        if rnd.random() < 0.03:
            commands.append(
                b.refund(
                    name,
                    command.purchase_id,
                    command.amount_cents,
                    T0 + timedelta(seconds=30 * i + 5),
                    refund_id=f"{name}-r{i}",
                )
            )
    return commands


def _check_against_oracle(
    stack: StackState, world: World, produced, events_start, workers: list[Worker]
) -> None:
    assert stack.kafka is not None
    bootstrap, partitions = stack.kafka.bootstrap_servers, stack.topic_partitions or 4
    _, expected = oracle(world.reference, produced)
    facts = _read_facts(stack, events_start, expected, seconds=420)
    logs = "\n".join(w.log_tail(15) for w in workers)
    assert set(facts) == set(expected), logs
    assert facts == expected
    want = fold_balances(expected.values(), "isp", partitions)[world.isp.isp_id]

    def isp_balance_done() -> bool:
        got = read_balances(bootstrap, ACCOUNTS_TABLE, "isp", partitions)
        return got.get(world.isp.isp_id) == want

    wait_for(isp_balance_done, 120, "the ISP balance to count every fact once")


def _consumed(worker: Worker) -> float:
    try:
        return metric(worker.metrics(), "ledger_commands_consumed_total")
    except OSError:
        return 0.0  # not serving yet


def _wait_consumed(worker: Worker, count: float) -> None:
    wait_for(lambda: worker.alive() and _consumed(worker) >= count, 420, f"{count:.0f} commands")


def test_kill_9_mid_stream_changes_nothing(
    stack: StackState, workers: list[Worker], tmp_path: Path, seed: int
) -> None:
    assert stack.kafka is not None
    bootstrap, partitions = stack.kafka.bootstrap_servers, stack.topic_partitions or 4
    world = World()
    events_start = end_offsets(bootstrap, topics.EVENTS)
    produced = produce(bootstrap, partitions, world.records, _busy_world(world, 400, 20_000, seed))
    total = len(produced.commands)
    victim = _start(workers, tmp_path, "victim", data="state")
    for round_ in range(2):
        _wait_consumed(victim, total * (round_ + 1) / 4)
        victim.kill()  # kill -9, mid-batch
        victim.wait_gone()
        victim = _start(workers, tmp_path, f"restarted{round_}", data="state")
    _check_against_oracle(stack, world, produced, events_start, workers)


SECOND_HALF_CHUNK = 100
SECOND_HALF_PAUSE_SECONDS = 0.3


def test_two_workers_share_partitions_through_a_rebalance(
    stack: StackState, workers: list[Worker], tmp_path: Path, seed: int
) -> None:
    assert stack.kafka is not None
    bootstrap, partitions = stack.kafka.bootstrap_servers, stack.topic_partitions or 4
    world = World()
    events_start = end_offsets(bootstrap, topics.EVENTS)
    commands = _busy_world(world, 400, 20_000, seed + 1)
    half = len(commands) // 2
    first_half = produce(bootstrap, partitions, world.records, commands[:half])
    one = _start(workers, tmp_path, "one")
    _wait_consumed(one, half / 3)
    two = _start(workers, tmp_path, "two")  # joins: the partitions are shared anew
    # Under load: the second half arrives in small chunks for about half a minute, while the
    # group rebalances (a worker decides a whole burst faster than the group settles).
    second_half = Produced([], [])
    for chunk in range(half, len(commands), SECOND_HALF_CHUNK):
        sent = produce(bootstrap, partitions, [], commands[chunk : chunk + SECOND_HALF_CHUNK])
        second_half.commands.extend(sent.commands)
        time.sleep(SECOND_HALF_PAUSE_SECONDS)
    wait_for(lambda: _consumed(two) > 0, 420, "the second worker to take partitions")
    one.stop()  # a graceful stop: the second worker takes everything over
    produced = type(first_half)(first_half.commands + second_half.commands, [])
    _check_against_oracle(stack, world, produced, events_start, workers)
