"""`ledger reconcile`'s check of the projections against the log, fact by fact (issue 12).

It shares no code with the projection writer, so that a fault of the writer is not repeated here:
it reads `ledger.events` with kafka-python as plain JSON, up to the offsets the writer stored,
the dead letters of `ledger.dlq` likewise, and the database with SQL of its own, all in one
snapshot, and names the first differences:
- two records under one event id that are not the same fact (the writer must have stopped);
- a fact missing from the database, or there with other content: its row in the table of its
  kind (purchases, refunds, accounts, account_facts, money_facts and its postings in the journal,
  period_close_marks) and its id in applied_events, with the same fingerprint;
- a row of the database that no fact on the topic accounts for.

What it shares with the ledger is the format: the canonical form of a fact and the reading of a
rejection's id of the old scheme (README, schemas/facts.py), written again here on plain JSON.
It reads every table whole, in memory: an operator's check, not one for the writer's timer.
"""

from __future__ import annotations

import hashlib
import json
import re
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import psycopg

from ledger.kafka import topics
from ledger.kafka.partitions import topic_partitions
from ledger.kafka.settings import consumer_config
from projections.migrate import check_schema_name
from projections.reconcile import Check

DIFFERENCES_MAX = 100
READ_SECONDS_MAX = 600.0
POLL_TIMEOUT_MS = 1_000
NAME = "every fact on the topic is in the database once, as it is on the topic, and nothing else"

JSON = dict[str, Any]
Row = tuple[Any, ...]


# --- the format, on plain JSON ---------------------------------------------------------------


def _without_nulls(value: Any) -> Any:
    """Null fields of objects left out, at any depth (only objects and arrays recursed into)."""
    kind = type(value)
    if kind is dict:
        return {
            k: (_without_nulls(v) if type(v) in (dict, list) else v)
            for k, v in value.items()
            if v is not None
        }
    if kind is list:
        return [_without_nulls(v) if type(v) in (dict, list) else v for v in value]
    return value


def canonical(fact: JSON) -> bytes:
    """Null fields left out, keys sorted, no spaces, UTF-8 (README: "An event id names one
    fact")."""
    text = json.dumps(_without_nulls(fact), sort_keys=True, separators=(",", ":"),
                      ensure_ascii=False)  # fmt: skip
    return text.encode()


_OLD_TAIL = re.compile(r"[0-9a-f]{16}")


def as_read_today(fact: JSON) -> JSON:
    """A rejection written under an id of the old scheme, without its outcome, is read under the
    id it has now: `.rejected.{reason}` after the body's 16 digits, before the origin if any."""
    kind, event_id, reason = fact.get("type"), fact.get("event_id"), fact.get("reason")
    new = None
    if kind in ("purchase.rejected.v1", "refund.rejected.v1"):
        key = fact.get("purchase_id") if kind == "purchase.rejected.v1" else fact.get("refund_id")
        base = f"{kind.split('.')[0]}.{key}.{str(fact.get('body_fingerprint'))[:16]}"
        origin = fact.get("origin")
        if event_id == base:
            new = f"{base}.rejected.{reason}"
        elif origin is not None and event_id == f"{base}.{origin}":
            new = f"{base}.rejected.{reason}.{origin}"
    elif kind == "command.rejected.v1" and isinstance(event_id, str):
        prefix = f"command.{fact.get('command_id')}."
        if event_id.startswith(prefix) and _OLD_TAIL.fullmatch(event_id[len(prefix) :]):
            new = f"{event_id}.rejected.{reason}"
    return fact if new is None else {**fact, "event_id": new}


# --- the database, in one snapshot -----------------------------------------------------------


@dataclass
class Database:
    offsets: dict[int, int]
    applied: dict[str, tuple[bytes | None, str | None]]  # fingerprint, type
    purchases: dict[str, Row]
    refunds: dict[str, Row]
    accounts: dict[str, Row]
    account_facts: dict[str, Row]
    money_facts: dict[str, Row]
    journal: dict[str, list[Row]] = field(default_factory=dict)
    close_marks: dict[tuple[Any, ...], Row] = field(default_factory=dict)


PURCHASE_COLUMNS = (
    "purchase_id", "account_id", "isp_id", "user_id", "publisher_id", "category", "decision",
    "reason", "amount_cents", "net_cents", "vat_cents", "vat_rate_bp", "billing_period",
    "late_for_period", "occurred_at",
)  # fmt: skip
REFUND_COLUMNS = (
    "refund_id", "purchase_id", "account_id", "isp_id", "publisher_id", "decision", "reason",
    "amount_cents", "net_cents", "vat_cents", "billing_period", "purchase_billing_period",
    "late_for_period", "occurred_at",
)  # fmt: skip


