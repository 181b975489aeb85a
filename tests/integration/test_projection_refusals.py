"""A fact that PostgreSQL refuses (issue 16): the decoder accepts it, the database does not (an
account opened a second time under another command: the accounts' primary key, SQLSTATE 23505).
The writer, killed and restarted around it, sets it aside on ledger.dlq with the database's
message, applies the good facts around it once, never tries it again, and still waits for a
PostgreSQL that went away."""

from __future__ import annotations

import signal
import time
from datetime import timedelta
from pathlib import Path

import psycopg

from ledger.core.runner import LocalAuthorizer
from ledger.kafka import topics
from ledger.kafka.partitioning import partition_for
from ledger.produce import LedgerProducer
from ledger.settings import load_settings
from ledger.stack import manager, proc
from ledger.stack.state import StackState
from schemas import codec
from schemas.facts import PurchaseAuthorized
from tests import builders as b
from tests.harness import Projector, metric, read_until, wait_for
from tests.world import T0, World

BATCH_EVENTS = 20
PURCHASES = 60


def _produce(bootstrap: str, partitions: int, account: str, facts: list[bytes]) -> list[int]:
    """The facts on the account's partition, in order; returns their offsets."""
    with LedgerProducer(bootstrap, partitions, client_id="refusal-test") as producer:
        sent = [producer.send_raw(topics.EVENTS, account.encode(), raw,
                                  partition_for(account, partitions)) for raw in facts]  # fmt: skip
        producer.flush()
        return [future.get(timeout=30).offset for future in sent]


def _stored(dsn: str, partition: int) -> int:
    with psycopg.connect(dsn, options="-c search_path=ledger") as db:
        row = db.execute(
            "SELECT next_offset FROM projection_offsets WHERE topic = %s AND partition = %s",
            (topics.EVENTS, partition),
        ).fetchone()
    return int(row[0]) if row else 0


def _applied(dsn: str, event_ids: list[str]) -> dict[str, int]:
    with psycopg.connect(dsn, options="-c search_path=ledger") as db:
        rows = db.execute(
            "SELECT event_id, count(*) FROM applied_events WHERE event_id = ANY(%s)"
            " GROUP BY event_id",
            (event_ids,),
        ).fetchall()
    return {event_id: int(n) for event_id, n in rows}


def _account_purchases(dsn: str, account: str) -> int:
    with psycopg.connect(dsn, options="-c search_path=ledger") as db:
        row = db.execute(
            "SELECT purchases FROM balances WHERE party = 'account' AND party_id = %s", (account,)
        ).fetchone()
    return int(row[0]) if row else 0


def _answers(writer: Projector) -> bool:
    try:
        writer.metrics()
    except OSError:
        return False
    return True


def _facts(world: World, ledger: LocalAuthorizer, account: str) -> tuple[list[bytes], bytes, str]:
    """An account opened, its purchases; and the same account opened again under another
    command: another event id, which the decoder takes, and a row the accounts' primary key
    refuses."""
    opened = ledger.handle(b.open_account(account, world.isp.isp_id), origin=1)
    purchases = [
        fact
        for i in range(PURCHASES)
        for fact in ledger.handle(
            b.purchase(
                account, 10 + i, T0 + timedelta(minutes=7 * i), publisher_id=world.vod.publisher_id
            ),
            origin=2 + i,
        )
    ]
    again = LocalAuthorizer(world.reference).handle(
        b.open_account(account, world.isp.isp_id), origin=1
    )
    assert again[0].event_id != opened[0].event_id
    return (
        [codec.encode(f) for f in [*opened, *purchases]],
        codec.encode(again[0]),
        again[0].event_id,
    )


