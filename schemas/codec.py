"""JSON encoding and decoding of every message, with typed errors for the dead-letter topic.

Decoders are built once (msgspec compiles a decoder per type); decoding checks every constraint
of schemas/types.py, so what comes out is valid or an InvalidMessage was raised.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from typing import Literal

import msgspec

from schemas.commands import (
    COMMAND_TYPES,
    OLDER_COMMAND_TYPES,
    Command,
    Message,
    PurchaseRequested,
    PurchaseRequestedV1,
)
from schemas.deadletter import DeadLetter
from schemas.facts import FACT_TYPES, Fact, upcast_event_id
from schemas.reference import REFERENCE_TYPES, ReferenceRecord
from schemas.types import TEXT_PATTERN

InvalidReason = Literal[
    "malformed_json", "unknown_type", "invalid_field", "wrong_topic", "wrong_partition"
]


class InvalidMessage(ValueError):
    """A message that cannot become a ledger message. `reason` is one of a few codes, for the
    dead-letter topic and its metric; `detail` says what exactly, for the operator."""

    def __init__(self, reason: InvalidReason, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason: InvalidReason = reason
        self.detail = detail


ALL_TYPES: tuple[type[Message], ...] = (
    *COMMAND_TYPES, *OLDER_COMMAND_TYPES, *FACT_TYPES, *REFERENCE_TYPES, DeadLetter,
)  # fmt: skip
TAGS: dict[str, type[Message]] = {cls.__struct_config__.tag: cls for cls in ALL_TYPES}  # type: ignore[misc]

_encoder = msgspec.json.Encoder()
_command_decoder: msgspec.json.Decoder[Command | PurchaseRequestedV1] = msgspec.json.Decoder(
    Command | PurchaseRequestedV1
)
_fact_decoder: msgspec.json.Decoder[Fact] = msgspec.json.Decoder(Fact)
_reference_decoder: msgspec.json.Decoder[ReferenceRecord] = msgspec.json.Decoder(ReferenceRecord)
_any_decoder = msgspec.json.Decoder()


def encode(message: Message) -> bytes:
    return _encoder.encode(message)


def _classify(raw: bytes, error: msgspec.DecodeError, family: str) -> InvalidMessage:
    """Only on the failure path: say why, in one of the InvalidReason codes."""
    try:
        generic = _any_decoder.decode(raw)
    except msgspec.DecodeError:
        return InvalidMessage("malformed_json", str(error))
    if not isinstance(generic, dict):
        return InvalidMessage(
            "invalid_field", f"a message is a JSON object, got {type(generic).__name__}"
        )
    tag = generic.get("type")
    if not isinstance(tag, str) or tag not in TAGS:  # [] or {} is no tag (and unhashable)
        return InvalidMessage("unknown_type", f"unknown message type or version {tag!r}")
    return (
        InvalidMessage("wrong_topic", f"{tag!r} is not a {family}")
        if "Invalid value" in str(error) and "`$.type`" in str(error)
        else InvalidMessage("invalid_field", str(error))
    )


# What a ledger time may be, beyond what JSON Schema's date-time says: the UTC offsets of the
# world's zones (UTC-12 to UTC+14; PostgreSQL, the projections' store, refuses beyond ±15:59,
# found by fuzzing the API), nothing before the Unix epoch, and nothing so late that converting
# it to another zone overflows (9999-12-31T23:00-14:00 is past year 9999 in UTC).
OFFSET_MAX = timedelta(hours=14)
YEAR_FIRST, YEAR_LAST = 1970, 2099  # in the time's own offset: within 14 h of it in UTC


_CONTROL = re.compile(TEXT_PATTERN)
# In JSON a control character (U+0000 to U+001F) is always escaped: \u000X, \u001X, \b or \f
# (\t \n \r are allowed). Raw bytes without any of these cannot hold one.
_CONTROL_ESCAPE = re.compile(rb"\\(?:u00[01]|[bf])")


def _check_texts(raw: bytes, message: Message) -> None:
    if b"\\" not in raw or not _CONTROL_ESCAPE.search(raw):  # nearly always: no escape at all
        return
    for name in message.__struct_fields__:
        value = getattr(message, name)
        if isinstance(value, Message):  # a reference change's record (issue 15)
            _check_texts(raw, value)
        elif isinstance(value, str) and not _CONTROL.match(value):
            raise InvalidMessage(
                "invalid_field",
                f"`$.{name}`: a text holds no control character but tab and newline",
            )


# The times a message may carry besides occurred_at (a hold's end, an expiry barrier's time, a
# reference record's effective time).
_OTHER_TIMES = ("hold_expires_at", "as_of", "effective_at")


def _check_time(message: Message) -> None:
    _check_instant("occurred_at", getattr(message, "occurred_at", None))
    for name in _OTHER_TIMES:
        if name in message.__struct_fields__:
            _check_instant(name, getattr(message, name))
    record = getattr(message, "record", None)  # a reference change's record (issue 15)
    if isinstance(record, Message):
        _check_time(record)


def _check_instant(name: str, at: datetime | None) -> None:
    if at is None:
        return
    if at.tzinfo is not UTC:  # "Z", the usual case, needs no look at the offset
        offset = at.utcoffset()
        if offset is not None and abs(offset) > OFFSET_MAX:
            raise InvalidMessage(
                "invalid_field", f"{name} {at.isoformat()}: a UTC offset is within ±14:00"
            )
    if not YEAR_FIRST <= at.year <= YEAR_LAST:
        raise InvalidMessage(
            "invalid_field",
            f"{name} {at.isoformat()} is not between {YEAR_FIRST} and {YEAR_LAST}",
        )


def decode_command(raw: bytes) -> Command:
    """The current version of the command; an older version is upcast to it."""
    try:
        command = _command_decoder.decode(raw)
    except msgspec.DecodeError as error:
        raise _classify(raw, error, "command") from None
    _check_time(command)
    _check_texts(raw, command)
    return command.upcast() if isinstance(command, PurchaseRequestedV1) else command


def body(message: Message) -> bytes:
    """What a body is, for idempotency: the encoding of the oldest version that carries the same
    content. A v2 purchase without content_id is encoded as the v1 it equals, so that a purchase
    sent as v1 and again as v2 is one purchase, and every fingerprint remembered before v2 existed
    still holds (tests/unit/test_schemas.py)."""
    if isinstance(message, PurchaseRequested) and (older := message.downcast()) is not None:
        return encode(older)
    return encode(message)


def decode_fact(raw: bytes) -> Fact:
    """A fact as the ledger reads it now: a rejection written under an id of the old scheme is
    read under its id of today (issue 12, schemas.facts.upcast_event_id)."""
    try:
        fact = _fact_decoder.decode(raw)
    except msgspec.DecodeError as error:
        raise _classify(raw, error, "fact") from None
    check_fact(raw, fact)
    return upcast_event_id(fact)


def check_fact(raw: bytes, fact: Fact) -> None:
    """What decode_fact checks beyond the types: the time and the texts (schemas.checked too)."""
    _check_time(fact)
    _check_texts(raw, fact)


_dead_letter_decoder = msgspec.json.Decoder(DeadLetter)


def decode_dead_letter(raw: bytes) -> DeadLetter:
    try:
        return _dead_letter_decoder.decode(raw)
    except msgspec.DecodeError as error:
        raise _classify(raw, error, "dead letter") from None


def decode_reference(raw: bytes) -> ReferenceRecord:
    try:
        record = _reference_decoder.decode(raw)
    except msgspec.DecodeError as error:
        raise _classify(raw, error, "reference record") from None
    _check_time(record)
    _check_texts(raw, record)
    return record
