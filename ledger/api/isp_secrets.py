"""The ISPs' signing secrets in PostgreSQL (`isp_secrets`, migration 0008): registered or rotated
by an operator (`ledger isp-secret --isp ID`, or `POST /v1/admin/isps/{isp_id}/secret`), read by
the identity component to sign and by the checkout API to verify. Nothing here prints a secret.
"""

from __future__ import annotations

import secrets as random
from datetime import datetime
from typing import Any, Protocol

SECRET_BYTES = 32  # HMAC-SHA256 with a key of its block's half at least (design notes: >= 32)
# During a rotation the previous secret still verifies, so that an assertion signed a moment
# before the rotation (valid 120 s at most) is not refused: 10 minutes, as the design notes say.
PREVIOUS_VALID_SECONDS = 600

ROTATE = (
    "INSERT INTO isp_secrets (isp_id, secret, rotated_at) VALUES (%s, %s, %s)"
    " ON CONFLICT (isp_id) DO UPDATE SET previous_secret = isp_secrets.secret,"
    f" previous_valid_until = EXCLUDED.rotated_at + interval '{PREVIOUS_VALID_SECONDS} seconds',"
    " secret = EXCLUDED.secret, rotated_at = EXCLUDED.rotated_at"
    " RETURNING isp_id, rotated_at, previous_valid_until"
)
ACTIVE = "SELECT secret, previous_secret, previous_valid_until FROM isp_secrets WHERE isp_id = %s"
REGISTERED = "SELECT isp_id FROM isp_secrets ORDER BY isp_id"


class Database(Protocol):
    async def query(self, text: str, params: tuple[Any, ...]) -> list[dict[str, Any]]: ...


def new_secret() -> bytes:
    return random.token_bytes(SECRET_BYTES)


def rotate_params(isp_id: str, now: datetime) -> tuple[str, bytes, datetime]:
    return (isp_id, new_secret(), now)


def view(row: dict[str, Any]) -> dict[str, Any]:
    """What an operator is told of a rotation: never the secret."""
    until = row["previous_valid_until"]
    return {
        "isp_id": row["isp_id"],
        "rotated_at": row["rotated_at"].isoformat(),
        "previous_valid_until": until.isoformat() if until else None,
    }


def usable(rows: list[dict[str, Any]], now: datetime) -> list[bytes]:
    """The secrets that verify at `now`: the current one, and the previous one for its 10 min."""
    if not rows:
        return []
    row = rows[0]
    found = [bytes(row["secret"])]
    if row["previous_secret"] is not None and row["previous_valid_until"] > now:
        found.append(bytes(row["previous_secret"]))
    return found


async def active(db: Database, isp_id: str, now: datetime) -> list[bytes]:
    return usable(await db.query(ACTIVE, (isp_id,)), now)


async def registered(db: Database) -> set[str]:
    return {row["isp_id"] for row in await db.query(REGISTERED, ())}
