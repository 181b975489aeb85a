"""`ledger verify`'s comparison (projections/redecide.py) on lists in memory: a partition of
commands re-decided and compared with the facts a worker recorded, then the same facts tampered
with in each way verify must name: a changed byte, a missing fact, an extra fact, an identical
duplicate (not a difference), a tail the workers have not decided yet (not a difference either,
unless their summary says they did)."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import timedelta
from typing import NamedTuple

import pytest

from ledger.core.batch import PartitionSummary, decide_batch, decode_summary, encode_summary
from ledger.core.reference import PartitionReference
from ledger.core.state import AccountState, decode_account
from ledger.kafka import topics
from ledger.produce import reference_commands
from projections import redecide
from projections.redecide import PartitionResult, PartitionVerifier, balances_differ
from schemas import codec
from schemas.commands import Command, PartitionBarrier, barrier_key
from tests import builders as b
from tests.builders import REFERENCE, T0


class Rec(NamedTuple):
    offset: int
    key: bytes | None
    value: bytes | None


MARKER = Rec(0, topics.PARTITION_MARKER_KEY, topics.PARTITION_MARKER_VALUE)
R = len(REFERENCE.records())  # the reference changes before the accounts' commands, one fact each


def _commands() -> list[Command]:
    day = timedelta(days=1)
    p1 = b.purchase("acct-v1", 499, T0 + day, purchase_id="pv-1")
    # The ISPs and publishers first, as every partition's log starts (issue 15).
    reference: list[Command] = [c for r in REFERENCE.records() for c in reference_commands(r, 1)]
    return [
        *reference,
        b.open_account("acct-v1"), b.open_account("acct-v2"),
        p1,
        b.purchase(
            "acct-v1", 266, T0 + 2 * day, purchase_id="pv-2", publisher_id="lemonde-archives"
        ),
        b.purchase("acct-v2", 1200, T0 + 3 * day, purchase_id="pv-3"),
        b.purchase("acct-v2", 99_999, T0 + 3 * day, purchase_id="pv-4"),  # rejected: above the band
        p1,  # a client's retry: the same fact again
        b.refund("acct-v1", "pv-1", 200, T0 + 4 * day, refund_id="rv-1"),
        b.purchase("acct-v9", 300, T0 + 4 * day, purchase_id="pv-5"),  # no such account
    ]  # fmt: skip


def _log(commands: Sequence[Command]) -> list[Rec]:
    """One partition of ledger.commands: the marker, then the commands, then an undecodable one."""
    records = [MARKER]
    records += [Rec(i + 1, _key(c), codec.encode(c)) for i, c in enumerate(commands)]
    records.append(Rec(len(records), b"junk", b"{not json"))
    return records


def _key(command: Command) -> bytes:
    if isinstance(command, PartitionBarrier):
        return barrier_key(command).encode()
    return command.account_id.encode()


def _worker(log: Sequence[Rec]) -> tuple[list[Rec], PartitionSummary]:
    """What the worker recorded on ledger.events for that log, one batch of it, and its summary."""
    states: dict[str, bytes] = {}

    def load(account_id: str) -> AccountState | None:
        raw = states.get(account_id)
        return None if raw is None else decode_account(raw)

    commands: list[tuple[int, Command | None]] = []
    for record in log:
        try:
            command = (
                None if record.key == MARKER.key else codec.decode_command(record.value or b"")
            )
        except codec.InvalidMessage:
            command = None
        commands.append((record.offset, command))
    summary = PartitionSummary()
    batch = decide_batch(0, summary, commands, load, PartitionReference(), redecide.Policy())
    events = [MARKER]
    events += [
        Rec(i + 1, key.encode(), codec.encode(fact)) for i, (key, fact) in enumerate(batch.facts)
    ]
    return events, summary


def _verify(log: Sequence[Rec], events: Sequence[Rec], workers: PartitionSummary | None,
            chunk: int = 4, projected: int = 0,
            accounts: dict[str, redecide.PartyRow] | None = None) -> PartitionResult:  # fmt: skip
    verifier = PartitionVerifier(
        0, 1, workers=workers, projected_offset=projected,
        projected_accounts=accounts,
    )  # fmt: skip
    given = 0
    for start in range(0, len(log), chunk):
        verifier.decide(log[start : start + chunk])
        verifier.record(events[given : start + chunk])
        given = max(given, min(len(events), start + chunk))
    verifier.commands_done()
    verifier.record(events[given:])
    return verifier.finish()


def _renumber(events: Sequence[Rec]) -> list[Rec]:
    return [Rec(i, r.key, r.value) for i, r in enumerate(events)]


@pytest.fixture
def recorded() -> tuple[list[Rec], list[Rec], PartitionSummary]:
    log = _log(_commands())
    events, summary = _worker(log)
    return log, events, summary


@pytest.fixture(params=[1_000, 2], ids=["lookahead-1000", "lookahead-2"])
def lookahead(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> int:
    """Both ways of meeting the recorded facts: all re-decided first, or two ahead at most."""
    monkeypatch.setattr(redecide, "LOOKAHEAD_FACTS", request.param)
    return int(request.param)


def test_the_worker_s_own_log_is_equal(recorded: tuple[list[Rec], list[Rec], PartitionSummary],
                                       lookahead: int) -> None:  # fmt: skip
    log, events, summary = recorded
    result = _verify(log, events, summary)
    facts = len(events) - 1
    assert (result.commands, result.set_aside, result.facts) == (len(_commands()), 1, facts)
    assert (result.equal, result.duplicates, result.differences) == (facts, 0, 0)
    assert result.undecided_commands == result.undecided_facts == 0
    assert result.mine == result.workers == summary
    assert result.mine is not None and result.mine.publishers  # the partials were folded


def test_a_changed_byte_is_named_with_both_versions(
    recorded: tuple[list[Rec], list[Rec], PartitionSummary], lookahead: int
) -> None:
    log, events, summary = recorded
    target = next(i for i, r in enumerate(events) if r.value and b'"amount_cents":1200' in r.value)
    forged = events[target].value.replace(b'"amount_cents":1200', b'"amount_cents":1201')  # type: ignore[union-attr]
    events[target] = Rec(target, events[target].key, forged)
    result = _verify(log, events, summary)
    assert (result.differences, dict(result.kinds)) == (1, {"changed": 1})
    first = result.first[0]
    assert (first.kind, first.offset, first.command_offset) == ("changed", target, 5 + R)
    assert first.fields == ("amount_cents", "postings")  # the fact's and its posting's
    assert '"amount_cents":1200' in (first.expected or "")
    assert '"amount_cents":1201' in (first.recorded or "")
    assert result.equal == len(events) - 2
    assert "changed fact at ledger.events[0]@" in first.describe()


def test_a_missing_fact_is_named_by_its_command(
    recorded: tuple[list[Rec], list[Rec], PartitionSummary], lookahead: int
) -> None:
    log, events, summary = recorded
    gone = 3 + R  # the fact of the command at offset 3 + R (the first purchase)
    events = _renumber(events[:gone] + events[gone + 1 :])
    result = _verify(log, events, summary)
    assert (result.differences, dict(result.kinds)) == (1, {"missing": 1})
    first = result.first[0]
    assert (first.kind, first.offset, first.command_offset) == ("missing", None, 3 + R)
    assert first.recorded == f"(missing before ledger.events@{3 + R})"
    assert result.equal == len(events) - 1 and result.undecided_facts == 0


def test_an_extra_fact_is_named_by_its_offset(
    recorded: tuple[list[Rec], list[Rec], PartitionSummary], lookahead: int
) -> None:
    log, events, summary = recorded
    forged_value = events[3 + R].value.replace(b"pv-1", b"pv-forged")  # type: ignore[union-attr]
    events = _renumber([*events[: 5 + R], Rec(0, b"acct-v1", forged_value), *events[5 + R :]])
    result = _verify(log, events, summary)
    assert (result.differences, dict(result.kinds)) == (1, {"extra": 1})
    first = result.first[0]
    assert (first.kind, first.offset, first.command_offset, first.expected) == (
        "extra",
        5 + R,
        None,
        None,
    )
    assert "pv-forged" in (first.recorded or "")
    assert result.equal == len(events) - 2


def test_an_extra_fact_at_the_end_is_named(
    recorded: tuple[list[Rec], list[Rec], PartitionSummary], lookahead: int
) -> None:
    log, events, summary = recorded
    events = _renumber([*events, Rec(0, b"acct-v1", b'{"type": "forged"}')])
    result = _verify(log, events, summary)
    assert [(d.kind, d.offset) for d in result.first] == [("extra", len(events) - 1)]


def test_identical_facts_emitted_again_after_a_crash_are_duplicates_not_differences(
    recorded: tuple[list[Rec], list[Rec], PartitionSummary], lookahead: int
) -> None:
    log, events, summary = recorded
    # the worker emitted the facts of commands 3..5, crashed before its summary, emitted them again
    events = _renumber([*events[:6], *events[3:6], *events[6:]])
    result = _verify(log, events, summary)
    assert (result.duplicates, result.differences) == (3, 0)
    assert result.equal == len(events) - 1 - 3


def test_a_tail_not_decided_yet_is_told_apart_from_a_difference(
    recorded: tuple[list[Rec], list[Rec], PartitionSummary], lookahead: int
) -> None:
    log, events, _ = recorded
    decided = 6  # the workers' summary: commands below offset 6 decided
    behind, behind_summary = _worker(log[:decided])
    result = _verify(log, behind, behind_summary)
    assert result.differences == 0
    assert result.undecided_facts == len(events) - len(behind)
    assert result.undecided_commands == len(log) - decided
    assert result.mine == behind_summary  # the partials compared where the workers are

    # The same facts missing while the summary says their commands were decided: missing.
    _, whole_summary = _worker(log)
    lost = _verify(log, behind, whole_summary)
    assert lost.kinds["missing"] == len(events) - len(behind) and lost.undecided_facts == 0


def test_balances_that_differ_from_the_workers_name_the_party(
    recorded: tuple[list[Rec], list[Rec], PartitionSummary],
) -> None:
    log, events, summary = recorded
    theirs = decode_summary(encode_summary(summary))
    theirs.publishers["canalplay"].gross_cents += 1
    result = _verify(log, events, theirs)
    assert result.mine is not None and result.differences == 0
    lines = balances_differ("publisher", result.mine.publishers, theirs.publishers)
    assert len(lines) == 1 and lines[0].startswith("publisher canalplay: re-decided purchases 2,")
    assert not balances_differ("isp", result.mine.isps, theirs.isps)


def test_the_postgresql_balances_are_folded_per_party_and_an_account_that_differs_is_named(
    recorded: tuple[list[Rec], list[Rec], PartitionSummary],
) -> None:
    log, events, summary = recorded
    # acct-v1: purchases 499 and 266, a refund of 200; acct-v2: 1200. The retry counts once.
    right = {"acct-v1": (2, 1, 499 + 266 - 200, 499 + 266, 200), "acct-v2": (1, 0, 1200, 1200, 0)}
    result = _verify(log, events, summary, projected=len(events), accounts=right)
    assert result.accounts_differing == 0, result.accounts
    assert result.parties[("publisher", "canalplay")][:3] == (2, 1, 499 + 1200 - 200)
    wrong = {**right, "acct-v2": (1, 0, 1201, 1201, 0), "acct-ghost": (1, 0, 1, 1, 0)}
    result = _verify(log, events, summary, projected=len(events), accounts=wrong)
    assert result.accounts_differing == 2
    assert result.accounts[1].startswith("account acct-v2: re-decided")
    # Facts PostgreSQL has not applied yet are not counted.
    result = _verify(log, events, summary, projected=1, accounts={})
    assert result.accounts_differing == 0 and not result.parties


def test_the_report_and_the_json_name_the_first_difference_and_the_rate(
    recorded: tuple[list[Rec], list[Rec], PartitionSummary],
) -> None:
    from projections.verify import VerifyResult, report

    log, events, summary = recorded
    equal = VerifyResult([_verify(log, events, summary)], seconds=2.0)
    lines: list[str] = []
    report(equal, lines.append)
    facts = 9 + R
    assert lines[0].startswith(
        f"re-decided {len(_commands())} commands (1 set aside) into {facts} facts"
    )
    assert lines[0].endswith(f"in 2.0 s: {facts // 2} events/s")
    assert lines[-1] == "verify: the log re-decides to the same facts and balances"
    assert equal.equal and equal.as_json()["first_difference"] is None

    forged = _renumber([*events, Rec(0, b"acct-v1", b'{"event_id": "forged"}')])
    different = VerifyResult([_verify(log, forged, summary)], seconds=1.0)
    lines = []
    report(different, lines.append)
    assert "DIFFERENT facts (1 extra); the first:" in lines
    assert f"  extra fact at ledger.events[0]@{len(events)}" in lines
    assert lines[-1] == "verify: DIFFERENCES found"
    found = different.as_json()
    assert not found["equal"] and found["differences_by_kind"] == {"changed": 0, "missing": 0,
                                                                   "extra": 1}  # fmt: skip
    assert found["first_difference"]["events_offset"] == len(events)