def test_a_fact_postgresql_refuses_is_set_aside_with_its_message_and_the_rest_applied_once(
    stack: StackState, tmp_path: Path
) -> None:
    assert stack.kafka is not None and stack.postgres is not None
    bootstrap, dsn = stack.kafka.bootstrap_servers, stack.postgres.dsn
    partitions = stack.topic_partitions or 4
    world = World()
    ledger = LocalAuthorizer(world.reference)
    account = world.account("refused")
    good, bad, refused_id = _facts(world, ledger, account)
    partition = partition_for(account, partitions)
    dlq_start = {0: _dlq_end(bootstrap)}

    writer = Projector(f"refusal-writer-{world.run}", tmp_path, batch_events_max=BATCH_EVENTS)
    try:
        # The first half, the refused fact, the second half; the writer killed around it.
        offsets = _produce(bootstrap, partitions, account, good[:31])
        writer.start()
        wait_for(lambda: _stored(dsn, partition) > offsets[0], 60, "a first batch")
        writer.kill()
        writer.wait_gone()
        [bad_offset] = _produce(bootstrap, partitions, account, [bad])
        offsets += _produce(bootstrap, partitions, account, good[31:])
        writer.start()
        wait_for(lambda: _stored(dsn, partition) > offsets[-1], 120, "the end of the facts")
        wait_for(lambda: _answers(writer), 30, "the writer's metrics")
        refused = metric(writer.metrics(), "ledger_projection_records_total{outcome=refused")
        writer.kill()
        writer.wait_gone()

        # Restarted, it does not try the refused fact again (its offset is consumed) ...
        writer.start()
        wait_for(lambda: _answers(writer), 60, "the restarted writer's metrics")
        time.sleep(2)
        assert metric(writer.metrics(), "ledger_projection_records_total{outcome=refused") == 0
        assert writer.alive(), writer.log_tail()

        # ... and waits for PostgreSQL stopped under it, then goes on with what came meanwhile.
        more = [
            codec.encode(f)
            for f in ledger.handle(
                b.purchase(
                    account, 50, T0 + timedelta(days=1), publisher_id=world.vod.publisher_id
                ),
                origin=99,
            )
        ]
        samples = _outage(stack, writer, account, more)
    finally:
        writer.stop()
    assert writer.process is not None and writer.process.returncode == 0, writer.log_tail()
    assert refused == 1
    assert metric(samples, "ledger_projection_db_retries_total{reason=unreachable") >= 1

    # The good facts applied once each, the refused one not at all.
    ids = [codec.decode_fact(raw).event_id for raw in [*good, *more]]
    applied = _applied(dsn, ids)
    assert {i: applied.get(i, 0) for i in ids} == dict.fromkeys(ids, 1)
    assert _applied(dsn, [refused_id]) == {}
    authorized = sum(isinstance(codec.decode_fact(raw), PurchaseAuthorized) for raw in good + more)
    assert authorized > PURCHASES // 2
    assert _account_purchases(dsn, account) == authorized

    _refused_on_the_dlq(bootstrap, dlq_start, partition, bad_offset, refused_id)


def _outage(
    stack: StackState, writer: Projector, account: str, more: list[bytes]
) -> dict[str, float]:
    """PostgreSQL stopped at once (SIGQUIT) under the writer, facts produced meanwhile; the
    writer waits, and applies them once PostgreSQL is back. Returns its metrics."""
    assert stack.kafka is not None and stack.postgres is not None
    partitions = stack.topic_partitions or 4
    proc.stop(stack.postgres.process, signal.SIGQUIT, 30)
    late = _produce(stack.kafka.bootstrap_servers, partitions, account, more)
    time.sleep(3)
    assert writer.alive(), writer.log_tail()
    manager.up(load_settings())
    partition = partition_for(account, partitions)
    wait_for(lambda: _stored(stack.postgres.dsn, partition) > late[-1], 120,  # type: ignore[union-attr]
             "the writer after the outage")  # fmt: skip
    return writer.metrics()


def _refused_on_the_dlq(
    bootstrap: str, start: dict[int, int], partition: int, offset: int, event_id: str
) -> None:
    """The refused fact on ledger.dlq, with the database's SQLSTATE and message and its bytes."""
    records = read_until(bootstrap, topics.DLQ, start, lambda r: _ours(r, offset, partition), 60)
    letters = [codec.decode_dead_letter(r.value) for r in records]
    mine = [
        d for d in letters
        if d.source_topic == topics.EVENTS and (d.partition, d.offset) == (partition, offset)
    ]  # fmt: skip
    assert mine, "no dead letter for the refused fact"
    assert {d.reason for d in mine} == {"refused_by_database"}
    assert all(d.detail.startswith("23505 ") and "accounts" in d.detail for d in mine), mine
    assert {codec.decode_fact(_raw(d.raw_base64)).event_id for d in mine} == {event_id}


def _raw(b64: str) -> bytes:
    import base64

    return base64.b64decode(b64)


def _ours(records: list, offset: int, partition: int) -> bool:
    for record in records:
        letter = codec.decode_dead_letter(record.value)
        if letter.source_topic == topics.EVENTS and (letter.partition, letter.offset) == (
            partition,
            offset,
        ):
            return True
    return False


def _dlq_end(bootstrap: str) -> int:
    from tests.harness import end_offsets

    return end_offsets(bootstrap, topics.DLQ).get(0, 0)
