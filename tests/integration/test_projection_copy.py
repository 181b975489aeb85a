"""The projection writer's binary COPY on the real database (issue 13): binary COPY casts
nothing, so the types the writer declares must be the tables' own, and every kind of value (text,
integers, timestamps, NULL, bytea, jsonb) must come back as it went in."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

from ledger.core.runner import LocalAuthorizer
from ledger.stack.state import StackState
from projections import rows as projected
from projections import store
from projections.replay import drop_schema, fresh_schema
from schemas import codec
from schemas.facts import Fact
from tests import builders as b

pytestmark = pytest.mark.integration
COPIED = {
    "journal": (projected.JOURNAL_COLUMNS, projected.JOURNAL_TYPES),
    "purchases": (projected.PURCHASE_COLUMNS, projected.PURCHASE_TYPES),
    "refunds": (projected.REFUND_COLUMNS, projected.REFUND_TYPES),
    "money_facts": (projected.MONEY_FACT_COLUMNS, projected.MONEY_FACT_TYPES),
    "accounts": (projected.ACCOUNT_COLUMNS, projected.ACCOUNT_TYPES),
    "account_facts": (projected.ACCOUNT_FACT_COLUMNS, projected.ACCOUNT_FACT_TYPES),
}


@pytest.fixture
def schema(stack: StackState) -> Iterator[tuple[str, str]]:
    assert stack.postgres is not None
    name = f"test_copy_{uuid.uuid4().hex[:8]}"
    fresh_schema(stack.postgres.dsn, name)
    try:
        yield stack.postgres.dsn, name
    finally:
        drop_schema(stack.postgres.dsn, name)


def _facts() -> list[Fact]:
    ledger = LocalAuthorizer(b.REFERENCE)
    bought = b.purchase("acc-1", 500, b.at(10), publisher_id="canalplay")
    commands = [
        b.open_account("acc-1"),
        b.open_account("ent-1", kind="enterprise"),
        b.authorise("ent-1", "emp", b.at(1)),
        bought,
        b.purchase("acc-1", 99_999, b.at(20)),  # rejected: NULLs in purchases
        b.refund("acc-1", bought.purchase_id, 200, b.at(30)),
        b.refund("acc-1", "nope", 100, b.at(31)),  # rejected: NULLs in refunds
        b.block("acc-1", b.at(40)),
    ]
    return [f for origin, c in enumerate(commands, 1) for f in ledger.handle(c, origin=origin)]


def _key(row: tuple[Any, ...]) -> tuple[str, str]:
    return str(row[0]), str(row[1])  # a key of each table (datetimes compare, reprs differ)


def _rows(dsn: str, schema: str, query: str) -> list[tuple[Any, ...]]:
    with psycopg.connect(dsn, options=f"-c search_path={schema}") as db:
        return db.execute(query.encode()).fetchall()


def test_the_declared_types_are_the_tables_own(schema: tuple[str, str]) -> None:
    dsn, name = schema
    ids = {"applied_events": (store.APPLIED_COLUMNS, store.APPLIED_TYPES)}
    for table, (columns, types) in (COPIED | ids).items():
        assert len(columns) == len(types), table
        found = dict(_rows(dsn, name, (
            "SELECT column_name, udt_name FROM information_schema.columns"
            f" WHERE table_schema = '{name}' AND table_name = '{table}'"
        )))  # fmt: skip
        assert {c: found[c] for c in columns} == dict(zip(columns, types, strict=True)), table


def test_every_kind_of_row_comes_back_as_it_went_in(schema: tuple[str, str]) -> None:
    dsn, name = schema
    facts = _facts()
    incoming = [
        store.Incoming(0, offset, fact, codec.encode(fact)) for offset, fact in enumerate(facts)
    ]

    async def apply() -> store.Outcome:
        conn = await store.connect(dsn, name)
        try:
            return await store.apply_batch(conn, "t", incoming, {0: len(incoming)})
        finally:
            await conn.close()

    outcome = asyncio.run(apply())
    assert (outcome.applied, outcome.duplicates) == (len(facts), 0)
    rows = projected.project((i.fact, i.raw) for i in incoming)
    for table, (columns, _) in COPIED.items():
        expected = getattr(rows, table)
        assert expected, f"the facts give no {table} row: the test covers less than it says"
        listed = ", ".join(f'"{column}"' for column in columns)
        got = _rows(dsn, name, f"SELECT {listed} FROM {table}")
        if table == "account_facts":  # jsonb comes back as an object
            expected = [(*row[:-1], json.loads(row[-1])) for row in expected]
        if table == "money_facts":  # bytea comes back as bytes
            got = [(*row[:-1], bytes(row[-1])) for row in got]
        assert sorted(got, key=_key) == sorted(expected, key=_key), table
    applied = _rows(dsn, name, "SELECT event_id, partition, \"offset\", fingerprint, type"
                    " FROM applied_events ORDER BY \"offset\"")  # fmt: skip
    assert [(r[0], r[1], r[2], len(r[3]), r[4]) for r in applied] == [
        (f.event_id, 0, offset, 32, f.__struct_config__.tag) for offset, f in enumerate(facts)
    ]


def test_a_batch_with_ids_applied_before_applies_the_others_once(schema: tuple[str, str]) -> None:
    """The ids of a batch are copied straight into applied_events; one applied before sends the
    batch the way of the temporary table (issue 13), where it counts as a duplicate."""
    dsn, name = schema
    facts = _facts()
    incoming = [
        store.Incoming(0, offset, fact, codec.encode(fact)) for offset, fact in enumerate(facts)
    ]
    half = len(incoming) // 2

    async def apply(batches: list[list[store.Incoming]]) -> list[tuple[int, int]]:
        conn = await store.connect(dsn, name)
        try:
            outcomes = [
                await store.apply_batch(conn, "t", batch, {0: batch[-1].offset + 1})
                for batch in batches
            ]
        finally:
            await conn.close()
        return [(o.applied, o.duplicates) for o in outcomes]

    assert asyncio.run(apply([incoming[:half], incoming, incoming])) == [
        (half, 0), (len(facts) - half, half), (0, len(facts)),
    ]  # fmt: skip
    assert _rows(dsn, name, "SELECT count(*), count(DISTINCT event_id) FROM applied_events") == [
        (len(facts), len(facts))
    ]
    assert _rows(dsn, name, "SELECT count(*) FROM purchases") == [
        (sum(f.event_id.startswith("purchase.") for f in facts),)
    ]
    postings = sum(len(getattr(f, "postings", ())) for f in facts)
    assert postings and _rows(dsn, name, "SELECT count(*) FROM journal") == [(postings,)]
