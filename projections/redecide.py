"""`ledger verify`'s pure part: one partition of ledger.commands re-decided from its start with the
worker's own batch code (ledger/core/batch.py), each fact encoded as the worker encodes it, and
compared with the facts recorded on the same partition of ledger.events, key and value, byte for
byte. No broker and no database here: projections/verify.py reads the topics and hands the records
over in chunks, so that this is tested on lists in memory (tests/unit/test_verify.py).

What a recorded fact can be, against the next re-decided one:
- **equal**: the same key and the same bytes;
- **duplicate**: the same bytes as a fact already matched under the same event id. A worker that
  crashed after emitting a batch's facts and before writing its summary emits them again
  (ledger/core/batch.py): identical copies, which every reader counts once. Not a difference;
- **changed**: another version of the fact expected here (same event id, other bytes);
- **extra**: a fact the re-decision does not produce here (forged, or decided differently);
- **missing**: a re-decided fact that is not on ledger.events, although a later one is, or although
  the workers' summary says its command was decided.
A re-decided fact that the recorded facts end before, of a command the workers had not decided
(at or past their summary's `next_offset`, read before the topics' ends), is **not decided yet**:
the workers are behind, which is no difference.

The money facts are folded as they are matched: into the partition's partial balances, exactly as
the worker folds them (the summary's partials, captured at the workers' summary's `next_offset`),
and per party of their postings, as the projection writer counts them in PostgreSQL (only the
facts below the offset it has stored, duplicates once).
"""

from __future__ import annotations

from collections import Counter, deque
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import NamedTuple, Protocol

import msgspec

from ledger.core.authorizer import Policy
from ledger.core.balances import Balance
from ledger.core.batch import (
    LimitsCache,
    PartitionSummary,
    decide_batch,
    decode_summary,
    encode_summary,
)
from ledger.core.reference import PartitionReference
from ledger.core.state import AccountState, decode_account, encode_state
from ledger.kafka import topics
from ledger.kafka.routing import misrouted
from schemas import codec
from schemas.commands import Command
from schemas.facts import Fact, PurchaseAuthorized, PurchaseRefunded

# A re-decided fact is compared once this many more are waiting behind it (or the commands are
# all decided): a recorded fact that is not the next one is looked for that far ahead, to tell a
# missing fact (found further on) from an extra one.
LOOKAHEAD_FACTS = 1_000
# Facts matched recently, by event id, to recognise a crash's identical re-emission. A worker
# emits a batch of at most 10,000 commands (ledger.kafka.settings.FETCH_RECORDS_MAX) again after a
# crash; two generations of this many facts keep the last 100,000 at least.
DUPLICATE_WINDOW_FACTS = 100_000
DIFFERENCES_KEPT = 20  # per partition, the first ones, with both versions

Kind = str  # "changed" | "missing" | "extra"
KINDS: tuple[Kind, ...] = ("changed", "missing", "extra")
# (party, party_id) → [purchases, refunds, gross_cents, debits_cents, credits_cents], as the
# `balances` table of PostgreSQL counts them (projections/rows.py).
PartyKey = tuple[str, str]
PartyRow = tuple[int, int, int, int, int]


class KafkaRecord(Protocol):
    @property
    def offset(self) -> int: ...
    @property
    def key(self) -> bytes | None: ...
    @property
    def value(self) -> bytes | None: ...


class Expected(NamedTuple):
    """A re-decided fact, as the worker would emit it (a tuple: one is made per fact, and a frozen
    dataclass costs several times more to make)."""

    command_offset: int
    key: bytes
    value: bytes
    fact: Fact


@dataclass(frozen=True)
class Difference:
    kind: Kind
    partition: int
    offset: int | None  # on ledger.events (None: a missing fact)
    command_offset: int | None  # on ledger.commands (None: an extra fact)
    expected: str | None  # "key value" of the re-decided fact
    recorded: str | None  # "key value" of the recorded one
    fields: tuple[str, ...] = ()  # the fields that differ, for a changed fact

    def describe(self) -> str:
        where = f"ledger.events[{self.partition}]"
        where += f"@{self.offset}" if self.offset is not None else " (not there)"
        if self.command_offset is not None:
            where += f", decided for ledger.commands[{self.partition}]@{self.command_offset}"
        lines = [f"{self.kind} fact at {where}"]
        if self.fields:
            lines.append(f"  fields that differ: {', '.join(self.fields)}")
        lines.append(f"  re-decided: {self.expected if self.expected is not None else '(none)'}")
        lines.append(f"  recorded:   {self.recorded if self.recorded is not None else '(none)'}")
        return "\n".join(lines)


