"""What goes to `ledger.dlq`: a message that could not be used, with why and where it came from,
and its bytes, so that nothing is lost and an operator can fix and replay it."""

from __future__ import annotations

import base64
from datetime import datetime
from typing import Annotated

from msgspec import Meta

from schemas.commands import Message
from schemas.types import Timestamp

DETAIL_MAX = 1_000


class DeadLetter(Message, frozen=True, tag="dead_letter.v1"):
    reason: str  # malformed_json, unknown_type, invalid_field, wrong_topic, wrong_partition
    detail: Annotated[str, Meta(max_length=DETAIL_MAX)]
    source_topic: str
    partition: Annotated[int, Meta(ge=0)]
    offset: Annotated[int, Meta(ge=0)]
    raw_base64: str
    dead_lettered_at: Timestamp  # wall clock of the worker that set it aside
    key_base64: str | None = None


def _b64(raw: bytes | None) -> str | None:
    return None if raw is None else base64.b64encode(raw).decode()


def set_aside(
    reason: str,
    detail: str,
    source_topic: str,
    partition: int,
    offset: int,
    key: bytes | None,
    value: bytes | None,
    at: datetime,
) -> DeadLetter:
    """The dead letter of a record: its bytes whole, the detail cut to DETAIL_MAX."""
    return DeadLetter(
        reason=reason,
        detail=detail[:DETAIL_MAX],
        source_topic=source_topic,
        partition=partition,
        offset=offset,
        raw_base64=_b64(value) or "",
        dead_lettered_at=at,
        key_base64=_b64(key),
    )
