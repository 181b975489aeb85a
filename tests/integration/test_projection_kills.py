"""The projection writer killed with -9 in the middle of its batches, many times: afterwards no
event is lost and none applied twice. The facts are written straight onto ledger.events (the
pure core decided them), with duplicates and poison among them, so that the writer is tested
alone and fast; the balances are checked against a computation of this test's own from the
topic, which shares no code with the projections."""

from __future__ import annotations

import random
import time
from collections import defaultdict
from collections.abc import Callable, Iterable
from datetime import timedelta
from pathlib import Path

import psycopg

from ledger.core.runner import LocalAuthorizer
from ledger.kafka import topics
from ledger.kafka.partitioning import partition_for
from ledger.produce import LedgerProducer
from ledger.stack.state import StackState
from schemas import codec
from schemas.facts import Fact
from tests import builders as b
from tests.harness import (
    Projector,
    Record,
    distinct_facts,
    end_offsets,
    metric,
    read_until,
    wait_for,
)
from tests.world import T0, World

ACCOUNTS = 150
PURCHASES = 10_000
DUPLICATES = 1_000
KILLS = 6
BATCH_EVENTS = 50
LATE_DUPLICATES = 300


def _workload(world: World, rng: random.Random) -> tuple[list[bytes], list[str]]:
    """The facts of a random month of this world's accounts, encoded, in decision order."""
    ledger = LocalAuthorizer(world.reference)
    accounts = [world.account(f"k{i}") for i in range(ACCOUNTS)]
    commands: list = [b.open_account(a, world.isp.isp_id) for a in accounts]
    bought = []
    for i in range(PURCHASES):
        account = rng.choice(accounts)
        publisher = rng.choice((world.vod.publisher_id, world.press.publisher_id))
        command = b.purchase(account, rng.randint(15, 1500), T0 + timedelta(minutes=7 * i),
                             publisher_id=publisher)  # fmt: skip
        commands.append(command)
        bought.append(command)
        if rng.random() < 0.05:
            earlier = rng.choice(bought)
            when = T0 + timedelta(minutes=7 * i + 1)
            refund = b.refund(earlier.account_id, earlier.purchase_id, rng.randint(1, 100), when)
            commands.append(refund)
    encoded = []
    for origin, command in enumerate(commands, start=1):
        encoded.extend(codec.encode(f) for f in ledger.handle(command, origin=origin))
    return encoded, accounts


def _reached(ends: dict[int, tuple[int, int]]) -> Callable[[list[Record]], bool]:
    def done(records: list[Record]) -> bool:
        last: dict[int, int] = {}
        for record in records:
            last[record.partition] = max(last.get(record.partition, -1), record.offset)
        return all(last.get(p, start - 1) + 1 >= end for p, (start, end) in ends.items())

    return done


def _answers(writer: Projector) -> bool:
    try:
        writer.metrics()
    except OSError:
        return False
    return True


def _stored(dsn: str) -> dict[int, int]:
    with psycopg.connect(dsn, options="-c search_path=ledger") as db:
        rows = db.execute(
            "SELECT partition, next_offset FROM projection_offsets WHERE topic = %s",
            (topics.EVENTS,),
        ).fetchall()
    return {int(p): int(o) for p, o in rows}


def _produce(
    bootstrap: str, partitions: int, facts: list[bytes], poison: list[bytes]
) -> set[tuple[int, int]]:
    """Put the facts on ledger.events, each in its account's partition; returns where the poison
    landed (partition, offset)."""
    with LedgerProducer(bootstrap, partitions, client_id="kill-test") as producer:
        for raw in facts:
            account = codec.decode_fact(raw).account_id  # type: ignore[union-attr]
            producer.send_raw(topics.EVENTS, account.encode(), raw,
                              partition_for(account, partitions))  # fmt: skip
        sent = [producer.send_raw(topics.EVENTS, b"poison", raw, i % partitions)
                for i, raw in enumerate(poison)]  # fmt: skip
        producer.flush()
        return {(f.get(timeout=30).partition, f.get(timeout=30).offset) for f in sent}


def _account_books(facts: Iterable[Fact]) -> dict[str, tuple[int, int]]:
    """The checker's own sums: per account, debits and credits of its postings."""
    debits: dict[str, int] = defaultdict(int)
    credits: dict[str, int] = defaultdict(int)
    for fact in facts:
        for posting in getattr(fact, "postings", ()):
            if posting.party != "account":
                continue
            if posting.amount_cents >= 0:
                debits[posting.party_id] += posting.amount_cents
            else:
                credits[posting.party_id] -= posting.amount_cents
    return {a: (debits[a], credits[a]) for a in debits}


