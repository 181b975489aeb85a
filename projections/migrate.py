"""Versioned migrations: numbered SQL files applied in order, each once, into a named schema.

The schema is a parameter so that `ledger replay` can rebuild every projection into a fresh schema
beside the live one and compare the two.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from importlib import resources

import psycopg
from psycopg import sql

DEFAULT_SCHEMA = "ledger"
_MIGRATION_NAME = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")
_SCHEMA_NAME = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")
# A fixed key for pg_advisory_xact_lock: two processes migrating at once take turns.
_MIGRATION_LOCK_KEY = 0x1ED6E5


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    sql: str


def load_migrations() -> list[Migration]:
    found: list[Migration] = []
    for entry in resources.files("projections.migrations").iterdir():
        match = _MIGRATION_NAME.match(entry.name)
        if match:
            found.append(Migration(int(match[1]), match[2], entry.read_text()))
    found.sort(key=lambda migration: migration.version)
    versions = [migration.version for migration in found]
    if versions != list(range(1, len(found) + 1)):
        raise RuntimeError(f"migrations must be numbered 1..n without gaps, found {versions}")
    return found


def check_schema_name(schema: str) -> str:
    if not _SCHEMA_NAME.match(schema):
        raise ValueError(f"a schema name is lower-case letters, digits and _, got {schema!r}")
    return schema


def apply_migrations(dsn: str, schema: str = DEFAULT_SCHEMA) -> list[str]:
    """Apply the migrations not yet applied to `schema`, each in its own transaction.
    Returns the names of those applied now."""
    check_schema_name(schema)
    applied_now: list[str] = []
    with psycopg.connect(dsn) as db:
        for migration in load_migrations():
            with db.transaction():
                db.execute("SELECT pg_advisory_xact_lock(%s)", (_MIGRATION_LOCK_KEY,))
                db.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(schema)))
                db.execute(sql.SQL("SET LOCAL search_path TO {}").format(sql.Identifier(schema)))
                db.execute(
                    "CREATE TABLE IF NOT EXISTS schema_migrations ("
                    " version integer PRIMARY KEY, name text NOT NULL,"
                    " applied_at timestamptz NOT NULL DEFAULT now())"
                )
                done = db.execute(
                    "SELECT 1 FROM schema_migrations WHERE version = %s", (migration.version,)
                ).fetchone()
                if done:
                    continue
                db.execute(migration.sql.encode())
                db.execute(
                    "INSERT INTO schema_migrations (version, name) VALUES (%s, %s)",
                    (migration.version, migration.name),
                )
                applied_now.append(f"{migration.version:04d}_{migration.name}")
    return applied_now