@dataclass
class PartitionResult:
    partition: int
    commands: int = 0  # commands re-decided (markers and commands set aside left out)
    set_aside: int = 0  # undecodable or on the wrong partition: the worker dead-lettered them
    facts: int = 0  # facts re-decided
    recorded: int = 0  # facts read on ledger.events (markers left out)
    equal: int = 0
    duplicates: int = 0
    differences: int = 0
    kinds: Counter[Kind] = field(default_factory=Counter)
    undecided_facts: int = 0  # re-decided, not on ledger.events yet: the workers are behind
    undecided_commands: int = 0  # the commands from the first of those on
    first: list[Difference] = field(default_factory=list)
    # The partials as the re-decision has them where the workers' summary stopped, and the
    # workers' (both None when there is no summary to compare with).
    workers_offset: int = 0
    mine: PartitionSummary | None = None
    workers: PartitionSummary | None = None
    # The postings per party of the facts PostgreSQL has applied (below `projected_offset`),
    # accounts left out: they are compared here (`accounts`), the other parties over every
    # partition by the caller.
    projected_offset: int = 0
    parties: dict[PartyKey, PartyRow] = field(default_factory=dict)
    accounts: list[str] = field(default_factory=list)  # account balances that differ, described
    accounts_differing: int = 0

    def add(self, difference: Difference) -> None:
        self.differences += 1
        self.kinds[difference.kind] += 1
        if len(self.first) < DIFFERENCES_KEPT:
            self.first.append(difference)


def _text(key: bytes | None, value: bytes | None) -> str:
    shown = "(null)" if key is None else key.decode("utf-8", "backslashreplace")
    body = "(null)" if value is None else value.decode("utf-8", "backslashreplace")
    return f"key={shown} {body}"


def _event_id(value: bytes | None) -> str | None:
    """The event id a recorded fact carries, as written (None: not a fact)."""
    if value is None:
        return None
    try:
        found = msgspec.json.decode(value)
    except msgspec.DecodeError:
        return None
    event_id = found.get("event_id") if isinstance(found, dict) else None
    return event_id if isinstance(event_id, str) else None


def _fields(expected: bytes, recorded: bytes | None) -> tuple[str, ...]:
    try:
        a = msgspec.json.decode(expected)
        b = msgspec.json.decode(recorded or b"")
    except msgspec.DecodeError:
        return ()
    if not isinstance(a, dict) or not isinstance(b, dict):
        return ()
    return tuple(sorted(k for k in a.keys() | b.keys() if a.get(k) != b.get(k)))