def _projected_books(dsn: str, accounts: list[str]) -> dict[str, tuple[int, int]]:
    with psycopg.connect(dsn, options="-c search_path=ledger") as db:
        rows = db.execute(
            "SELECT party_id, debits_cents, credits_cents FROM balances"
            " WHERE party = 'account' AND party_id = ANY(%s)",
            (accounts,),
        ).fetchall()
    return {account: (debit, credit) for account, debit, credit in rows}


def _applied(dsn: str, event_ids: list[str]) -> int:
    with psycopg.connect(dsn, options="-c search_path=ledger") as db:
        row = db.execute(
            "SELECT count(*) FROM applied_events WHERE event_id = ANY(%s)", (event_ids,)
        ).fetchone()
    return int(row[0]) if row else 0


def test_killed_mid_batch_many_times_the_writer_loses_nothing_and_counts_nothing_twice(
    stack: StackState, tmp_path: Path, seed: int
) -> None:
    assert stack.kafka is not None and stack.postgres is not None
    bootstrap, dsn = stack.kafka.bootstrap_servers, stack.postgres.dsn
    partitions = stack.topic_partitions or 4
    rng = random.Random(seed)
    world = World()
    facts, accounts = _workload(world, rng)
    poison = [b"{not json", b'{"type":"purchase.authorized.v1","event_id":1}', b'{"type":"nope"}']
    start_events = end_offsets(bootstrap, topics.EVENTS)
    start_dlq = end_offsets(bootstrap, topics.DLQ)
    poisoned = _produce(bootstrap, partitions, [*facts, *rng.sample(facts, DUPLICATES)], poison)
    ends = end_offsets(bootstrap, topics.EVENTS)

    # Small batches: the writer is inside a transaction nearly all the time it runs.
    writer = Projector(f"kill-writer-{world.run}", tmp_path, batch_events_max=BATCH_EVENTS)
    interrupted, progress = 0, []

    def reached() -> bool:
        return all(_stored(dsn).get(p, 0) >= o for p, o in ends.items())

    try:
        for _ in range(KILLS):
            before = _stored(dsn)
            writer.start()
            wait_for(lambda before=before: _stored(dsn) != before or reached(), 60,  # type: ignore[misc]
                     "the writer to commit a batch")  # fmt: skip
            time.sleep(rng.uniform(0.0, 0.3))
            writer.kill()
            writer.wait_gone()
            interrupted += not reached()
            progress.append(sum(_stored(dsn).values()))
        # More duplicates while it is down: the last run has work of its own to account for.
        _produce(bootstrap, partitions, rng.sample(facts, LATE_DUPLICATES), [])
        ends.update(end_offsets(bootstrap, topics.EVENTS))
        writer.start()
        wait_for(reached, 180, "the writer to reach the end of ledger.events")
        wait_for(lambda: _answers(writer), 30, "the writer's metrics")
        samples = writer.metrics()
    finally:
        writer.stop()
    assert writer.process is not None and writer.process.returncode == 0, writer.log_tail()
    assert progress == sorted(progress), progress
    assert interrupted >= KILLS // 2, f"only {interrupted} kills landed before the end"

    # The checker: every distinct fact of ours read back from the topic, summed per account.
    span = {p: (start_events.get(p, 0), end) for p, end in ends.items()}
    records = read_until(bootstrap, topics.EVENTS, start_events, _reached(span), 60)
    mine = distinct_facts(r for r in records if r.key != b"poison")
    mine = {k: f for k, f in mine.items() if getattr(f, "account_id", None) in set(accounts)}
    assert len(mine) == len(facts)
    assert _projected_books(dsn, accounts) == _account_books(mine.values())
    assert _applied(dsn, list(mine)) == len(mine)
    # The poison is on the dead-letter topic with its reason (more than once if a kill fell
    # between the dead letter and the commit: never lost), and nothing else of ours is.
    letters = read_until(bootstrap, topics.DLQ, start_dlq, lambda r: len(r) >= len(poison), 60)
    dead = [codec.decode_dead_letter(r.value) for r in letters]
    assert {(d.partition, d.offset) for d in dead if d.source_topic == topics.EVENTS} == poisoned
    assert {d.reason for d in dead} <= {"malformed_json", "invalid_field", "unknown_type"}
    # The last run's own books: what it read is what it applied, skipped or set aside.
    consumed = metric(samples, "ledger_projection_records_consumed_total")
    outcomes = metric(samples, "ledger_projection_records_total")
    assert consumed == outcomes
    assert metric(samples, "ledger_projection_records_total{outcome=duplicate}") >= LATE_DUPLICATES
