"""The ISP's assertion (issue 14, ledger.api.assertion): the signature with the current or the
previous secret, the expiry, the bound fields and the account's ISP, each refused with its
reason."""

from __future__ import annotations

import base64
import json

import pytest

from ledger.api import assertion
from ledger.api.assertion import Claims, Expected, Refused

SECRET = b"s" * 32
PREVIOUS = b"p" * 32
NOW = 1_800_000_000


def _claims(**changes: object) -> Claims:
    fields = {"isp_id": "orange", "account_id": "acct-1", "user_id": "u1",
              "payment_id": "pay-1", "publisher_id": "pub-1", "amount_cents": 299,
              "nonce": "n1", "issued_at": NOW, "expires_at": NOW + 60} | changes  # fmt: skip
    return Claims(**fields)  # type: ignore[arg-type]


def _reason(token: str, secrets: list[bytes], now: int = NOW) -> str:
    with pytest.raises(Refused) as refused:
        assertion.verify(token, secrets, now)
    return refused.value.reason


def test_the_format_is_canonical_json_and_an_hmac() -> None:
    token = assertion.sign(_claims(), SECRET)
    payload, _ = token.split(".")
    text = base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4))
    assert text == json.dumps(json.loads(text), sort_keys=True, separators=(",", ":")).encode()
    assert "=" not in token
    assert assertion.verify(token, [SECRET], NOW) == _claims()
    assert assertion.verify(token, [PREVIOUS, SECRET], NOW) == _claims()  # during a rotation
    assert len(assertion.digest(token)) == 64


def test_forged() -> None:
    token = assertion.sign(_claims(), SECRET)
    assert _reason(token, [PREVIOUS]) == "forged"
    assert _reason(token, []) == "forged"  # an ISP without a secret
    payload, mac = token.split(".")
    changed = json.loads(base64.urlsafe_b64decode(payload + "==")) | {"amount_cents": 1}
    text = json.dumps(changed, sort_keys=True, separators=(",", ":")).encode()
    more = base64.urlsafe_b64encode(text).rstrip(b"=").decode()
    assert _reason(f"{more}.{mac}", [SECRET]) == "forged"  # the amount changed, the mac kept
    for junk in ("", ".", "a.b", "x" * 5000, f"{token}.x", "🙂.🙂", "e30.AAAA"):
        assert _reason(junk, [SECRET]) == "forged", junk
    with pytest.raises(ValueError, match="32 bytes"):
        assertion.sign(_claims(), b"short")


def test_expired() -> None:
    token = assertion.sign(_claims(), SECRET)
    assert _reason(token, [SECRET], NOW + 60) == "expired"
    assert assertion.verify(token, [SECRET], NOW + 59) == _claims()
    too_long = assertion.sign(_claims(expires_at=NOW + 121), SECRET)
    assert _reason(too_long, [SECRET]) == "expired"


def test_bound_fields_and_the_accounts_isp() -> None:
    expected = Expected(payment_id="pay-1", publisher_id="pub-1", amount_cents=299, nonce="n1")
    assertion.check_bound(_claims(), expected)
    for name, value in (("payment_id", "pay-2"), ("publisher_id", "pub-2"),
                        ("amount_cents", 300), ("nonce", "n2")):  # fmt: skip
        with pytest.raises(Refused) as refused:
            assertion.check_bound(_claims(**{name: value}), expected)
        assert refused.value.reason == "mismatch" and name in refused.value.message
    assertion.check_isp(_claims(), "orange")
    for isp in ("free", None):
        with pytest.raises(Refused) as refused:
            assertion.check_isp(_claims(), isp)
        assert refused.value.reason == "wrong_isp"


def test_a_rotation_keeps_the_previous_secret_for_ten_minutes() -> None:
    from datetime import UTC, datetime, timedelta

    from ledger.api import isp_secrets

    now = datetime(2027, 1, 1, tzinfo=UTC)
    row = {"secret": SECRET, "previous_secret": PREVIOUS,
           "previous_valid_until": now + timedelta(seconds=1)}  # fmt: skip
    assert isp_secrets.usable([row], now) == [SECRET, PREVIOUS]
    assert isp_secrets.usable([row], now + timedelta(seconds=1)) == [SECRET]
    assert isp_secrets.usable([{**row, "previous_secret": None}], now) == [SECRET]
    assert isp_secrets.usable([], now) == []
    assert isp_secrets.PREVIOUS_VALID_SECONDS == 600
    assert len(isp_secrets.new_secret()) >= assertion.SECRET_BYTES_MIN


def test_the_page_speaks_french_and_english() -> None:
    from ledger.api.page import euros

    assert euros(299, "fr") == "2,99\u00a0€" and euros(299, "en") == "€2.99"
    assert euros(123_456, "fr") == "1\u202f234,56\u00a0€" and euros(5, "en") == "€0.05"
