"""An event id names one fact (issue 12): facts that differ in anything have different ids, and the
same fact emitted again (a redelivery, a restart, a client's retry decided the same way) keeps its
id. Checked on the scenario of the issue, on each kind of command retried after a rejection, and
as a property of random histories with retries; and the rule for facts written under the old ids.
"""

from __future__ import annotations

import json
from collections import defaultdict
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import msgspec
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ledger.core.authorizer import Policy, fingerprint
from ledger.core.reference import Reference
from ledger.core.runner import LocalAuthorizer
from schemas import codec
from schemas.commands import AccountOpenRequested
from schemas.facts import (
    AccountOpened,
    CommandRejected,
    Fact,
    PeriodClosed,
    PurchaseRefunded,
    PurchaseRejected,
    RefundRejected,
    canonical,
    upcast_event_id,
)
from schemas.reference import IspRegistered
from tests import builders as b
from tests.builders import CANALPLAY, LEMONDE, ORANGE, T0, at

GOLDEN = Path(__file__).parents[1] / "fixtures" / "golden"
PARIS_WINTER = timezone(timedelta(hours=1))
PROBE = IspRegistered(
    isp_id="x", name="Probe ISP", billing_day=1, commission_bp=1000, occurred_at=T0
)


def _one(ledger: LocalAuthorizer, command: Any, origin: int | None = None) -> Fact:
    (fact,) = ledger.handle(command, origin=origin)
    return fact


def test_the_issue_account_rejected_then_opened_by_the_same_request_has_two_ids() -> None:
    """Issue 12: account.open before the ISP is registered (isp_unknown), the ISP registered, the
    very same request again: two facts, two ids; and that request once more: the same fact."""
    ledger = LocalAuthorizer(Reference.of([ORANGE, CANALPLAY]))
    command = AccountOpenRequested(
        command_id="open-1", account_id="a1", isp_id="x", kind="enterprise",
        company_name="Probe SARL", occurred_at=datetime(2013, 12, 1, 9, tzinfo=PARIS_WINTER),
    )  # fmt: skip
    rejected = _one(ledger, command, origin=7)
    assert isinstance(rejected, CommandRejected) and rejected.reason == "isp_unknown"
    ledger.update_reference(PROBE)
    opened = _one(ledger, command, origin=8)
    assert isinstance(opened, AccountOpened) and opened.company_name == "Probe SARL"
    assert opened.event_id != rejected.event_id
    body = fingerprint(command)[:16]
    assert opened.event_id == f"command.open-1.{body}"
    assert rejected.event_id == f"command.open-1.{body}.rejected.isp_unknown"
    assert _one(ledger, command, origin=9) == opened  # the same fact again, id and content


def test_admin_commands_retried_after_account_unknown_get_an_id_of_their_own() -> None:
    ledger = LocalAuthorizer(b.REFERENCE)
    early = [
        b.block("later", at(1)), b.unblock("later", at(2)),
        b.set_limits("later", at(3), daily_cap_cents=1_000),
        b.authorise("later", "emp", at(4)), b.revoke("later", "emp", at(5)),
    ]  # fmt: skip
    refused = [_one(ledger, command) for command in early]
    assert {f.reason for f in refused} == {"account_unknown"}  # type: ignore[union-attr]
    _one(ledger, b.open_account("later", kind="enterprise"))
    accepted = [_one(ledger, command) for command in early]
    assert not any(isinstance(f, CommandRejected) for f in accepted)
    for before, after in zip(refused, accepted, strict=True):
        assert before.event_id == f"{after.event_id}.rejected.account_unknown"
    # A revoke of an employee unknown, then known; a close of an ISP unknown, then registered.
    revoke = b.revoke("later", "newcomer", at(6))
    unknown = _one(ledger, revoke)
    _one(ledger, b.authorise("later", "newcomer", at(6)))
    assert _one(ledger, revoke).event_id != unknown.event_id
    close = b.close("x", "2006-03", at(days=40), command_id="close-x")
    isp_unknown = _one(ledger, close)
    ledger.update_reference(PROBE)
    closed = _one(ledger, close)
    assert isinstance(isp_unknown, CommandRejected) and isinstance(closed, PeriodClosed)
    assert isp_unknown.event_id == f"command.close-x.{fingerprint(close)[:16]}.rejected.isp_unknown"
    assert _one(ledger, close) == closed


