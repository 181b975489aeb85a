"""Connecting to the ledger's database, in one place: every connection made outside the
projection writer's own modules opens here, with the schema it reads as its search path."""

from __future__ import annotations

from typing import Any

import psycopg

LIVE_SCHEMA = "ledger"


def session_options(
    schema: str | None = LIVE_SCHEMA, statement_timeout_ms: int | None = None
) -> str:
    """libpq's `options` of a session: the schema its unqualified names are in (None: leave
    PostgreSQL's default, for code that qualifies every name), a statement timeout if any."""
    options = [] if schema is None else [f"-c search_path={schema}"]
    if statement_timeout_ms is not None:
        options.append(f"-c statement_timeout={statement_timeout_ms}")
    return " ".join(options)


def connect(
    dsn: str,
    schema: str | None = LIVE_SCHEMA,
    *,
    autocommit: bool = False,
    connect_timeout: int | None = None,
) -> psycopg.Connection[tuple[Any, ...]]:
    extra: dict[str, Any] = {} if connect_timeout is None else {"connect_timeout": connect_timeout}
    return psycopg.connect(dsn, options=session_options(schema), autocommit=autocommit, **extra)