class PartitionVerifier:
    """One partition: `decide` the commands chunk by chunk (in offset order, from the log's
    start), `record` the facts of ledger.events (in offset order) while `wants_records`, then
    `commands_done` and `finish` once the recorded facts are all given."""

    def __init__(
        self,
        partition: int,
        partitions: int,
        policy: Policy | None = None,
        workers: PartitionSummary | None = None,
        projected_offset: int = 0,
        projected_accounts: Mapping[str, PartyRow] | None = None,
    ) -> None:
        self.partition = partition
        self.partitions = partitions
        # The partition's reference data, from its own reference commands (issue 15).
        self._reference = PartitionReference()
        self._policy = policy or Policy()
        self._limits: LimitsCache = {}
        self.summary = PartitionSummary()
        self._states: dict[str, bytes] = {}  # the accounts' states, encoded as the worker's store
        self._expected: deque[Expected] = deque()
        self._recorded: deque[KafkaRecord] = deque()
        self._recent: dict[str, int] = {}  # event id → hash of (key, value), matched lately
        self._older: dict[str, int] = {}
        self._commands_done = False
        self._last_command_offset = -1
        self._workers = workers
        self._projected_accounts = projected_accounts
        self._folds: dict[PartyKey, list[int]] = {}
        self.result = PartitionResult(partition, projected_offset=projected_offset)
        if workers is not None:
            self.result.workers_offset = workers.next_offset
            self.result.workers = workers

    # -- the commands --------------------------------------------------------------------------

    def decide(self, records: Sequence[KafkaRecord]) -> None:
        """The next commands of the partition, in offset order."""
        if records:
            self._last_command_offset = records[-1].offset
        workers = self._workers
        if workers is not None and self.result.mine is None:
            cut = next((i for i, r in enumerate(records) if r.offset >= workers.next_offset), None)
            if cut is not None:
                self._decide(records[:cut])
                self._capture()
                records = records[cut:]
        self._decide(records)

    def _capture(self) -> None:
        # A copy: the summary moves on with the next commands.
        self.result.mine = decode_summary(encode_summary(self.summary))

    def _has_state(self, account_id: str) -> bool:
        return account_id in self._states

    def _load(self, account_id: str) -> AccountState | None:
        raw = self._states.get(account_id)
        return None if raw is None else decode_account(raw)

    def _decide(self, records: Sequence[KafkaRecord]) -> None:
        if not records:
            return
        result, partition = self.result, self.partition
        commands: list[tuple[int, Command | None]] = []
        for record in records:
            command: Command | None = None
            if not topics.is_marker(record.key):
                try:
                    command = codec.decode_command(record.value or b"")
                except codec.InvalidMessage:
                    result.set_aside += 1
                else:
                    if misrouted(command, partition, self.partitions, self._has_state):
                        result.set_aside += 1
                        command = None
                    else:
                        result.commands += 1
            commands.append((record.offset, command))
        batch = decide_batch(
            partition, self.summary, commands, self._load, self._reference, self._policy,
            self._limits,
        )  # fmt: skip
        if batch.reference is not None:
            self._reference = batch.reference
        states = self._states
        for account_id, state in batch.states.items():
            states[account_id] = encode_state(state)
        expected = self._expected
        encode = codec.encode
        for (key, fact), offset in zip(batch.facts, batch.offsets, strict=True):
            expected.append(Expected(offset, key.encode(), encode(fact), fact))
        result.facts += len(batch.facts)
        self._match()

    def commands_done(self) -> None:
        """Every command up to the end taken is decided."""
        self._commands_done = True
        if self._workers is not None and self.result.mine is None:
            self._capture()  # the workers' summary is at or past the last command
        self._match()

    # -- the recorded facts ----------------------------------------------------------------------

    def wants_records(self) -> bool:
        """Whether the comparison waits for recorded facts (rather than re-decided ones)."""
        waiting = len(self._expected)
        return waiting > LOOKAHEAD_FACTS or (self._commands_done and waiting > 0)

    def record(self, records: Iterable[KafkaRecord]) -> None:
        """The next facts of the partition on ledger.events, in offset order."""
        recorded = self._recorded
        for record in records:
            if not topics.is_marker(record.key):
                recorded.append(record)
        self._match()

    def _match(self) -> None:
        expected, recorded, result = self._expected, self._recorded, self.result
        projected = result.projected_offset
        while recorded and expected:
            if len(expected) <= LOOKAHEAD_FACTS and not self._commands_done:
                return  # not enough re-decided facts to look ahead
            want, got = expected[0], recorded[0]
            if got.value == want.value and got.key == want.key:
                recorded.popleft()
                expected.popleft()
                result.recorded += 1
                result.equal += 1
                self._remember(want)
                if got.offset < projected:
                    self._fold(want)
                continue
            self._mismatch(want, got)
        if self._commands_done and not expected:
            while recorded:  # nothing more is re-decided: duplicates or extra facts
                self._unexpected(recorded.popleft())

    def _remember(self, fact: Expected) -> None:
        recent = self._recent
        recent[fact.fact.event_id] = hash((fact.key, fact.value))
        if len(recent) >= DUPLICATE_WINDOW_FACTS:
            self._older, self._recent = recent, {}

    def _duplicate(self, event_id: str | None, record: KafkaRecord) -> bool:
        if event_id is None:
            return False
        seen = self._recent.get(event_id)
        if seen is None:
            seen = self._older.get(event_id)
        return seen is not None and seen == hash((record.key, record.value))

    def _unexpected(self, got: KafkaRecord) -> None:
        """A recorded fact with no re-decided fact to match it."""
        self.result.recorded += 1
        if self._duplicate(_event_id(got.value), got):
            self.result.duplicates += 1
            return
        self.result.add(Difference("extra", self.partition, got.offset, None, None,
                                   _text(got.key, got.value)))  # fmt: skip

    def _mismatch(self, want: Expected, got: KafkaRecord) -> None:
        expected, recorded, result = self._expected, self._recorded, self.result
        event_id = _event_id(got.value)
        if self._duplicate(event_id, got):
            recorded.popleft()
            result.recorded += 1
            result.duplicates += 1
            return
        if event_id is not None and event_id == want.fact.event_id:
            recorded.popleft()
            expected.popleft()
            result.recorded += 1
            result.add(Difference(
                "changed", self.partition, got.offset, want.command_offset,
                _text(want.key, want.value), _text(got.key, got.value),
                _fields(want.value, got.value),
            ))  # fmt: skip
            return
        ahead = None
        if event_id is not None:
            ahead = next((i for i in range(1, min(len(expected), LOOKAHEAD_FACTS + 1))
                          if expected[i].fact.event_id == event_id), None)  # fmt: skip
        if ahead is not None:  # the re-decided facts before it are not on the log
            for _ in range(ahead):
                self._missing(expected.popleft(), got.offset)
            return
        recorded.popleft()
        self._unexpected(got)

    def _missing(self, want: Expected, before: int | None) -> None:
        note = None if before is None else f"(missing before ledger.events@{before})"
        self.result.add(Difference("missing", self.partition, None, want.command_offset,
                                   _text(want.key, want.value), note))  # fmt: skip

    # -- the end -------------------------------------------------------------------------------

    def finish(self) -> PartitionResult:
        """Every recorded fact up to the end taken is given: what is left of the re-decided
        facts is missing (its command was decided, by the workers' summary) or not decided yet."""
        if not self._commands_done:
            self.commands_done()
        result, expected = self.result, self._expected
        decided_through = self._workers.next_offset if self._workers is not None else 0
        first_undecided: int | None = None
        while expected:
            want = expected.popleft()
            if want.command_offset < decided_through:
                self._missing(want, None)
                continue
            result.undecided_facts += 1
            if first_undecided is None:
                first_undecided = want.command_offset
        if first_undecided is not None:
            result.undecided_commands = self._last_command_offset + 1 - first_undecided
        self._compare_accounts()
        result.parties = {
            key: (row[0], row[1], row[2], row[3], row[4])
            for key, row in self._folds.items()
            if key[0] != "account"
        }
        return result

    # -- the balances --------------------------------------------------------------------------

    def _fold(self, want: Expected) -> None:
        """A fact PostgreSQL has applied, counted per party of its postings (projections/rows.py:
        each posting counts the fact once for its party, debits and credits apart). PostgreSQL
        applies an event id once: a money fact answered again (a client's retry) carries the
        origin of the command that first decided it, and is not counted again."""
        fact = want.fact
        if not isinstance(fact, PurchaseAuthorized | PurchaseRefunded):
            return
        if fact.origin != want.command_offset:
            return
        purchase = isinstance(fact, PurchaseAuthorized)
        gross = fact.amount_cents if purchase else -fact.amount_cents
        folds = self._folds
        for posting in fact.postings:
            row = folds.get((posting.party, posting.party_id))
            if row is None:
                row = folds[posting.party, posting.party_id] = [0, 0, 0, 0, 0]
            row[0 if purchase else 1] += 1
            row[2] += gross
            amount = posting.amount_cents
            if amount >= 0:
                row[3] += amount
            else:
                row[4] -= amount

    def _compare_accounts(self) -> None:
        found = self._projected_accounts
        if found is None:
            return
        result = self.result
        mine = {key[1]: tuple(row) for key, row in self._folds.items() if key[0] == "account"}
        for account_id in sorted(mine.keys() | found.keys()):
            ours, theirs = mine.get(account_id), found.get(account_id)
            if ours != theirs:
                result.accounts_differing += 1
                if len(result.accounts) < DIFFERENCES_KEPT:
                    result.accounts.append(
                        f"account {account_id}: re-decided (purchases, refunds, gross, debits,"
                        f" credits) {ours}, PostgreSQL {theirs}"
                    )


