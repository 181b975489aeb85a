"""The ISPs' credentials: a PostgreSQL login that sees only the ISP's rows (row-level security,
migration 0003), and an API key for the HTTP read API, stored as a SHA-256 hash.

Both are made, or replaced, by `ledger isp-access`, which prints them once.
"""

from __future__ import annotations

import hashlib
import re
import secrets
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import sql

from ledger.keys import key_hash, new_key

_ROLE_SAFE = re.compile(r"[^a-z0-9_]")
PASSWORD_BYTES = 18


@dataclass(frozen=True)
class IspCredentials:
    isp_id: str
    sql_login: str
    sql_password: str
    api_key: str


def role_name(isp_id: str) -> str:
    """A PostgreSQL role name of the ISP: readable, and unique even when two ids read alike."""
    readable = _ROLE_SAFE.sub("_", isp_id.lower())[:40]
    return f"isp_{readable}_{hashlib.sha256(isp_id.encode()).hexdigest()[:8]}"


def grant(db: psycopg.Connection[Any], isp_id: str, schema: str = "ledger") -> IspCredentials:
    """Create (or reset the password of) the ISP's login, and issue a new API key. Earlier API
    keys of the ISP are revoked: an ISP that asks again has lost, or leaked, the old one."""
    role = role_name(isp_id)
    password = secrets.token_urlsafe(PASSWORD_BYTES)
    api_key = new_key("isp")
    with db.transaction():
        exists = db.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (role,)).fetchone()
        verb = "ALTER" if exists else "CREATE"
        db.execute(
            sql.SQL(verb + " ROLE {} LOGIN INHERIT NOCREATEDB NOCREATEROLE PASSWORD {}").format(
                sql.Identifier(role), sql.Literal(password)
            )
        )
        db.execute(sql.SQL("GRANT ledger_isp TO {}").format(sql.Identifier(role)))
        db.execute(
            sql.SQL("INSERT INTO {} (role_name, isp_id) VALUES (%s, %s)"
                    " ON CONFLICT (role_name) DO UPDATE SET isp_id = excluded.isp_id").format(
                sql.Identifier(schema, "isp_logins")),
            (role, isp_id),
        )  # fmt: skip
        db.execute(
            sql.SQL("UPDATE {} SET revoked_at = now() WHERE isp_id = %s AND revoked_at IS NULL")
            .format(sql.Identifier(schema, "isp_api_keys")),
            (isp_id,),
        )  # fmt: skip
        db.execute(
            sql.SQL("INSERT INTO {} (key_sha256, isp_id) VALUES (%s, %s)").format(
                sql.Identifier(schema, "isp_api_keys")
            ),
            (key_hash(api_key), isp_id),
        )
    return IspCredentials(isp_id, role, password, api_key)