def test_purchases_and_refunds_rejected_then_accepted_get_an_id_of_their_own() -> None:
    """Outside a stream (origin None) an unremembered rejection has no origin in its id; the
    outcome in the id still keeps it apart from the decision that follows."""
    ledger = LocalAuthorizer(b.REFERENCE)
    purchase = b.purchase("acct", 266, at(1), purchase_id="early")
    refund = b.refund("acct", "early", 100, at(2), refund_id="early-r")
    unknown, refund_unknown = _one(ledger, purchase), _one(ledger, refund)
    _one(ledger, b.open_account("acct"))
    authorized, refunded = _one(ledger, purchase), _one(ledger, refund)
    assert isinstance(unknown, PurchaseRejected) and isinstance(refund_unknown, RefundRejected)
    assert unknown.event_id == f"{authorized.event_id}.rejected.account_unknown"
    assert refund_unknown.event_id == f"{refunded.event_id}.rejected.account_unknown"


def test_a_refund_retried_after_its_purchase_left_the_horizon_is_the_same_fact() -> None:
    """The refund is remembered longer than its purchase would be: the purchase is kept as long as
    a refund of it is, so the retry gets the same fact again (it got a rejection without a reason,
    under the refund's id, before)."""
    ledger = LocalAuthorizer(b.REFERENCE, Policy(horizon_seconds=20 * 86_400))
    _one(ledger, b.open_account("acct"))
    _one(ledger, b.purchase("acct", 266, at(0), purchase_id="old"), origin=1)
    refund = b.refund("acct", "old", 100, at(days=19), refund_id="late-r")
    refunded = _one(ledger, refund, origin=2)
    _one(ledger, b.purchase("acct", 15, at(days=25), purchase_id="newer"), origin=3)
    assert _one(ledger, refund, origin=4) == refunded
    assert isinstance(refunded, PurchaseRefunded)


# --- the property ----------------------------------------------------------------------------

ACCOUNTS = ("a0", "a1", "e0")
HORIZON = 2 * 86_400  # short, so that purchases leave it within a history

_open = st.tuples(
    st.just("open"), st.sampled_from(ACCOUNTS), st.sampled_from(["orange", "x"]),
    st.sampled_from(["consumer", "enterprise"]),
)  # fmt: skip
_admin = st.tuples(
    st.just("admin"), st.sampled_from(["block", "unblock", "limits", "authorise", "revoke"]),
    st.sampled_from(ACCOUNTS), st.sampled_from(["u1", "u2"]), st.integers(0, 3),
)  # fmt: skip
_purchase = st.tuples(
    st.just("purchase"), st.sampled_from(("a0", *ACCOUNTS)), st.integers(0, 6),
    st.sampled_from([15, 266, 999, 3_000, 60_000]), st.sampled_from(["u1", "u2"]),
    st.sampled_from(["canalplay", "lemonde-archives", "nope"]),
)  # fmt: skip
_refund = st.tuples(
    st.just("refund"), st.sampled_from(("a0", *ACCOUNTS)), st.integers(0, 4), st.integers(0, 6),
    st.sampled_from([1, 100, 266, 1_000]),
)  # fmt: skip
_STEPS = {
    "open": _open,
    "admin": _admin,
    "purchase": _purchase,
    "refund": _refund,
    "register": st.tuples(st.just("register")),
    "wait": st.tuples(st.just("wait"), st.integers(3_600, 10 * 86_400)),
    "close": st.tuples(st.just("close"), st.sampled_from(["orange", "x"]), st.integers(0, 2)),
    "again": st.tuples(st.just("again"), st.integers(0, 1_000), st.booleans()),
}
# How often each kind of step comes, out of 24: accounts open early and often enough that most
# purchases reach the rules, and retries come back after the world changed.
_WEIGHTS = {
    "open": 3, "admin": 3, "purchase": 8, "refund": 3, "register": 1, "wait": 1, "close": 1,
    "again": 4,
}  # fmt: skip
_step = st.sampled_from([k for k, weight in _WEIGHTS.items() for _ in range(weight)]).flatmap(
    _STEPS.__getitem__
)