def balances_differ(
    party: str, mine: Mapping[str, Balance], workers: Mapping[str, Balance]
) -> list[str]:
    """Every party whose balance differs between the re-decision and the workers' tables,
    described with both values."""
    lines = []
    for party_id in sorted(mine.keys() | workers.keys()):
        ours, theirs = mine.get(party_id), workers.get(party_id)
        if ours != theirs:
            lines.append(
                f"{party} {party_id}: re-decided {_balance(ours)}, workers {_balance(theirs)}"
            )
    return lines


def _balance(balance: Balance | None) -> str:
    if balance is None:
        return "(none)"
    return (f"purchases {balance.purchases}, refunds {balance.refunds}, gross"
            f" {balance.gross_cents}, owed {balance.owed_cents}")  # fmt: skip


def parties_differ(
    mine: Mapping[PartyKey, PartyRow], found: Mapping[PartyKey, PartyRow]
) -> list[str]:
    """Every party (accounts aside) whose postings differ between the re-decision and PostgreSQL."""
    lines = []
    for key in sorted(mine.keys() | found.keys()):
        ours, theirs = mine.get(key), found.get(key)
        if ours != theirs:
            lines.append(f"{key[0]} {key[1]}: re-decided (purchases, refunds, gross, debits,"
                         f" credits) {ours}, PostgreSQL {theirs}")  # fmt: skip
    return lines
