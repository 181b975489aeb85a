"""PostgreSQL for the HTTP APIs: one connection per process, its settings in one place.

psycopg's async connection runs one statement at a time and queues the others, which is enough
for reads by key. A database that cannot be reached is a 503 that says to try again; the
connection is made again at the next request.
"""

from __future__ import annotations

import logging
from typing import Any

import psycopg
from psycopg.rows import dict_row

from ledger.api.errors import ApiError
from projections.db import session_options

log = logging.getLogger("ledger.api.database")
CONNECT_TIMEOUT_SECONDS = 10
STATEMENT_TIMEOUT_MS = 10_000


class Database:
    def __init__(self, dsn: str, schema: str = "ledger") -> None:
        self.dsn, self.schema = dsn, schema
        self.conn: psycopg.AsyncConnection[dict[str, Any]] | None = None

    async def close(self) -> None:
        if self.conn is not None:
            await self.conn.close()

    async def _connect(self) -> psycopg.AsyncConnection[dict[str, Any]]:
        if self.conn is None or self.conn.closed:
            self.conn = await psycopg.AsyncConnection.connect(
                self.dsn, autocommit=True, row_factory=dict_row,
                connect_timeout=CONNECT_TIMEOUT_SECONDS,
                options=session_options(self.schema, STATEMENT_TIMEOUT_MS),
            )  # fmt: skip
        return self.conn

    async def query(self, text: str, params: tuple[Any, ...]) -> list[dict[str, Any]]:
        """Rows of a read; every parameter has been validated by the caller (no NUL reaches
        here: PostgreSQL refuses one in text with an error that is not the client's)."""
        try:
            conn = await self._connect()
            cursor = await conn.execute(text.encode(), params)
            return await cursor.fetchall()
        except psycopg.OperationalError as error:
            log.warning("the database is unreachable: %s", error)
            if self.conn is not None:
                await self.conn.close()
            raise ApiError(
                503, "unavailable", "the ledger's database is unreachable: try again shortly"
            ) from error
