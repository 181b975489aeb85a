"""API keys: random, shown once, stored only as a SHA-256 hash."""

from __future__ import annotations

import hashlib
import hmac
import secrets

KEY_BYTES = 24


def new_key(prefix: str) -> str:
    return f"{prefix}_{secrets.token_urlsafe(KEY_BYTES)}"


def key_hash(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def matches(key: str, stored_hash: str | None) -> bool:
    return stored_hash is not None and hmac.compare_digest(key_hash(key), stored_hash)