def _admin_command(kind: str, account: str, user: str, variant: int) -> Any:
    """The same choices make the same command, so that a retry is a retry."""
    when = at(variant)
    cid = f"{kind}-{account}-{user}-{variant}"
    command: Any
    if kind == "block":
        command = b.block(account, when)
    elif kind == "unblock":
        command = b.unblock(account, when)
    elif kind == "limits":
        command = b.set_limits(account, when, daily_cap_cents=1_000 * (variant + 1))
    elif kind == "authorise":
        command = b.authorise(account, user, when, None if variant % 2 else 2_000)
    else:
        command = b.revoke(account, user, when)
    return msgspec.structs.replace(command, command_id=cid)


def _run(steps: list[tuple[Any, ...]], stream: bool) -> list[tuple[int | None, Fact]]:
    """The facts of a history; in a stream each command has its offset as origin, and a
    redelivery comes back with its first offset."""
    ledger = LocalAuthorizer(Reference.of([ORANGE, CANALPLAY, LEMONDE]), Policy(HORIZON))
    clock = T0
    # One account open from the start, so that most purchases reach the rules; the others open
    # (or fail to) as the history goes.
    sent: list[tuple[int, Any]] = [(0, b.open_account("a0", "orange", "consumer", T0, "open-a0"))]
    facts: list[tuple[int | None, Fact]] = [
        (0, f) for f in ledger.handle(sent[0][1], origin=0 if stream else None)
    ]
    for choice in steps:
        kind, command = choice[0], None
        origin = len(sent)
        if kind == "register":
            ledger.update_reference(PROBE)
        elif kind == "wait":
            clock += timedelta(seconds=choice[1])
        elif kind == "open":
            _, account, isp, account_kind = choice
            command = b.open_account(account, isp, account_kind, T0, f"open-{account}")
        elif kind == "admin":
            command = _admin_command(*choice[1:])
        elif kind == "purchase":
            _, account, number, amount, user, publisher = choice
            command = b.purchase(account, amount, clock, purchase_id=f"p{number}",
                                 user_id=user, publisher_id=publisher)  # fmt: skip
        elif kind == "refund":
            _, account, number, purchase, amount = choice
            command = b.refund(account, f"p{purchase}", amount, clock, refund_id=f"r{number}")
        elif kind == "close":
            period = f"2006-{2 + choice[2]:02d}"
            command = b.close(choice[1], period, clock, command_id=f"close-{choice[1]}-{period}")
        elif kind == "again" and sent:
            first_origin, command = sent[choice[1] % len(sent)]
            origin = first_origin if choice[2] else origin  # a redelivery, or a client's retry
        if command is None:
            continue
        sent.append((origin, command))
        for fact in ledger.handle(command, origin=origin if stream else None):
            facts.append((origin, fact))
    return facts


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(_step, min_size=5, max_size=120), st.booleans())
def test_facts_under_one_event_id_are_byte_identical(
    steps: list[tuple[Any, ...]], stream: bool
) -> None:
    by_id: dict[str, set[bytes]] = defaultdict(set)
    for _, fact in _run(steps, stream):
        encoded = codec.encode(fact)
        assert codec.decode_fact(encoded) == fact, f"{fact} does not decode as itself"
        by_id[fact.event_id].add(encoded)
    different = {event_id: found for event_id, found in by_id.items() if len(found) > 1}
    assert not different, f"different facts under one id: {different}"


# --- facts written under the old ids (rule of issue 12) ------------------------------------


def _golden(tag: str) -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads((GOLDEN / f"{tag}.json").read_text())
    return loaded


def test_old_rejection_ids_are_read_in_the_new_scheme() -> None:
    """A rejection written before its id named its outcome is read with the id it has now, so
    that an old log projects each fact under an id of its own, and a rejection emitted again
    after the upgrade is a duplicate of the one emitted before."""
    command = codec.decode_fact(json.dumps(_golden("command.rejected.v1")).encode())
    assert command.event_id == "command.open-6.9a4e815d50a760c8.rejected.account_exists"
    purchase = codec.decode_fact(json.dumps(_golden("purchase.rejected.v1")).encode())
    assert (
        purchase.event_id == "purchase.P-2006-0002.618cdfc8dd458040.rejected.amount_above_maximum"
    )
    refund = codec.decode_fact(json.dumps(_golden("refund.rejected.v1")).encode())
    assert refund.event_id == "refund.R-2.33389a8a91c52b2b.rejected.purchase_unknown"
    # An unremembered rejection had its origin after the body's fingerprint: it stays last.
    stale = {**_golden("purchase.rejected.v1"), "reason": "stale_purchase", "origin": 42,
             "event_id": "purchase.P-2006-0002.618cdfc8dd458040.42"}  # fmt: skip
    assert codec.decode_fact(json.dumps(stale).encode()).event_id == (
        "purchase.P-2006-0002.618cdfc8dd458040.rejected.stale_purchase.42"
    )


