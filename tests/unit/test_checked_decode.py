"""schemas.checked, the projection writer's quicker decoder of facts (issue 13), against the
validated one, codec.decode_fact: each hand-written pattern test is its regular expression; every
pattern and constraint of the busy facts is checked the quick way; and on facts of every kind and
thousands of broken copies of them (a field changed to a hostile value, removed, or added) both
decoders give the same fact or set it aside for the same reason and detail."""

from __future__ import annotations

import json
import random
import re
from collections.abc import Iterator
from typing import Any

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from ledger.core.runner import LocalAuthorizer
from ledger.produce import upgrade_commands
from schemas import checked, codec
from schemas.facts import Fact, PeriodClosed
from tests import builders as b

_sorted = msgspec.json.Encoder(order="sorted")
EDGES = [
    "", "a", "A", "0", "a\n", "\n", "a\nb", "é", "a b", " a", "a ", ".a", "-a", "a.b:c@d-e_f",
    "x" * 63, "x" * 64, "x" * 65, "x" * 200, "x" * 201, "2006-03", "2006-13", "2006-00",
    "2006-3", "20060-03", "2006-03\n", "\u0662006-03", "ab", "a_1", "a" * 32, "a" * 33,
    "0123456789abcdef0123456789abcdef", "0123456789ABCDEF0123456789ABCDEF", "\x00", "\t",
]  # fmt: skip


@pytest.mark.parametrize("pattern", sorted(checked.KNOWN_PATTERNS))
def test_each_known_pattern_test_is_its_regular_expression(pattern: str) -> None:
    test, regex = checked.KNOWN_PATTERNS[pattern], re.compile(pattern)
    for value in EDGES:
        assert test(value) == bool(regex.search(value)), (pattern, value)

    @given(st.from_regex(regex))
    def matches(value: str) -> None:
        assert test(value)

    @given(st.text(alphabet=st.sampled_from("aZ09-_.:@é \n\x00fF"), max_size=70))
    def agrees(value: str) -> None:
        assert test(value) == bool(regex.search(value)), value

    matches()
    agrees()


def test_every_busy_fact_is_decoded_the_quick_way_with_its_own_config() -> None:
    assert set(checked._QUICK) == set(checked.QUICK_TYPES)
    for original, quick in checked._QUICK.items():
        assert issubclass(quick, original)
        assert quick.__struct_fields__ == original.__struct_fields__  # type: ignore[attr-defined]
        for name in dir(original.__struct_config__):  # type: ignore[attr-defined]
            if not name.startswith("_"):
                assert getattr(quick.__struct_config__, name) == getattr(  # type: ignore[attr-defined]
                    original.__struct_config__,
                    name,  # type: ignore[attr-defined]
                ), name


def _facts() -> list[Fact]:
    ledger = LocalAuthorizer(b.REFERENCE)
    bought = b.purchase("acc-1", 500, b.at(10), publisher_id="canalplay")
    commands: list[Any] = [
        b.open_account("acc-1"), b.open_account("ent-1", kind="enterprise"),
        b.authorise("ent-1", "emp", b.at(1), budget_cents=10_000),
        b.set_limits("acc-1", b.at(2), daily_cap_cents=5_000), bought,
        b.purchase("ent-1", 700, b.at(11), user_id="emp"),
        b.purchase("acc-1", 99_999, b.at(20)), b.purchase("nobody", 300, b.at(21)),
        b.refund("acc-1", bought.purchase_id, 200, b.at(30)),
        b.refund("acc-1", "nope", 100, b.at(31)), b.block("acc-1", b.at(40)),
        b.unblock("acc-1", b.at(41)), b.revoke("ent-1", "emp", b.at(42)),
        b.close("orange", "2006-03", b.at(days=40)),
        b.purchase("ent-1", 300, b.at(days=10, minutes=5), user_id="emp"),  # late
        # Issue 16: purchase.authorized.v2, with a consent.
        upgrade_commands("authorized_v2", 1, b.at(days=41))[0],
        msgspec.structs.replace(b.purchase("acc-1", 400, b.at(days=41)), consent="ab" * 32),
    ]  # fmt: skip
    found = [f for origin, c in enumerate(commands, 1) for f in ledger.handle(c, origin=origin)]
    kinds = {type(f) for f in found}
    assert set(checked.QUICK_TYPES) <= kinds and PeriodClosed in kinds
    return found


HOSTILE: list[Any] = [
    *EDGES, None, True, 0, -1, 1, 10_000, 10_001, 10**12, 10**12 + 1, -(10**12) - 1, 1.5, [], {},
    "2006-03-01T10:00:00", "2006-03-01T10:00:00+15:00", "1969-12-31T23:00:00Z",
    "purchase.authorized.v1", "refund.rejected.v1", "period.closed.v1", "nope.v1",
]  # fmt: skip


def _broken(fact: dict[str, Any], rng: random.Random) -> Iterator[dict[str, Any]]:
    """Copies of a fact's JSON object with one thing wrong (or not quite)."""
    for key in fact:
        for value in HOSTILE:
            yield {**fact, key: value}
        yield {k: v for k, v in fact.items() if k != key}
    yield {**fact, "unexpected": 1}
    for leg, posting in enumerate(fact.get("postings") or []):
        for key in posting:
            for value in rng.sample(HOSTILE, 8):
                postings = list(fact["postings"])
                postings[leg] = {**posting, key: value}
                yield {**fact, "postings": postings}


def _outcome(decode: Any, raw: bytes) -> tuple[Any, ...]:
    try:
        fact = decode(raw)
    except codec.InvalidMessage as invalid:
        return ("set aside", invalid.reason, invalid.detail)
    return ("fact", fact.__struct_config__.tag, _sorted.encode(fact))


def test_both_decoders_take_and_refuse_the_same(seed: int) -> None:
    rng = random.Random(seed)
    cases = 0
    for fact in _facts():
        raw = codec.encode(fact)
        assert _outcome(checked.decode_fact, raw) == _outcome(codec.decode_fact, raw)
        for broken in _broken(json.loads(raw), rng):
            raw = json.dumps(broken).encode()
            assert _outcome(checked.decode_fact, raw) == _outcome(codec.decode_fact, raw), raw
            cases += 1
    assert cases > 2_000


def test_a_memo_of_checked_values_stays_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(checked, "MEMO_VALUES_MAX", 3)
    seen, add = checked._memo(checked.KNOWN_PATTERNS[r"^[0-9a-f]{32}$(?!\n)"])
    for n in range(10):
        assert add(f"{n:032x}")
        assert len(seen) <= 3
    assert not add("X" * 32) and "X" * 32 not in seen