def _by_first(db: psycopg.Connection[Any], query: str) -> dict[Any, Row]:
    return {row[0]: tuple(row[1:]) for row in db.execute(query.encode()).fetchall()}


def read_database(db: psycopg.Connection[Any], topic: str) -> Database:
    """Everything compared, read inside the caller's REPEATABLE READ transaction."""
    offsets = db.execute(
        "SELECT partition, next_offset FROM projection_offsets WHERE topic = %s", (topic,)
    ).fetchall()
    found = Database(
        offsets={int(p): int(o) for p, o in offsets},
        applied={
            event_id: (None if fingerprint is None else bytes(fingerprint), kind)
            for event_id, fingerprint, kind in db.execute(
                "SELECT event_id, fingerprint, type FROM applied_events WHERE topic = %s",
                (topic,),
            ).fetchall()
        },
        purchases=_by_first(db, f"SELECT event_id, {', '.join(PURCHASE_COLUMNS)} FROM purchases"),
        refunds=_by_first(db, f"SELECT event_id, {', '.join(REFUND_COLUMNS)} FROM refunds"),
        accounts=_by_first(
            db, "SELECT account_id, isp_id, kind, company_name, opened_at FROM accounts"
        ),
        account_facts=_by_first(
            db, "SELECT event_id, type, account_id, isp_id, occurred_at, fact FROM account_facts"
        ),
        money_facts=_by_first(db, "SELECT event_id, isp_id, billing_period, fact FROM money_facts"),
    )
    for event_id, *leg in db.execute(
        "SELECT event_id, leg, party, party_id, amount_cents, account_id, isp_id,"
        " billing_period, occurred_at FROM journal ORDER BY event_id, leg"
    ).fetchall():
        found.journal.setdefault(event_id, []).append(tuple(leg))
    for isp_id, period, partition, *mark in db.execute(
        "SELECT isp_id, period, partition, event_id, command_id, occurred_at"
        " FROM period_close_marks"
    ).fetchall():
        found.close_marks[isp_id, period, partition] = tuple(mark)
    return found


# --- the topic -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Record:
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None


def read_topic(bootstrap: str, topic: str, until: dict[int, int] | None) -> Iterator[Record]:
    """Every record of the topic from its start, per partition up to `until` (None: to the end
    as it is now), in partition order."""
    from kafka import KafkaConsumer

    # Each batch's CRC is checked as it is read (kafka-python's default): in C with the crc32c
    # package (pyproject.toml); in pure Python it cost 6k records/s against 45k without.
    consumer = KafkaConsumer(**consumer_config(bootstrap, "ledger-reconcile", group_id=None))
    try:
        tps = topic_partitions(consumer, topic)
        ends = consumer.end_offsets(tps)
        deadline = time.monotonic() + READ_SECONDS_MAX
        for tp in tps:
            end = ends[tp] if until is None else min(ends[tp], until.get(tp.partition, 0))
            consumer.assign([tp])
            consumer.seek_to_beginning(tp)
            while consumer.position(tp) < end:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"{topic} not read in {READ_SECONDS_MAX:.0f} s")
                for record in consumer.poll(timeout_ms=POLL_TIMEOUT_MS).get(tp, []):
                    if record.offset < end:
                        yield Record(tp.partition, record.offset, record.key, record.value)
    finally:
        consumer.close()


def dead_lettered(bootstrap: str, dlq: str, source: str) -> set[tuple[int, int]]:
    """(partition, offset) of every record of `source` set aside on the dead-letter topic."""
    found: set[tuple[int, int]] = set()
    for record in read_topic(bootstrap, dlq, None):
        try:
            letter = json.loads(record.value or b"")
        except ValueError:
            continue
        if isinstance(letter, dict) and letter.get("source_topic") == source:
            found.add((int(letter.get("partition", -1)), int(letter.get("offset", -1))))
    return found


# --- the comparison --------------------------------------------------------------------------


def _at(text: Any) -> datetime | None:
    return datetime.fromisoformat(text) if isinstance(text, str) else None


def _purchase_row(f: JSON) -> Row:
    authorized = f["type"] == "purchase.authorized.v1"
    money = (f.get("net_cents"), f.get("vat_cents"), f.get("vat_rate_bp"), f.get("billing_period"),
             f.get("late_for_period")) if authorized else (None,) * 5  # fmt: skip
    return (
        f.get("purchase_id"), f.get("account_id"), f.get("isp_id"), f.get("user_id"),
        f.get("publisher_id"), f.get("category") if authorized else None,
        "authorized" if authorized else "rejected", None if authorized else f.get("reason"),
        f.get("amount_cents"), *money, _at(f.get("occurred_at")),
    )  # fmt: skip