def test_the_colliding_pair_of_an_old_log_is_two_facts_with_two_ids() -> None:
    """The issue's pair as the old code wrote it: both under `command.open-1.<fp>`."""
    ledger = LocalAuthorizer(Reference.of([ORANGE, CANALPLAY]))
    command = b.open_account("a1", "x", "enterprise", T0, "open-1")
    rejected = _one(ledger, command)
    ledger.update_reference(PROBE)
    opened = _one(ledger, command)
    old_id = f"command.open-1.{fingerprint(command)[:16]}"
    written = [msgspec.structs.replace(f, event_id=old_id) for f in (rejected, opened)]
    read = [codec.decode_fact(codec.encode(f)) for f in written]
    assert [f.event_id for f in read] == [rejected.event_id, opened.event_id]
    assert read == [rejected, opened]


def test_new_ids_and_accepted_facts_are_never_upcast() -> None:
    ledger = LocalAuthorizer(b.REFERENCE)
    facts = [
        _one(ledger, b.purchase("nobody", purchase_id="q"), origin=3),
        _one(ledger, b.open_account("acct")),
        _one(ledger, b.purchase("acct", 266, purchase_id="q"), origin=4),
        _one(ledger, b.purchase("acct", 267, purchase_id="q"), origin=5),
        _one(ledger, b.refund("acct", "q", 300, refund_id="too-much"), origin=6),
        _one(ledger, b.revoke("acct", "nobody")),
    ]
    assert [upcast_event_id(f) for f in facts] == facts


def test_an_old_rejection_and_its_new_emission_have_one_canonical_form() -> None:
    ledger = LocalAuthorizer(b.REFERENCE)
    new = _one(ledger, b.purchase("nobody", purchase_id="q"), origin=3)
    assert isinstance(new, PurchaseRejected)
    old = msgspec.structs.replace(new, event_id=f"purchase.q.{new.body_fingerprint[:16]}.3")
    assert codec.encode(old) != codec.encode(new)
    assert canonical(codec.decode_fact(codec.encode(old))) == canonical(new)


# --- the canonical form, computed twice -------------------------------------------------------

# Texts as a fact may hold them: no control character but tab and line breaks.
_texts = st.text(st.characters(blacklist_categories=("Cs", "Cc")), max_size=40) | st.sampled_from(
    ['":null', '\\":null,', "\\", '"', "é\u2028😀\x7f\x85", "a\tb\nc\r", "{,}"]
)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(_step, min_size=5, max_size=60), st.booleans(), st.lists(_texts, max_size=5))
def test_the_writer_and_reconcile_compute_one_canonical_form(
    steps: list[tuple[Any, ...]], stream: bool, descriptions: list[str]
) -> None:
    """The writer's fingerprint (schemas.facts.canonical) and `ledger reconcile`'s, computed from
    plain JSON with no code in common (projections.factcheck), agree on every fact, texts with
    quotes, backslashes and `":null` in them included, and on facts written under old ids."""
    from projections import factcheck

    facts = [fact for _, fact in _run(steps, stream)]
    ledger = LocalAuthorizer(b.REFERENCE)
    _one(ledger, b.open_account("acct"))
    for text in descriptions:
        facts.append(_one(ledger, b.purchase("acct", 266, description=text)))
        refund = b.refund("acct", "nope", 1, refund_id=b.next_id("r"))
        facts.append(_one(ledger, msgspec.structs.replace(refund, reason=text)))
    for fact in facts:
        as_written = json.loads(codec.encode(fact))
        assert factcheck.canonical(factcheck.as_read_today(as_written)) == canonical(fact)
        old = _old_scheme(fact)
        if old is not None:
            read = factcheck.as_read_today(json.loads(codec.encode(old)))
            assert factcheck.canonical(read) == canonical(fact)


def _old_scheme(fact: Fact) -> Fact | None:
    """The fact as the code before issue 12 wrote it, if its id was another then."""
    if not isinstance(fact, PurchaseRejected | RefundRejected | CommandRejected):
        return None
    old_id = fact.event_id.replace(f".rejected.{fact.reason}", "")
    return msgspec.structs.replace(fact, event_id=old_id)
