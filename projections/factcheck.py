"""`ledger reconcile`'s check of the projections against the log, fact by fact (issue 12).

It shares no code with the projection writer, so that a fault of the writer is not repeated here:
it reads `ledger.events` with kafka-python as plain JSON, up to the offsets the writer stored,
the dead letters of `ledger.dlq` likewise, and the database with SQL of its own, all in one
snapshot, and names the first differences:
- two records under one event id that are not the same fact (the writer must have stopped);
- a fact missing from the database, or there with other content: its row in the table of its
  kind (purchases, refunds, accounts, account_facts, money_facts and its postings in the journal,
  period_close_marks) and its id in applied_events, with the same fingerprint; and the held
  payments' rows (`payments`) that the payment facts and the captures' purchases make;
- a row of the database that no fact on the topic accounts for.

What it shares with the ledger is the format: the canonical form of a fact and the reading of a
rejection's id of the old scheme (README, schemas/facts.py), written again here on plain JSON.
It compares a bucket of ids at a time (the topic spilled to a file per bucket, each table read in
bucket order), so that its memory does not grow with the log: an operator's check, not one for the
writer's timer.
"""

from __future__ import annotations

import hashlib
import json
import marshal
import re
import struct
import tempfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, BinaryIO

import psycopg

from ledger.kafka import topics
from ledger.kafka.read import Record, read_records
from projections.migrate import check_schema_name
from projections.reconcile import Check

DIFFERENCES_MAX = 100
STALL_SECONDS_MAX = 120.0  # reading a topic: no record for this long is an error
NAME = "every fact on the topic is in the database once, as it is on the topic, and nothing else"

JSON = dict[str, Any]
# Both versions of an authorized purchase (issue 16: v2 adds the consent): the same rows.
AUTHORIZED = ("purchase.authorized.v1", "purchase.authorized.v2")
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


# json.dumps with arguments builds an encoder each call: built once (a third of the cost)
_CANONICAL = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def canonical(fact: JSON) -> bytes:
    """Null fields left out, keys sorted, no spaces, UTF-8 (README: "An event id names one
    fact")."""
    return _CANONICAL.encode(_without_nulls(fact)).encode()


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


# --- buckets: the check in slices of bounded size --------------------------------------------

# The facts are compared a bucket of event ids at a time, and the accounts a bucket of account ids
# at a time, so that the check's memory is bounded by a bucket, not by the log: read whole, the
# seed's half year (3.3 million purchases) took over 20 GB and was killed (issue 13). The topic
# is read once into a file per bucket; each table once, in bucket order, from a server-side cursor.
FACTS_PER_BUCKET = 25_000
BUCKETS_MAX = 512  # files open at once while the topic is read
FETCH_ROWS = 5_000