def _refund_row(f: JSON) -> Row:
    refunded = f["type"] == "purchase.refunded.v1"
    money = (f.get("net_cents"), f.get("vat_cents"), f.get("billing_period"),
             f.get("purchase_billing_period"), f.get("late_for_period"))  # fmt: skip
    return (
        f.get("refund_id"), f.get("purchase_id"), f.get("account_id"),
        f.get("isp_id") if refunded else None, f.get("publisher_id") if refunded else None,
        "refunded" if refunded else "rejected", None if refunded else f.get("reason"),
        f.get("amount_cents"), *(money if refunded else (None,) * 5), _at(f.get("occurred_at")),
    )  # fmt: skip


def _journal_rows(f: JSON) -> list[Row]:
    return [
        (leg, p.get("party"), p.get("party_id"), p.get("amount_cents"), f.get("account_id"),
         f.get("isp_id"), f.get("billing_period"), _at(f.get("occurred_at")))
        for leg, p in enumerate(f.get("postings") or [])
    ]  # fmt: skip


ADMIN_TYPES = frozenset({
    "account.blocked.v1", "account.unblocked.v1", "limits.set.v1", "employee.authorised.v1",
    "employee.revoked.v1", "command.rejected.v1",
})  # fmt: skip


class _Comparison:
    def __init__(self, database: Database, topic: str) -> None:
        self.db, self.topic = database, topic
        self.check = Check(NAME)
        self.differences = 0
        # event id → SHA-256 of the canonical form, type, first record
        self.seen: dict[str, tuple[bytes, str, Record]] = {}
        self.accounts_seen: set[Any] = set()
        self.marks_seen: set[tuple[Any, ...]] = set()

    def differ(self, text: str) -> None:
        self.differences += 1
        if len(self.check.mismatches) < DIFFERENCES_MAX:
            self.check.mismatches.append(text)

    def where(self, record: Record) -> str:
        return f"{self.topic}[{record.partition}]@{record.offset}"

    def record(self, record: Record, dead: set[tuple[int, int]]) -> None:
        if record.key == topics.PARTITION_MARKER_KEY or (record.partition, record.offset) in dead:
            return
        try:
            fact = json.loads(record.value or b"")
        except ValueError:
            fact = None
        if not isinstance(fact, dict) or not isinstance(fact.get("event_id"), str):
            self.differ(f"{self.where(record)} is not a fact and is not on the dead-letter topic")
            return
        fact = as_read_today(fact)
        text = canonical(fact)
        digest = hashlib.sha256(text).digest()
        event_id = fact["event_id"]
        first = self.seen.get(event_id)
        if first is not None:  # the same fact again, or another one under its id
            if first[0] != digest:
                self.differ(f"two different facts under event id {event_id}: "
                            f"{self.where(first[2])} and {self.where(record)}")  # fmt: skip
            return
        self.seen[event_id] = (digest, str(fact.get("type")), record)
        self.fact(fact, text, digest, record)

    def _compare(self, what: str, expected: Any, found: Any, record: Record) -> None:
        if found is None:
            self.differ(f"{what}: missing from the database ({self.where(record)})")
        elif expected != found:
            self.differ(f"{what}: the database holds {found!r}, the topic {expected!r}"
                        f" ({self.where(record)})")  # fmt: skip

    def fact(self, f: JSON, text: bytes, digest: bytes, record: Record) -> None:
        event_id, kind = f["event_id"], f.get("type")
        applied = self.db.applied.get(event_id)
        if applied is None:
            self.differ(f"{kind} {event_id} ({self.where(record)}): not in applied_events")
        elif (applied[0] is not None and applied[0] != digest) or (
            applied[1] is not None and applied[1] != kind
        ):
            self.differ(f"{kind} {event_id} ({self.where(record)}): applied_events holds another"
                        " fact under its id (fingerprint or type)")  # fmt: skip
        if kind in ("purchase.authorized.v1", "purchase.rejected.v1"):
            self._compare(f"purchases {event_id}", _purchase_row(f),
                          self.db.purchases.get(event_id), record)  # fmt: skip
        if kind in ("purchase.refunded.v1", "refund.rejected.v1"):
            self._compare(f"refunds {event_id}", _refund_row(f),
                          self.db.refunds.get(event_id), record)  # fmt: skip
        if kind in ("purchase.authorized.v1", "purchase.refunded.v1"):
            self._money(f, text, record)
        elif kind == "account.opened.v1":
            self._opened(f, record)
        elif kind == "period.closed.v1":
            key = (f.get("isp_id"), f.get("period"), f.get("partition"))
            self.marks_seen.add(key)
            mark = (event_id, f.get("command_id"), _at(f.get("occurred_at")))
            self._compare(f"period_close_marks {key}", mark, self.db.close_marks.get(key), record)
        elif kind in ADMIN_TYPES:
            row = self.db.account_facts.get(event_id)
            held = None if row is None else (*row[:4], canonical(as_read_today(row[4])))
            expected = (kind, f.get("account_id"), f.get("isp_id"), _at(f.get("occurred_at")),
                        text)  # fmt: skip
            self._compare(f"account_facts {event_id}", expected, held, record)
        elif kind not in ("purchase.authorized.v1", "purchase.rejected.v1",
                          "purchase.refunded.v1", "refund.rejected.v1"):  # fmt: skip
            self.differ(f"{self.where(record)}: a fact of an unknown type {kind!r}")

    def _money(self, f: JSON, text: bytes, record: Record) -> None:
        event_id = f["event_id"]
        row = self.db.money_facts.get(event_id)
        found = None
        if row is not None:
            held = bytes(row[2])  # the record's own bytes, nearly always: no need to parse them
            same = held == record.value
            found = (row[0], row[1], text if same else canonical(as_read_today(json.loads(held))))
        expected = (f.get("isp_id"), f.get("billing_period"), text)
        self._compare(f"money_facts {event_id}", expected, found, record)
        self._compare(f"journal {event_id}", _journal_rows(f), self.db.journal.get(event_id),
                      record)  # fmt: skip

    def _opened(self, f: JSON, record: Record) -> None:
        account = str(f.get("account_id"))
        expected = (f.get("isp_id"), f.get("kind"), f.get("company_name"),
                    _at(f.get("occurred_at")))  # fmt: skip
        if account in self.accounts_seen:
            self.differ(f"account {account} opened twice on the topic ({self.where(record)})")
            return
        self.accounts_seen.add(account)
        found = self.db.accounts.get(account)
        self._compare(f"accounts {account}", expected, found, record)

    def leftovers(self) -> None:
        """Rows that no fact on the topic accounts for."""
        kinds: dict[str, tuple[Mapping[str, Any], tuple[str, ...] | None]] = {
            "applied_events": (self.db.applied, None),
            "purchases": (self.db.purchases, ("purchase.authorized.v1", "purchase.rejected.v1")),
            "refunds": (self.db.refunds, ("purchase.refunded.v1", "refund.rejected.v1")),
            "money_facts": (self.db.money_facts, ("purchase.authorized.v1",
                                                  "purchase.refunded.v1")),
            "journal": (self.db.journal, ("purchase.authorized.v1", "purchase.refunded.v1")),
            "account_facts": (self.db.account_facts, tuple(ADMIN_TYPES)),
        }  # fmt: skip
        for table, (rows, expected_types) in kinds.items():
            for event_id in sorted(rows):
                seen = self.seen.get(event_id)
                kind = None if seen is None else seen[1]
                if kind is None or (expected_types is not None and kind not in expected_types):
                    self.differ(f"{table} {event_id}: no such fact on the topic")
        for account in sorted(set(self.db.accounts) - self.accounts_seen):
            self.differ(f"accounts {account}: no account.opened on the topic")
        for key in sorted(set(self.db.close_marks) - self.marks_seen):
            self.differ(f"period_close_marks {key}: no period.closed on the topic")


def check_facts(
    bootstrap: str, dsn: str, schema: str = "ledger", topic: str = topics.EVENTS,
    dlq: str = topics.DLQ,
) -> Check:  # fmt: skip
    """The projections in `schema` against `topic`, fact by fact, up to the stored offsets."""
    options = f"-c search_path={check_schema_name(schema)}"
    with psycopg.connect(dsn, options=options, connect_timeout=10) as db:
        db.execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
        database = read_database(db, topic)
    dead = dead_lettered(bootstrap, dlq, topic)
    comparison = _Comparison(database, topic)
    for record in read_topic(bootstrap, topic, database.offsets):
        comparison.record(record, dead)
    comparison.leftovers()
    if comparison.differences > DIFFERENCES_MAX:
        comparison.check.mismatches.append(
            f"... {comparison.differences - DIFFERENCES_MAX} more differences"
        )
    return comparison.check
