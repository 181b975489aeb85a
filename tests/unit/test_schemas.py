"""Message types: JSON Schema files equal to the types, golden payloads of every version decoded
forever, and bad input refused with a typed reason."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from ledger.core.authorizer import fingerprint
from schemas import codec
from schemas.commands import (
    COMMAND_TYPES,
    OLDER_COMMAND_TYPES,
    PurchaseRequested,
    PurchaseRequestedV1,
)
from schemas.facts import FACT_TYPES, PurchaseAuthorized
from schemas.jsonschema import JSON_DIR, render, tag_of
from schemas.reference import REFERENCE_TYPES

GOLDEN = Path(__file__).parents[1] / "fixtures" / "golden"
DECODERS = {
    **{tag_of(cls): codec.decode_command for cls in COMMAND_TYPES},
    **{tag_of(cls): codec.decode_fact for cls in FACT_TYPES},
    **{tag_of(cls): codec.decode_reference for cls in REFERENCE_TYPES},
    "dead_letter.v1": codec.decode_dead_letter,
    **{tag_of(cls): codec.decode_command for cls in OLDER_COMMAND_TYPES},
}
UPCAST_TO: dict[type, type] = {PurchaseRequestedV1: PurchaseRequested}
# Rejections written before issue 12 are read under the id that names their outcome
# (schemas.facts.upcast_event_id; tests/unit/test_event_ids.py).
UPCAST_EVENT_ID = {
    "command.rejected.v1": "command.open-6.9a4e815d50a760c8.rejected.account_exists",
    "purchase.rejected.v1": "purchase.P-2006-0002.618cdfc8dd458040.rejected.amount_above_maximum",
    "refund.rejected.v1": "refund.R-2.33389a8a91c52b2b.rejected.purchase_unknown",
}


@pytest.mark.parametrize("cls", codec.ALL_TYPES, ids=tag_of)
def test_json_schema_file_equals_the_type(cls: type) -> None:
    path = JSON_DIR / f"{tag_of(cls)}.json"
    assert path.exists(), "run `ledger schemas export` and commit schemas/json"
    assert path.read_text() == render(cls), "schemas/json is stale: run `ledger schemas export`"


def test_no_schema_file_without_a_type() -> None:
    assert {p.stem for p in JSON_DIR.glob("*.json")} == {tag_of(cls) for cls in codec.ALL_TYPES}


def _golden(tag: str) -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads((GOLDEN / f"{tag}.json").read_text())
    return loaded


@pytest.mark.parametrize("cls", codec.ALL_TYPES, ids=tag_of)
def test_golden_payload_decodes_and_matches_its_schema(cls: type) -> None:
    tag = tag_of(cls)
    payload = _golden(tag)
    raw = json.dumps(payload).encode()
    message = DECODERS[tag](raw)
    current = UPCAST_TO.get(cls, cls)  # an older version is read as the current one
    assert type(message) is current
    encoded = json.loads(codec.encode(message))
    if current is not cls:
        payload = {**payload, "type": tag_of(current)}
    if tag in UPCAST_EVENT_ID:
        payload = {**payload, "event_id": UPCAST_EVENT_ID[tag]}
    assert {key: encoded[key] for key in payload} == payload  # no field lost, renamed or changed
    added = {key: value for key, value in encoded.items() if key not in payload}
    assert all(value is None for value in added.values()), f"fields added since v1: {added}"
    schema = json.loads((JSON_DIR / f"{tag}.json").read_text())
    jsonschema.validate(_golden(tag), schema, format_checker=jsonschema.FormatChecker())


def test_every_golden_file_is_a_known_version() -> None:
    tags = {p.stem for p in GOLDEN.glob("*.json")}
    assert tags >= {tag_of(cls) for cls in codec.ALL_TYPES}
    assert tags <= set(codec.TAGS)


def test_fingerprints_of_old_commands_never_change() -> None:
    """A duplicate is judged by the fingerprint of its body: if encoding a v1 command ever gave
    other bytes, every remembered purchase would look like a different body."""
    command = codec.decode_command(json.dumps(_golden("purchase.requested.v1")).encode())
    fact = codec.decode_fact(json.dumps(_golden("purchase.authorized.v1")).encode())
    assert isinstance(fact, PurchaseAuthorized)
    assert fingerprint(command) == fact.body_fingerprint == "39c2f4cea5495842c02a97d81e1db9bf"


def test_a_purchase_sent_as_v1_and_again_as_v2_is_one_purchase() -> None:
    """The same body whichever version carried it: one fingerprint (so one decision, no
    duplicate_with_different_body), and a content_id makes it another body."""
    v1 = _golden("purchase.requested.v1")
    as_v1 = codec.decode_command(json.dumps(v1).encode())
    as_v2 = codec.decode_command(json.dumps({**v1, "type": "purchase.requested.v2"}).encode())
    assert as_v1 == as_v2 and isinstance(as_v2, PurchaseRequested)
    assert fingerprint(as_v1) == fingerprint(as_v2)
    assert b"content_id" not in codec.encode(as_v2)  # left out when null
    with_content = codec.decode_command(
        json.dumps({**v1, "type": "purchase.requested.v2", "content_id": "film-1"}).encode()
    )
    assert fingerprint(with_content) != fingerprint(as_v2)


def test_a_consented_purchase_is_another_body_and_old_bytes_are_unchanged() -> None:
    """Issue 14: `consent` (the SHA-256 of the ISP's assertion) is a new trailing field, left out
    when null: a purchase without it encodes as before; with it, it has no v1 equal."""
    v2 = {**_golden("purchase.requested.v1"), "type": "purchase.requested.v2"}
    plain = codec.decode_command(json.dumps(v2).encode())
    assert isinstance(plain, PurchaseRequested) and plain.consent is None
    assert b"consent" not in codec.encode(plain)
    digest = "ab" * 32
    consented = codec.decode_command(json.dumps({**v2, "consent": digest}).encode())
    assert isinstance(consented, PurchaseRequested) and consented.consent == digest
    assert consented.downcast() is None and plain.downcast() is not None
    assert fingerprint(consented) != fingerprint(plain)
    for bad in ("AB" * 32, "ab" * 31, "ab" * 32 + "\n", "zz" * 32):
        with pytest.raises(codec.InvalidMessage):
            codec.decode_command(json.dumps({**v2, "consent": bad}).encode())


def _purchase(**changes: Any) -> bytes:
    payload = {**_golden("purchase.requested.v1"), **changes}
    return json.dumps({k: v for k, v in payload.items() if v is not None}).encode()


@pytest.mark.parametrize(
    ("raw", "reason", "detail"),
    [
        (b"{not json", "malformed_json", "malformed"),
        (b"[1, 2]", "invalid_field", "JSON object"),
        (b'"text"', "invalid_field", "JSON object"),
        (_purchase(type="purchase.requested.v9"), "unknown_type", "purchase.requested.v9"),
        (_purchase(type="nonsense"), "unknown_type", "nonsense"),
        # Found by tests/unit/test_checked_decode.py: an unhashable tag was a TypeError, which
        # stopped the projection writer instead of setting the record aside.
        (_purchase(type=[]), "unknown_type", "[]"),
        (_purchase(type={"v": 1}), "unknown_type", "{'v': 1}"),
        (json.dumps(_golden("purchase.authorized.v1")).encode(), "wrong_topic", "not a command"),
        (_purchase(amount_cents=0), "invalid_field", "$.amount_cents"),
        (_purchase(amount_cents=-266), "invalid_field", "$.amount_cents"),
        (_purchase(amount_cents=2.66), "invalid_field", "$.amount_cents"),
        (_purchase(amount_cents="266"), "invalid_field", "$.amount_cents"),
        (_purchase(occurred_at="2006-03-01T10:02:00"), "invalid_field", "timezone"),
        (_purchase(occurred_at="yesterday"), "invalid_field", "$.occurred_at"),
        # Found by fuzzing the API: PostgreSQL refused the fact, and the projection stalled.
        (_purchase(occurred_at="1999-01-19T02:49:02+23:30"), "invalid_field", "±14:00"),
        (_purchase(occurred_at="2006-03-01T10:02:00-14:01"), "invalid_field", "±14:00"),
        (_purchase(occurred_at="1564-01-19T02:49:02Z"), "invalid_field", "between 1970 and 2099"),
        (_purchase(occurred_at="9999-12-31T23:00:00-14:00"), "invalid_field", "between 1970"),
        (_purchase(description="bad\u0000byte"), "invalid_field", "$.description"),
        (_purchase(description="bell\u0007"), "invalid_field", "$.description"),
        (_purchase(purchase_id="has space"), "invalid_field", "$.purchase_id"),
        (_purchase(purchase_id=""), "invalid_field", "$.purchase_id"),
        (_purchase(account_id="x" * 65), "invalid_field", "$.account_id"),
        (_purchase(category="VOD!"), "invalid_field", "$.category"),
        (_purchase(description="x" * 201), "invalid_field", "$.description"),
        (_purchase(purchase_id=None), "invalid_field", "purchase_id"),
    ],
)
def test_bad_commands_are_refused_with_a_reason(raw: bytes, reason: str, detail: str) -> None:
    with pytest.raises(codec.InvalidMessage) as refused:
        codec.decode_command(raw)
    assert refused.value.reason == reason
    assert detail in refused.value.detail


def test_bad_facts_and_reference_records_are_refused() -> None:
    with pytest.raises(codec.InvalidMessage, match="not a fact"):
        codec.decode_fact(_purchase())
    with pytest.raises(codec.InvalidMessage, match="billing_day"):
        codec.decode_reference(
            json.dumps({**_golden("isp.registered.v1"), "billing_day": 29}).encode()
        )
    with pytest.raises(codec.InvalidMessage, match="commission_bp"):
        codec.decode_reference(
            json.dumps({**_golden("isp.registered.v1"), "commission_bp": 3001}).encode()
        )


def test_unknown_fields_are_ignored_for_forward_compatibility() -> None:
    """A newer producer may add a field with a default; an older consumer still decodes."""
    command = codec.decode_command(_purchase(channel="mobile"))
    assert command.purchase_id == "P-2006-0001"  # type: ignore[union-attr]


def test_period_close_partition_must_be_in_range() -> None:
    payload = {**_golden("period.close_requested.v1"), "partition": 4, "partitions": 4}
    with pytest.raises(codec.InvalidMessage, match="partition must be below partitions"):
        codec.decode_command(json.dumps(payload).encode())


def test_schema_export_writes_every_type(tmp_path: Path) -> None:
    from schemas.jsonschema import export

    written = export(tmp_path)
    assert {p.name for p in written} == {p.name for p in JSON_DIR.glob("*.json")}
    for path in written:
        assert path.read_text() == (JSON_DIR / path.name).read_text()


def test_reference_records_are_keyed_by_kind_and_id() -> None:
    from schemas.reference import reference_key

    isp = codec.decode_reference(json.dumps(_golden("isp.registered.v1")).encode())
    publisher = codec.decode_reference(json.dumps(_golden("publisher.registered.v1")).encode())
    assert reference_key(isp) == "isp:orange"
    assert reference_key(publisher) == "publisher:lemonde-archives"


def test_velocity_window_is_bounded() -> None:
    import msgspec

    from schemas.commands import LimitOverrides

    with pytest.raises(msgspec.ValidationError, match="velocity_window_seconds"):
        msgspec.convert({"velocity_window_seconds": 86_401}, LimitOverrides)
