"""The assertion with which an ISP vouches that its subscriber confirmed one payment (issue 14,
docs/design/checkout.md): `base64url(json) "." base64url(HMAC-SHA256(secret_isp, json))`, the JSON
with sorted keys and no spaces, times in whole seconds since the epoch, base64url without padding.

Pure: the identity component signs with it, the checkout API checks with it; neither the clock nor
the secrets are read here (they are arguments).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from typing import Literal

import msgspec

from schemas.types import Id, PositiveCents

# An assertion is short-lived: a confirmation page left open, or a link copied, is of no use
# after two minutes (design notes: "expires_at at most 120 s later").
LIFETIME_SECONDS_MAX = 120
SECRET_BYTES_MIN = 32
ASSERTION_CHARS_MAX = 4_096  # a signed payload of bounded ids and numbers is far below it

Refusal = Literal["forged", "expired", "mismatch", "wrong_isp", "reused"]


class Claims(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """What the ISP signs. Every field is bound: the checkout API compares each with the prepared
    payment and the account (`check`)."""

    isp_id: Id
    account_id: Id
    user_id: Id
    payment_id: Id
    publisher_id: Id
    amount_cents: PositiveCents
    nonce: Id
    issued_at: int
    expires_at: int


class Refused(Exception):
    def __init__(self, reason: Refusal, message: str) -> None:
        super().__init__(message)
        self.reason, self.message = reason, message


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def canonical(claims: Claims) -> bytes:
    return json.dumps(msgspec.to_builtins(claims), sort_keys=True, separators=(",", ":")).encode()


def sign(claims: Claims, secret: bytes) -> str:
    if len(secret) < SECRET_BYTES_MIN:
        raise ValueError(f"an ISP secret is at least {SECRET_BYTES_MIN} bytes")
    payload = canonical(claims)
    mac = hmac.new(secret, payload, hashlib.sha256).digest()
    return f"{_b64(payload)}.{_b64(mac)}"


def digest(assertion: str) -> str:
    """The evidence kept on the command (PurchaseRequested.consent): SHA-256 of the assertion."""
    return hashlib.sha256(assertion.encode()).hexdigest()


def unverified_claims(assertion: str) -> Claims:
    """The claims as sent, before any check (to find the ISP whose secrets verify them); a token
    that is not an assertion at all is `forged`."""
    if len(assertion) > ASSERTION_CHARS_MAX or assertion.count(".") != 1:
        raise Refused("forged", "this is not an assertion signed by an ISP")
    try:
        payload = _unb64(assertion.split(".", maxsplit=1)[0])
        return msgspec.json.decode(payload, type=Claims)
    except (ValueError, binascii.Error, msgspec.DecodeError):
        raise Refused("forged", "this is not an assertion signed by an ISP") from None


def verify(assertion: str, secrets: Iterable[bytes], now: int) -> Claims:
    """The claims of an assertion signed with one of `secrets` (the ISP's current one, and its
    previous one during a rotation) and not expired at `now`; else Refused, with the reason the
    design notes give (forged, then expired)."""
    claims = unverified_claims(assertion)
    encoded, mac_text = assertion.split(".")
    try:
        mac = _unb64(mac_text)
        payload = _unb64(encoded)
    except (ValueError, binascii.Error):
        raise Refused("forged", "this is not an assertion signed by an ISP") from None
    if payload != canonical(claims):
        raise Refused("forged", "the assertion is not in its canonical form")
    good = any(
        hmac.compare_digest(mac, hmac.new(secret, payload, hashlib.sha256).digest())
        for secret in secrets
    )
    if not good:
        raise Refused("forged", f"the signature is not {claims.isp_id}'s")
    if claims.expires_at - claims.issued_at > LIFETIME_SECONDS_MAX:
        raise Refused("expired", f"an assertion is valid for at most {LIFETIME_SECONDS_MAX} s")
    if now >= claims.expires_at:
        raise Refused("expired", "the identification expired: identify again")
    return claims


@dataclass(frozen=True)
class Expected:
    """What the prepared payment binds: the claims must name the same."""

    payment_id: str
    publisher_id: str
    amount_cents: int
    nonce: str


def check_bound(claims: Claims, expected: Expected) -> None:
    for name, value in asdict(expected).items():
        if getattr(claims, name) != value:
            raise Refused("mismatch", f"the assertion's {name} is not the payment's")


def check_isp(claims: Claims, account_isp: str | None) -> None:
    if account_isp is None:
        raise Refused("wrong_isp", f"the ledger knows no account {claims.account_id!r}")
    if account_isp != claims.isp_id:
        raise Refused("wrong_isp", f"account {claims.account_id!r} is not {claims.isp_id}'s")