def bucket_count(facts: int, per_bucket: int = FACTS_PER_BUCKET) -> int:
    return min(BUCKETS_MAX, max(1, -(-facts // per_bucket)))


def bucket_of(key: str, buckets: int) -> int:
    """The bucket of an id: the first 16 bits of the MD5 of its UTF-8 bytes, modulo `buckets`
    (what `bucket_sql` computes in PostgreSQL; a unit test holds them together)."""
    digest = hashlib.md5(key.encode(), usedforsecurity=False).digest()
    return int.from_bytes(digest[:2], "big") % buckets


def bucket_sql(column: str, buckets: int) -> str:
    return f"mod(('x' || substr(md5({column}), 1, 4))::bit(16)::int, {int(buckets)})"


_HEADER = struct.Struct("<iqI")  # partition, offset, length of the bytes that follow


class _Spill:
    """Records kept in a file per bucket while the topic is read, read back a bucket at a time."""

    def __init__(self, folder: Path, name: str, buckets: int) -> None:
        self._paths = [folder / f"{name}-{bucket}" for bucket in range(buckets)]
        self._files: list[BinaryIO] = []

    def __len__(self) -> int:
        return len(self._paths)

    def __enter__(self) -> _Spill:
        self._files = [path.open("wb") for path in self._paths]
        return self

    def __exit__(self, *_: object) -> None:
        for file in self._files:
            file.close()
        self._files = []

    def write(self, bucket: int, partition: int, offset: int, data: bytes) -> None:
        file = self._files[bucket]
        file.write(_HEADER.pack(partition, offset, len(data)))
        file.write(data)

    def read(self, bucket: int) -> Iterator[tuple[int, int, bytes]]:
        with self._paths[bucket].open("rb") as file:
            while header := file.read(_HEADER.size):
                partition, offset, length = _HEADER.unpack(header)
                yield partition, offset, file.read(length)


# --- the database, in one snapshot -----------------------------------------------------------


@dataclass
class Slice:
    """The rows of one bucket of event ids."""

    applied: dict[str, tuple[bytes | None, str | None]]  # fingerprint, type
    purchases: dict[str, Row]
    refunds: dict[str, Row]
    account_facts: dict[str, Row]
    money_facts: dict[str, Row]
    journal: dict[str, list[Row]]


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


class _Rows:
    """A table's rows in bucket order (the bucket first in each row), one bucket after another,
    from a server-side cursor."""

    def __init__(
        self, db: psycopg.Connection[Any], name: str, query: str, params: tuple[Any, ...] = ()
    ) -> None:
        self._cursor = db.cursor(name=f"factcheck_{name}")
        self._cursor.itersize = FETCH_ROWS
        self._cursor.execute(query.encode(), params, binary=True)
        self._rows = iter(self._cursor)
        self._head: Row | None = next(self._rows, None)

    def of(self, bucket: int) -> Iterator[Row]:
        while self._head is not None and self._head[0] == bucket:
            yield self._head[1:]
            self._head = next(self._rows, None)

    def by_first(self, bucket: int) -> dict[Any, Row]:
        return {row[0]: tuple(row[1:]) for row in self.of(bucket)}


class Database:
    """The database's side, read inside the caller's REPEATABLE READ transaction: the stored
    offsets and the close marks whole (one per ISP, period and partition), the rest a bucket at
    a time (`open`, then `slice` and `accounts` for each bucket in order)."""

    def __init__(self, db: psycopg.Connection[Any], topic: str, per_bucket: int) -> None:
        self._db, self._topic = db, topic
        offsets = db.execute(
            "SELECT partition, next_offset FROM projection_offsets WHERE topic = %s", (topic,)
        ).fetchall()
        self.offsets = {int(p): int(o) for p, o in offsets}
        row = db.execute(
            "SELECT count(*) FROM applied_events WHERE topic = %s", (topic,)
        ).fetchone()
        self.buckets = bucket_count(0 if row is None else int(row[0]), per_bucket)
        self.close_marks: dict[tuple[Any, ...], Row] = {}
        for isp_id, period, partition, *mark in db.execute(
            "SELECT isp_id, period, partition, event_id, command_id, occurred_at"
            " FROM period_close_marks"
        ).fetchall():
            self.close_marks[isp_id, period, partition] = tuple(mark)
        self._tables: dict[str, _Rows] = {}

    def open(self) -> None:
        db, by_event = self._db, bucket_sql("event_id", self.buckets)
        self._tables = {
            "applied": _Rows(db, "applied", f"SELECT {by_event}, event_id, fingerprint, type"
                             " FROM applied_events WHERE topic = %s ORDER BY 1", (self._topic,)),
            "purchases": _Rows(db, "purchases", f"SELECT {by_event}, event_id,"
                               f" {', '.join(PURCHASE_COLUMNS)} FROM purchases ORDER BY 1"),
            "refunds": _Rows(db, "refunds", f"SELECT {by_event}, event_id,"
                             f" {', '.join(REFUND_COLUMNS)} FROM refunds ORDER BY 1"),
            "account_facts": _Rows(db, "account_facts", f"SELECT {by_event}, event_id, type,"
                                   " account_id, isp_id, occurred_at, fact FROM account_facts"
                                   " ORDER BY 1"),
            "money_facts": _Rows(db, "money_facts", f"SELECT {by_event}, event_id, isp_id,"
                                 " billing_period, fact FROM money_facts ORDER BY 1"),
            "journal": _Rows(db, "journal", f"SELECT {by_event}, event_id, leg, party, party_id,"
                             " amount_cents, account_id, isp_id, billing_period, occurred_at"
                             " FROM journal ORDER BY 1, event_id, leg"),
            "accounts": _Rows(db, "accounts", f"SELECT {bucket_sql('account_id', self.buckets)},"
                              " account_id, isp_id, kind, company_name, opened_at FROM accounts"
                              " ORDER BY 1"),
        }  # fmt: skip

    def slice(self, bucket: int) -> Slice:
        t = self._tables
        journal: dict[str, list[Row]] = {}
        for event_id, *leg in t["journal"].of(bucket):
            journal.setdefault(event_id, []).append(tuple(leg))
        return Slice(
            applied={
                event_id: (None if fingerprint is None else bytes(fingerprint), kind)
                for event_id, fingerprint, kind in t["applied"].of(bucket)
            },
            purchases=t["purchases"].by_first(bucket),
            refunds=t["refunds"].by_first(bucket),
            account_facts=t["account_facts"].by_first(bucket),
            money_facts=t["money_facts"].by_first(bucket),
            journal=journal,
        )

    def accounts(self, bucket: int) -> dict[Any, Row]:
        return self._tables["accounts"].by_first(bucket)


# --- the topic -------------------------------------------------------------------------------


def read_topic(bootstrap: str, topic: str, until: dict[int, int] | None) -> Iterator[Record]:
    """Every record of the topic from its start, per partition up to `until` (None: to the end
    as it is now), in partition order. Each batch's CRC is checked as it is read (kafka-python's
    default): in C with the crc32c package (pyproject.toml); in pure Python it cost 6k records/s
    against 45k without."""
    return read_records(bootstrap, "ledger-reconcile", topic, STALL_SECONDS_MAX, until=until)


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
    authorized = f["type"] in AUTHORIZED
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


# The facts kept in account_facts as they are: an account's administration, and its held
# payments (issue 14: their `payments` rows are checked apart, `_payments`).
ADMIN_TYPES = frozenset({
    "account.blocked.v1", "account.unblocked.v1", "limits.set.v1", "employee.authorised.v1",
    "employee.revoked.v1", "command.rejected.v1", "payment.reserved.v1", "payment.voided.v1",
    "payment.expired.v1", "payment.command_rejected.v1",
})  # fmt: skip


class _Comparison:
    """The topic's facts against the database's rows: `spill` each record as the topic is read,
    then `compare` each bucket of event ids, `accounts` each bucket of account ids, and
    `close_marks` once."""

    def __init__(self, topic: str, close_marks: dict[tuple[Any, ...], Row]) -> None:
        self.topic = topic
        self.check = Check(NAME)
        self.differences = 0
        self.close_marks = close_marks
        self.marks_seen: set[tuple[Any, ...]] = set()
        self.db = Slice({}, {}, {}, {}, {}, {})
        # in the bucket compared: event id → SHA-256 of the canonical form, type, first record
        self.seen: dict[str, tuple[bytes, str, Record]] = {}
        self.openings: _Spill | None = None
        self.payments = _Payments()

    def differ(self, text: str) -> None:
        self.differences += 1
        if len(self.check.mismatches) < DIFFERENCES_MAX:
            self.check.mismatches.append(text)

    def where(self, record: Record) -> str:
        return f"{self.topic}[{record.partition}]@{record.offset}"

    def spill(self, record: Record, dead: set[tuple[int, int]], facts: _Spill) -> None:
        """A record of the topic into the file of its event id's bucket, if it is a fact."""
        if record.key == topics.PARTITION_MARKER_KEY or (record.partition, record.offset) in dead:
            return
        fact = _parsed(record.value)
        if fact is None:
            self.differ(f"{self.where(record)} is not a fact and is not on the dead-letter topic")
            return
        fact = as_read_today(fact)
        self.payments.see(fact)
        # Parsed once: the fact, as marshal writes it (quicker to read back than the JSON again),
        # with the SHA-256 of the record's bytes rather than the bytes (the spill's size halves).
        value_digest = hashlib.sha256(record.value or b"").digest()
        facts.write(bucket_of(fact["event_id"], len(facts)), record.partition, record.offset,
                    marshal.dumps((fact, value_digest)))  # fmt: skip

    def compare(self, rows: Slice, records: Iterator[tuple[int, int, bytes]],
                openings: _Spill) -> None:  # fmt: skip
        """One bucket: its records of the topic, in the topic's order, against its rows."""
        self.db, self.seen, self.openings = rows, {}, openings
        for partition, offset, data in records:
            fact, value_digest = marshal.loads(data)
            self.record(Record(partition, offset, None, None), fact, value_digest)
        self.leftovers()

    def record(self, record: Record, fact: JSON, value_digest: bytes) -> None:
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
        self.fact(fact, text, digest, record, value_digest)

    def _compare(self, what: str, expected: Any, found: Any, record: Record) -> None:
        if found is None:
            self.differ(f"{what}: missing from the database ({self.where(record)})")
        elif expected != found:
            self.differ(f"{what}: the database holds {found!r}, the topic {expected!r}"
                        f" ({self.where(record)})")  # fmt: skip

    def fact(
        self, f: JSON, text: bytes, digest: bytes, record: Record, value_digest: bytes
    ) -> None:
        event_id, kind = f["event_id"], f.get("type")
        applied = self.db.applied.get(event_id)
        if applied is None:
            self.differ(f"{kind} {event_id} ({self.where(record)}): not in applied_events")
        elif (applied[0] is not None and applied[0] != digest) or (
            applied[1] is not None and applied[1] != kind
        ):
            self.differ(f"{kind} {event_id} ({self.where(record)}): applied_events holds another"
                        " fact under its id (fingerprint or type)")  # fmt: skip
        if kind in (*AUTHORIZED, "purchase.rejected.v1"):
            self._compare(f"purchases {event_id}", _purchase_row(f),
                          self.db.purchases.get(event_id), record)  # fmt: skip
        if kind in ("purchase.refunded.v1", "refund.rejected.v1"):
            self._compare(f"refunds {event_id}", _refund_row(f),
                          self.db.refunds.get(event_id), record)  # fmt: skip
        if kind in (*AUTHORIZED, "purchase.refunded.v1"):
            self._money(f, text, record, value_digest)
        elif kind == "account.opened.v1":
            self._opened(f, record)
        elif kind == "period.closed.v1":
            key = (f.get("isp_id"), f.get("period"), f.get("partition"))
            self.marks_seen.add(key)
            mark = (event_id, f.get("command_id"), _at(f.get("occurred_at")))
            self._compare(f"period_close_marks {key}", mark, self.close_marks.get(key), record)
        elif kind in ADMIN_TYPES:
            row = self.db.account_facts.get(event_id)
            held = None if row is None else (*row[:4], canonical(as_read_today(row[4])))
            expected = (kind, f.get("account_id"), f.get("isp_id"), _at(f.get("occurred_at")),
                        text)  # fmt: skip
            self._compare(f"account_facts {event_id}", expected, held, record)
        elif kind not in (*AUTHORIZED, "purchase.rejected.v1",
                          "purchase.refunded.v1", "refund.rejected.v1",
                          # Issues 15, 16: in applied_events only (projections/rows.py).
                          "reference.changed.v1", "ledger.upgraded.v1"):  # fmt: skip
            self.differ(f"{self.where(record)}: a fact of an unknown type {kind!r}")

    def _money(self, f: JSON, text: bytes, record: Record, value_digest: bytes) -> None:
        event_id = f["event_id"]
        row = self.db.money_facts.get(event_id)
        found = None
        if row is not None:
            held = bytes(row[2])  # the record's own bytes, nearly always: no need to parse them
            same = hashlib.sha256(held).digest() == value_digest
            found = (row[0], row[1], text if same else canonical(as_read_today(json.loads(held))))
        expected = (f.get("isp_id"), f.get("billing_period"), text)
        self._compare(f"money_facts {event_id}", expected, found, record)
        self._compare(f"journal {event_id}", _journal_rows(f), self.db.journal.get(event_id),
                      record)  # fmt: skip

    def _opened(self, f: JSON, record: Record) -> None:
        """Compared with the accounts table later, in the bucket of the account id."""
        account = str(f.get("account_id"))
        opening = (account, f.get("isp_id"), f.get("kind"), f.get("company_name"),
                   f.get("occurred_at"))  # fmt: skip
        assert self.openings is not None
        self.openings.write(bucket_of(account, len(self.openings)), record.partition,
                            record.offset, marshal.dumps(opening))  # fmt: skip

    def accounts(self, found: dict[Any, Row], openings: Iterator[tuple[int, int, bytes]]) -> None:
        """One bucket of account ids: the openings on the topic against the accounts table."""
        seen: set[str] = set()
        for partition, offset, data in openings:
            account, isp_id, kind, company_name, occurred_at = marshal.loads(data)
            record = Record(partition, offset, None, None)
            if account in seen:
                self.differ(f"account {account} opened twice on the topic ({self.where(record)})")
                continue
            seen.add(account)
            self._compare(f"accounts {account}", (isp_id, kind, company_name, _at(occurred_at)),
                          found.get(account), record)  # fmt: skip
        for account in sorted(set(found) - seen):
            self.differ(f"accounts {account}: no account.opened on the topic")

    def leftovers(self) -> None:
        """Rows of the bucket that no fact on the topic accounts for."""
        kinds: dict[str, tuple[Mapping[str, Any], tuple[str, ...] | None]] = {
            "applied_events": (self.db.applied, None),
            "purchases": (self.db.purchases, (*AUTHORIZED, "purchase.rejected.v1")),
            "refunds": (self.db.refunds, ("purchase.refunded.v1", "refund.rejected.v1")),
            "money_facts": (self.db.money_facts, (*AUTHORIZED, "purchase.refunded.v1")),
            "journal": (self.db.journal, (*AUTHORIZED, "purchase.refunded.v1")),
            "account_facts": (self.db.account_facts, tuple(ADMIN_TYPES)),
        }  # fmt: skip
        for table, (rows, expected_types) in kinds.items():
            for event_id in sorted(rows):
                seen = self.seen.get(event_id)
                kind = None if seen is None else seen[1]
                if kind is None or (expected_types is not None and kind not in expected_types):
                    self.differ(f"{table} {event_id}: no such fact on the topic")

    def payments_against(self, found: dict[tuple[str, str], Row]) -> None:
        """The payments table against the payments the topic tells of, row for row."""
        expected = self.payments.rows
        for key in sorted(expected.keys() | found.keys()):
            if key not in found:
                self.differ(f"payments {key}: missing from the database")
            elif key not in expected:
                self.differ(f"payments {key}: no payment.reserved on the topic")
            elif expected[key] != found[key]:
                self.differ(f"payments {key}: the database holds {found[key]!r}, the topic"
                            f" {expected[key]!r}")  # fmt: skip

    def marks_left(self) -> None:
        for key in sorted(set(self.close_marks) - self.marks_seen):
            self.differ(f"period_close_marks {key}: no period.closed on the topic")


PAYMENT_COLUMNS = (
    "isp_id", "publisher_id", "user_id", "status", "amount_held_cents", "amount_captured_cents",
    "reserved_at", "hold_expires_at", "finished_at", "reserved_event_id", "finished_event_id",
)  # fmt: skip


class _Payments:
    """The `payments` rows that the topic's facts make, built as the topic is read (in each
    partition's order, where an account's reservation comes before its end). Held whole: one
    small row per held payment, far fewer than the purchases."""

    def __init__(self) -> None:
        self.rows: dict[tuple[str, str], Row] = {}

    def see(self, f: JSON) -> None:
        kind = f.get("type")
        if kind == "payment.reserved.v1":
            key = (str(f.get("account_id")), str(f.get("payment_id")))
            if key not in self.rows:
                self.rows[key] = (
                    f.get("isp_id"), f.get("publisher_id"), f.get("user_id"), "reserved",
                    f.get("amount_cents"), None, _at(f.get("occurred_at")),
                    _at(f.get("hold_expires_at")), None, f.get("event_id"), None,
                )  # fmt: skip
            return
        if kind in AUTHORIZED:
            key = (str(f.get("account_id")), str(f.get("purchase_id")))
            end: tuple[Any, ...] = ("captured", f.get("amount_cents"), None)
        elif kind in ("payment.voided.v1", "payment.expired.v1"):
            key = (str(f.get("account_id")), str(f.get("payment_id")))
            end = (kind.split(".")[1], None, _at(f.get("occurred_at")))
        else:
            return
        row = self.rows.get(key)
        if row is not None and row[3] == "reserved":
            status, captured, finished_at = end
            self.rows[key] = (*row[:3], status, row[4], captured, *row[6:8], finished_at,
                              row[9], f.get("event_id"))  # fmt: skip


def read_payments(db: psycopg.Connection[Any]) -> dict[tuple[str, str], Row]:
    return {
        (account_id, payment_id): tuple(rest)
        for account_id, payment_id, *rest in db.execute(
            f"SELECT account_id, payment_id, {', '.join(PAYMENT_COLUMNS)} FROM payments"
        ).fetchall()
    }


def _parsed(value: bytes | None) -> JSON | None:
    """The record as a JSON object with a string event id, else None."""
    try:
        fact = json.loads(value or b"")
    except ValueError:
        return None
    return fact if isinstance(fact, dict) and isinstance(fact.get("event_id"), str) else None


def check_facts(
    bootstrap: str, dsn: str, schema: str = "ledger", topic: str = topics.EVENTS,
    dlq: str = topics.DLQ, facts_per_bucket: int = FACTS_PER_BUCKET,
) -> Check:  # fmt: skip
    """The projections in `schema` against `topic`, fact by fact, up to the stored offsets."""
    # One snapshot from the first query to the last, through the minutes of reading the topic:
    # the stack's idle-in-transaction timeout (60 s) is lifted for this session.
    options = f"-c search_path={check_schema_name(schema)} -c idle_in_transaction_session_timeout=0"
    with (
        psycopg.connect(dsn, options=options, connect_timeout=10) as db,
        tempfile.TemporaryDirectory(prefix="ledger-factcheck-") as folder,
    ):
        db.execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
        database = Database(db, topic, facts_per_bucket)
        dead = dead_lettered(bootstrap, dlq, topic)
        comparison = _Comparison(topic, database.close_marks)
        with _Spill(Path(folder), "facts", database.buckets) as facts:
            for record in read_topic(bootstrap, topic, database.offsets):
                comparison.spill(record, dead, facts)
        database.open()
        with _Spill(Path(folder), "openings", database.buckets) as openings:
            for bucket in range(database.buckets):
                comparison.compare(database.slice(bucket), facts.read(bucket), openings)
        for bucket in range(database.buckets):
            comparison.accounts(database.accounts(bucket), openings.read(bucket))
        comparison.marks_left()
        comparison.payments_against(read_payments(db))
    if comparison.differences > DIFFERENCES_MAX:
        comparison.check.mismatches.append(
            f"... {comparison.differences - DIFFERENCES_MAX} more differences"
        )
    return comparison.check
