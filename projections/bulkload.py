"""A scratch schema as a bulk-load target, for `ledger replay` (issue 13).

PERF.md, on this kind of machine: binary COPY into tables that are unlogged and have no index yet,
with synchronous_commit off, took 104k events/s against 42k into the live writer's logged, indexed
tables. So, while a replay loads, the tables that take a row per fact are unlogged and their keys
and indexes are built after the load (one sorted build each, not a B-tree insert per row); the
keys the load itself reads stay: applied_events's (duplicates), balances's (its upserts),
accounts's and money_facts_by_period (the seals). Building them after the load also checks what
they check (a duplicate key fails the replay, as it would have failed the batch).

The schema is made logged again at the end when it outlives the command (`ledger replay --keep`).
One that is compared and dropped need not be: if PostgreSQL crashes meanwhile, its unlogged tables
come back empty, the comparison fails, and a replay is run again; nothing else reads it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import sql

# The tables with a row per fact (or per account, or per party).
BULK_TABLES = (
    "applied_events", "journal", "purchases", "refunds", "money_facts", "accounts",
    "account_facts", "balances",
)  # fmt: skip
# Read while loading: kept. Every other index of BULK_TABLES is built after the load.
INDEXES_KEPT = frozenset(
    {"applied_events_pkey", "balances_pkey", "accounts_pkey", "money_facts_by_period"}
)
# For the builds after the load: the session's share of memory to sort in.
MAINTENANCE_WORK_MEM = "256MB"


@dataclass(frozen=True)
class Deferred:
    """What `unlog_and_defer` took off a schema: the statements that put it back."""

    schema: str
    builds: tuple[sql.SQL | sql.Composed, ...]

    def finish(self, dsn: str, durable: bool) -> None:
        """Build the deferred keys and indexes; with `durable`, make the tables logged again."""
        with psycopg.connect(dsn, autocommit=True) as db:
            db.execute(sql.SQL("SET maintenance_work_mem = {}").format(
                sql.Literal(MAINTENANCE_WORK_MEM)))  # fmt: skip
            for build in self.builds:
                db.execute(build)
            if durable:
                for table in BULK_TABLES:
                    db.execute(_alter(self.schema, table, "SET LOGGED"))


def _alter(schema: str, table: str, action: str) -> sql.Composed:
    return sql.SQL("ALTER TABLE {} {}").format(sql.Identifier(schema, table), sql.SQL(action))


def _indexes(db: psycopg.Connection[Any], schema: str) -> list[tuple[str, str, str | None, str]]:
    """(table, index, constraint or None, definition) of every index of BULK_TABLES."""
    rows = db.execute(
        "SELECT t.relname, i.relname, c.conname,"
        " coalesce(pg_get_constraintdef(c.oid), pg_get_indexdef(x.indexrelid))"
        " FROM pg_index x JOIN pg_class t ON t.oid = x.indrelid"
        " JOIN pg_class i ON i.oid = x.indexrelid"
        " JOIN pg_namespace n ON n.oid = t.relnamespace"
        " LEFT JOIN pg_constraint c ON c.conindid = x.indexrelid AND c.conrelid = t.oid"
        " AND c.contype IN ('p', 'u', 'x')"
        " WHERE n.nspname = %s AND t.relname = ANY(%s) ORDER BY t.relname, i.relname",
        (schema, list(BULK_TABLES)),
    ).fetchall()
    return [(str(t), str(i), None if c is None else str(c), str(d)) for t, i, c, d in rows]


def unlog_and_defer(dsn: str, schema: str) -> Deferred:
    """Make BULK_TABLES of a fresh `schema` unlogged and drop their indexes but INDEXES_KEPT.
    Returns what builds them again."""
    builds: list[sql.SQL | sql.Composed] = []
    with psycopg.connect(dsn) as db:
        for table, index, constraint, definition in _indexes(db, schema):
            if index in INDEXES_KEPT:
                continue
            # The definitions are the server's own text (pg_get_constraintdef, pg_get_indexdef).
            if constraint is not None:
                db.execute(sql.SQL("ALTER TABLE {} DROP CONSTRAINT {}").format(
                    sql.Identifier(schema, table), sql.Identifier(constraint)))  # fmt: skip
                builds.append(sql.SQL("ALTER TABLE {} ADD CONSTRAINT {} {}").format(
                    sql.Identifier(schema, table), sql.Identifier(constraint),
                    sql.SQL(definition),
                ))  # fmt: skip
            else:
                db.execute(sql.SQL("DROP INDEX {}").format(sql.Identifier(schema, index)))
                builds.append(sql.SQL(definition))
        for table in BULK_TABLES:
            db.execute(_alter(schema, table, "SET UNLOGGED"))
    return Deferred(schema, tuple(builds))
