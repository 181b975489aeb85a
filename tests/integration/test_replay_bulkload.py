"""`ledger replay`'s scratch schema as a bulk-load target (issue 13, projections.bulkload), on the
real database: while loading, the big tables are unlogged and keep only the indexes the load
reads; the writer's batch applies there; afterwards the schema has every key and index of a
fresh one, logged again when it is kept; and a key built after the load still refuses a
duplicate."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

from ledger.core.runner import LocalAuthorizer
from ledger.stack.state import StackState
from projections import bulkload, store
from projections.replay import drop_schema, fresh_schema
from schemas import codec
from tests import builders as b

pytestmark = pytest.mark.integration


@pytest.fixture
def schemas(stack: StackState) -> Iterator[tuple[str, str, str]]:
    """(dsn, a schema to load, a fresh schema to compare with)."""
    assert stack.postgres is not None
    run = uuid.uuid4().hex[:8]
    loaded, fresh = f"test_bulk_{run}", f"test_fresh_{run}"
    for name in (loaded, fresh):
        fresh_schema(stack.postgres.dsn, name)
    try:
        yield stack.postgres.dsn, loaded, fresh
    finally:
        for name in (loaded, fresh):
            drop_schema(stack.postgres.dsn, name)


def _rows(dsn: str, query: str, *params: Any) -> list[tuple[Any, ...]]:
    with psycopg.connect(dsn) as db:
        return db.execute(query.encode(), params).fetchall()


def _indexes(dsn: str, schema: str) -> list[tuple[str, str]]:
    found = _rows(dsn, "SELECT indexname, indexdef FROM pg_indexes WHERE schemaname = %s", schema)
    return sorted((name, definition.replace(f"{schema}.", "")) for name, definition in found)


def _persistence(dsn: str, schema: str) -> dict[str, str]:
    return dict(_rows(dsn, (
        "SELECT c.relname, c.relpersistence FROM pg_class c JOIN pg_namespace n"
        " ON n.oid = c.relnamespace WHERE n.nspname = %s AND c.relname = ANY(%s)"
    ), schema, list(bulkload.BULK_TABLES)))  # fmt: skip


def _load(dsn: str, schema: str) -> None:
    ledger = LocalAuthorizer(b.REFERENCE)
    bought = b.purchase("acc-1", 500, b.at(10))
    refund = b.refund("acc-1", bought.purchase_id, 200, b.at(20))
    commands = [b.open_account("acc-1"), bought, refund, b.block("acc-1", b.at(30))]
    facts = [f for origin, c in enumerate(commands, 1) for f in ledger.handle(c, origin=origin)]
    incoming = [store.Incoming(0, n, f, codec.encode(f)) for n, f in enumerate(facts)]

    async def apply() -> None:
        conn = await store.connect(dsn, schema)
        try:
            await conn.execute("SET synchronous_commit = off")  # as the replay does
            await conn.commit()
            await store.apply_batch(conn, "t", incoming, {0: len(incoming)})
        finally:
            await conn.close()

    asyncio.run(apply())


@pytest.mark.parametrize("durable", [True, False])
def test_a_bulk_load_ends_with_the_schema_of_a_fresh_one(
    schemas: tuple[str, str, str], durable: bool
) -> None:
    dsn, loaded, fresh = schemas
    expected = _indexes(dsn, fresh)
    deferred = bulkload.unlog_and_defer(dsn, loaded)
    assert set(_persistence(dsn, loaded).values()) == {"u"}
    loading = {name for name, _ in _indexes(dsn, loaded)}
    bulk = {name for name, d in expected if any(f" ON {t} " in d for t in bulkload.BULK_TABLES)}
    assert loading & bulk == set(bulkload.INDEXES_KEPT)
    _load(dsn, loaded)
    deferred.finish(dsn, durable)
    assert _indexes(dsn, loaded) == expected
    assert set(_persistence(dsn, loaded).values()) == {"p" if durable else "u"}
    assert _rows(dsn, f"SELECT count(*) FROM {loaded}.journal")[0][0] > 0


def test_a_key_built_after_the_load_refuses_a_duplicate(schemas: tuple[str, str, str]) -> None:
    dsn, loaded, _ = schemas
    deferred = bulkload.unlog_and_defer(dsn, loaded)
    _load(dsn, loaded)
    with psycopg.connect(dsn, autocommit=True) as db:
        db.execute(
            f"INSERT INTO {loaded}.purchases SELECT * FROM {loaded}.purchases LIMIT 1".encode()
        )
    with pytest.raises(psycopg.errors.UniqueViolation):
        deferred.finish(dsn, durable=False)
