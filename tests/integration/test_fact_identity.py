"""An event id names one fact, on the real stack (issue 12): the projection writer stops on two
different facts under one id and commits nothing, an old log whose rejection shares its id with
the acceptance that followed projects both facts, and `ledger reconcile`'s fact-by-fact check
finds a row removed, changed or added behind the writer's back.

Each test has a topic and a schema of its own (a forged fact on ledger.events would stop every
writer of the shared stack for good), written by the real writer code over the real broker and
database."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import msgspec
import psycopg
import pytest

from ledger.core.authorizer import fingerprint
from ledger.core.reference import Reference
from ledger.core.runner import LocalAuthorizer
from ledger.produce import LedgerProducer
from ledger.stack.state import StackState
from projections.factcheck import bucket_of, bucket_sql, check_facts
from projections.replay import drop_schema, fresh_schema
from projections.store import ConflictingFacts
from projections.writer import Writer
from schemas import codec
from schemas.facts import AccountOpened, CommandRejected, Fact
from schemas.reference import IspRegistered
from tests import builders as b
from tests.builders import CANALPLAY, LEMONDE, ORANGE, T0, at

pytestmark = pytest.mark.integration
PARTITIONS = 2
WRITER_SECONDS_MAX = 90.0
PROBE = IspRegistered(
    isp_id="x", name="Probe ISP", billing_day=1, commission_bp=1000, occurred_at=T0
)


@dataclass(frozen=True)
class Private:
    bootstrap: str
    dsn: str
    topic: str
    dlq: str
    schema: str
    run: str

    def db(self) -> psycopg.Connection[Any]:
        return psycopg.connect(self.dsn, options=f"-c search_path={self.schema}", autocommit=True)

    def rows(self, query: str, *params: Any) -> list[tuple[Any, ...]]:
        with self.db() as db:
            return db.execute(query.encode(), params).fetchall()

    def stored(self) -> dict[int, int]:
        rows = self.rows(
            "SELECT partition, next_offset FROM projection_offsets WHERE topic = %s", self.topic
        )
        return {int(p): int(o) for p, o in rows}

    def produce(self, facts: list[Fact]) -> list[tuple[int, int]]:
        """Each fact in partition 0: (partition, offset) of each."""
        with LedgerProducer(self.bootstrap, PARTITIONS, client_id="fact-identity") as producer:
            sent = [producer.send_raw(self.topic, getattr(f, "account_id", "x").encode(),
                                      codec.encode(f), 0) for f in facts]  # fmt: skip
            producer.flush()
            return [(f.get(timeout=30).partition, f.get(timeout=30).offset) for f in sent]


def _topics(bootstrap: str, create: list[str], delete: list[str]) -> None:
    from kafka.admin import KafkaAdminClient, NewTopic

    admin = KafkaAdminClient(bootstrap_servers=bootstrap, client_id="fact-identity")
    try:
        if create:
            admin.create_topics([NewTopic(t, PARTITIONS, 1) for t in create])
        if delete:
            admin.delete_topics(delete)
    finally:
        admin.close()


@pytest.fixture
def private(stack: StackState) -> Iterator[Private]:
    assert stack.kafka is not None and stack.postgres is not None
    run = uuid.uuid4().hex[:8]
    found = Private(
        stack.kafka.bootstrap_servers, stack.postgres.dsn, f"ledger.test-events.{run}",
        f"ledger.test-dlq.{run}", f"test_facts_{run}", run,
    )  # fmt: skip
    _topics(found.bootstrap, [found.topic, found.dlq], [])
    fresh_schema(found.dsn, found.schema)
    try:
        yield found
    finally:
        drop_schema(found.dsn, found.schema)
        _topics(found.bootstrap, [], [found.topic, found.dlq])


def _write(private: Private, done: Callable[[], bool]) -> BaseException | None:
    """Run the projection writer on the private topic until `done()` or until it stops by
    itself; returns what stopped it, if anything."""

    async def main() -> BaseException | None:
        writer = Writer(
            private.bootstrap, private.dsn, private.schema, batch_events_max=100,
            topic=private.topic, group_id=f"fact-identity-{private.run}",
        )  # fmt: skip
        task = asyncio.create_task(writer.run())
        deadline = time.monotonic() + WRITER_SECONDS_MAX
        try:
            while time.monotonic() < deadline:
                await asyncio.sleep(0.1)
                if task.done():
                    return task.exception()
                if await asyncio.to_thread(done):
                    return None
            raise AssertionError(f"the writer neither finished nor stopped: {private.stored()}")
        finally:
            writer.stopping.set()
            if not task.done():
                await task

    return asyncio.run(main())


def _issue_facts() -> tuple[CommandRejected, AccountOpened, Fact]:
    """The issue's pair, decided by the core: account.open rejected (isp_unknown), then accepted
    once the ISP is registered; and a block of the account after it."""
    ledger = LocalAuthorizer(Reference.of([ORANGE, CANALPLAY]))
    command = b.open_account("a1", "x", "enterprise", T0, "open-1")
    (rejected,) = ledger.handle(command, origin=1)
    ledger.update_reference(PROBE)
    (opened,) = ledger.handle(command, origin=2)
    (blocked,) = ledger.handle(b.block("a1", at(5)), origin=3)
    assert isinstance(rejected, CommandRejected) and isinstance(opened, AccountOpened)
    return rejected, opened, blocked


def test_a_second_fact_under_an_applied_id_stops_the_writer_and_commits_nothing(
    private: Private,
) -> None:
    rejected, opened, blocked = _issue_facts()
    first = private.produce([rejected, rejected])  # a redelivery: the same fact, a duplicate
    error = _write(private, lambda: private.stored().get(0, 0) >= first[-1][1] + 1)
    assert error is None
    applied_before = private.rows("SELECT event_id, fingerprint FROM applied_events")
    assert [r[0] for r in applied_before] == [rejected.event_id]
    forged = msgspec.structs.replace(opened, event_id=rejected.event_id)
    later = private.produce([forged, blocked])
    error = _write(private, lambda: False)
    assert isinstance(error, ConflictingFacts), error
    message = str(error)
    assert rejected.event_id in message
    assert f"command.rejected.v1 at {private.topic}[0]@{first[0][1]}" in message
    assert f"account.opened.v1 at {private.topic}[0]@{later[0][1]}" in message
    # Nothing of the batch: no offset moved, no id, no row (not even the block after it).
    assert private.stored() == {0: first[-1][1] + 1}
    assert private.rows("SELECT event_id, fingerprint FROM applied_events") == applied_before
    assert private.rows("SELECT count(*) FROM accounts") == [(0,)]
    assert private.rows("SELECT type FROM account_facts") == [("command.rejected.v1",)]


def test_two_facts_under_one_id_in_one_batch_stop_the_writer_and_commit_nothing(
    private: Private,
) -> None:
    rejected, opened, blocked = _issue_facts()
    forged = msgspec.structs.replace(opened, event_id=rejected.event_id)
    where = private.produce([rejected, forged, blocked])
    error = _write(private, lambda: False)
    assert isinstance(error, ConflictingFacts), error
    assert f"[0]@{where[0][1]}" in str(error) and f"[0]@{where[1][1]}" in str(error)
    assert private.stored() == {}
    assert private.rows("SELECT count(*) FROM applied_events") == [(0,)]
    assert private.rows("SELECT count(*) FROM account_facts") == [(0,)]


def test_an_old_log_with_the_colliding_pair_projects_both_facts(private: Private) -> None:
    """The rule for facts written before issue 12: the rejection, written under the id of the
    acceptance that followed, is read under its own id, so the account is projected."""
    rejected, opened, blocked = _issue_facts()
    old_id = (
        f"command.open-1.{fingerprint(b.open_account('a1', 'x', 'enterprise', T0, 'open-1'))[:16]}"
    )
    assert opened.event_id == old_id != rejected.event_id
    old_rejected = msgspec.structs.replace(rejected, event_id=old_id)
    where = private.produce([old_rejected, opened, blocked, rejected])  # and a re-emission
    error = _write(private, lambda: private.stored().get(0, 0) >= where[-1][1] + 1)
    assert error is None
    assert private.rows("SELECT account_id, company_name FROM accounts") == [("a1", "ACME SA")]
    assert sorted(private.rows("SELECT event_id FROM applied_events")) == sorted(
        [(rejected.event_id,), (opened.event_id,), (blocked.event_id,)]
    )
    check = check_facts(private.bootstrap, private.dsn, private.schema, private.topic, private.dlq)
    assert check.mismatches == []


def _history() -> list[Fact]:
    """A small month of two accounts: purchases, a rejection, a refund, admin facts, a close."""
    ledger = LocalAuthorizer(Reference.of([ORANGE, CANALPLAY, LEMONDE]))
    commands: list[Any] = [
        b.open_account("c1"), b.open_account("e1", kind="enterprise"),
        b.authorise("e1", "emp", at(1)), b.set_limits("c1", at(1), daily_cap_cents=5_000),
        b.purchase("c1", 266, at(2), purchase_id="p1"),
        b.purchase("c1", 999, at(3), purchase_id="p2", publisher_id="lemonde-archives"),
        b.purchase("c1", 99_999, at(4), purchase_id="big"),
        b.purchase("e1", 1_500, at(5), purchase_id="p3", user_id="emp"),
        b.refund("c1", "p1", 100, at(6), refund_id="r1"),
        b.refund("c1", "nope", 100, at(7), refund_id="r2"),
        b.block("c1", at(8)), b.revoke("e1", "stranger", at(9)),
        b.close("orange", "2006-03", at(days=40), command_id="close-march"),
    ]  # fmt: skip
    return [f for origin, c in enumerate(commands, 1) for f in ledger.handle(c, origin=origin)]


def test_reconcile_compares_the_topic_with_the_database_fact_by_fact(private: Private) -> None:
    facts = _history()
    where = private.produce([*facts, facts[4]])  # and one duplicate
    assert _write(private, lambda: private.stored().get(0, 0) >= where[-1][1] + 1) is None
    # A record that is not a fact, set aside as the writer does it (by hand: the writer's dead
    # letters go to the shared ledger.dlq), on a dead-letter topic of this test's own.
    with LedgerProducer(private.bootstrap, PARTITIONS, client_id="fact-identity") as producer:
        poison = producer.send_raw(private.topic, b"poison", b"{not json", 1).get(timeout=30)
        letter = (f'{{"source_topic":"{private.topic}","partition":1,'
                  f'"offset":{poison.offset}}}').encode()  # fmt: skip
        producer.send_raw(private.dlq, None, letter, 0).get(timeout=30)
    with private.db() as db:
        db.execute("INSERT INTO projection_offsets (topic, partition, next_offset)"
                   " VALUES (%s, 1, %s)", (private.topic, poison.offset + 1))  # fmt: skip

    def check() -> list[str]:
        """The check in one bucket and in buckets of three facts: the same differences."""
        whole, *sliced = (
            check_facts(private.bootstrap, private.dsn, private.schema, private.topic,
                        private.dlq, facts_per_bucket=size).mismatches
            for size in (100_000, 3)
        )  # fmt: skip
        assert sorted(whole) == sorted(sliced[0]), (whole, sliced)
        return whole

    assert check() == []
    purchase = next(f for f in facts if getattr(f, "purchase_id", None) == "p2")
    with private.db() as db:
        db.execute("DELETE FROM accounts WHERE account_id = 'e1'")
        db.execute("UPDATE purchases SET amount_cents = 1 WHERE event_id = %s",
                   (purchase.event_id,))  # fmt: skip
        db.execute("INSERT INTO account_facts VALUES ('forged', 'account.blocked.v1', 'c1',"
                   " NULL, now(), '{}')")  # fmt: skip
    found = check()
    assert f"accounts e1: missing from the database ({private.topic}[0]@{where[1][1]})" in found, (
        found
    )
    assert any(f"purchases {purchase.event_id}: the database holds" in line for line in found), (
        found
    )
    assert "account_facts forged: no such fact on the topic" in found, found
    assert len(found) == 3, found
    # A fact whose id the writer applied but whose content differs: the stored fingerprint says so.
    with private.db() as db:
        db.execute("UPDATE applied_events SET fingerprint = sha256('other') WHERE event_id = %s",
                   (purchase.event_id,))  # fmt: skip
    assert any("applied_events holds another fact" in line for line in check())


def test_the_fact_check_buckets_an_id_alike_in_python_and_in_postgresql(private: Private) -> None:
    ids = [f"purchase.p{n}.{n * 7919:016x}" for n in range(200)]
    ids += ["account.é-ü.opened", "command.日本.rejected.isp_unknown", ""]
    for buckets in (1, 7, 45, 512):
        found = private.rows(
            f"SELECT id, {bucket_sql('id', buckets)} FROM unnest(%s::text[]) AS id", ids
        )
        assert {i: b for i, b in found} == {i: bucket_of(i, buckets) for i in ids}
    assert len({bucket_of(i, 45) for i in ids}) > 30  # spread, not one bucket
