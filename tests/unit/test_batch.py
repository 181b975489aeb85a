"""The authorizer a batch at a time (ledger/core/batch.py) against the core one command at a time
(LocalAuthorizer, the oracle): the same facts, byte for byte, however the commands are cut into
batches; partial balances that sum to the balances folded from those facts (tests.harness); and a
crash between any two writes of a batch, replayed, changes neither."""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from random import Random
from typing import Any

import msgspec
from hypothesis import given
from hypothesis import strategies as st

from ledger.core.authorizer import Policy
from ledger.core.balances import Balance
from ledger.core.batch import (
    LimitsCache,
    PartitionBatch,
    PartitionSummary,
    decide_batch,
    decode_summary,
    encode_summary,
    reference_key,
    sum_balances,
    summary_key,
)
from ledger.core.reference import PartitionReference, decode_reference, encode_reference
from ledger.core.runner import LocalAuthorizer
from ledger.core.state import AccountState, decode_account, encode_state
from ledger.kafka.partitioning import partition_for
from schemas import codec
from schemas.commands import Command, PeriodCloseRequested
from schemas.facts import Fact, PeriodClosed, PurchaseAuthorized
from tests import builders as b
from tests.builders import REFERENCE, T0, at
from tests.harness import fold_balances
from tests.unit.test_properties import HORIZON, _commands, busy_history, fast, history

POLICY = Policy(horizon_seconds=HORIZON)
PARTITIONS = 3

Log = list[tuple[int, Command | None]]  # one partition of ledger.commands: offset, command
Emitted = list[tuple[str, bytes]]  # what went to ledger.events: message key, encoded fact


def _key(command: Command) -> str:
    return command.isp_id if isinstance(command, PeriodCloseRequested) else command.account_id


def _logs(commands: Sequence[Command], partitions: int, rnd: Random) -> dict[int, Log]:
    """Each command on its account's partition (a close on every partition, as the API sends it),
    at consecutive offsets from a random log start, now and then an undecodable record (None)."""
    logs: dict[int, Log] = {number: [] for number in range(partitions)}
    ends = {number: rnd.randrange(3) for number in range(partitions)}

    def put(number: int, command: Command | None) -> None:
        logs[number].append((ends[number], command))
        ends[number] += 1

    for command in commands:
        if rnd.random() < 0.05:
            put(rnd.randrange(partitions), None)
        if isinstance(command, PeriodCloseRequested):
            for number in range(partitions):
                copy = msgspec.structs.replace(command, partition=number, partitions=partitions)
                put(number, copy)
        else:
            put(partition_for(command.account_id, partitions), command)
    return logs


def _cut(log: Log, rnd: Random) -> list[Log]:
    """The log cut into batches of random sizes: single commands, small and large batches."""
    batches: list[Log] = []
    start = 0
    while start < len(log):
        size = rnd.choice((1, 1, 2, 3, 7, 20, 1_000))
        batches.append(log[start : start + size])
        start += size
    return batches


@dataclass
class Oracle:
    """The partition decided one command at a time, with origin = the command's offset."""

    ledger: LocalAuthorizer
    facts: list[tuple[int, str, Fact]]  # offset, key, fact
    decided_through: dict[str, int]  # account → the offset of its last command with a state

    @classmethod
    def of(cls, log: Log) -> Oracle:
        ledger = LocalAuthorizer(REFERENCE, POLICY)
        facts: list[tuple[int, str, Fact]] = []
        decided_through: dict[str, int] = {}
        for offset, command in log:
            if command is None:
                continue
            facts += [(offset, _key(command), f) for f in ledger.handle(command, origin=offset)]
            account = None if isinstance(command, PeriodCloseRequested) else command.account_id
            if account is not None and account in ledger.states:
                decided_through[account] = offset
        return cls(ledger, facts, decided_through)

    def emitted(self, offsets: Collection[int] | None = None) -> Emitted:
        return [
            (key, codec.encode(fact))
            for offset, key, fact in self.facts
            if offsets is None or offset in offsets
        ]

    def states(self) -> dict[str, AccountState]:
        return {
            account: msgspec.structs.replace(state, decided_through=self.decided_through[account])
            for account, state in self.ledger.states.items()
        }


@dataclass
class Worker:
    """One partition as a stream worker keeps it: the local store (encoded account states and the
    summary, as streams/authorizer.py writes them) and what it emitted to ledger.events."""

    partition: int
    store: dict[bytes, bytes] = field(default_factory=dict)
    emitted: Emitted = field(default_factory=list)
    limits_cache: LimitsCache = field(default_factory=dict)

    def summary(self) -> PartitionSummary:
        return decode_summary(self.store.get(summary_key(self.partition)))

    def reference(self) -> PartitionReference:
        raw = self.store.get(reference_key(self.partition))
        return PartitionReference.of(REFERENCE) if raw is None else decode_reference(raw)

    def load(self, account_id: str) -> AccountState | None:
        raw = self.store.get(account_id.encode())
        return None if raw is None else decode_account(raw)

    def states(self) -> dict[str, AccountState]:
        """The stored states, less `batch_money` (the money of the batch that wrote each: it
        depends on where the batches were cut; the crash tests prove what it is for)."""
        own = {summary_key(self.partition), reference_key(self.partition)}
        return {
            k.decode(): msgspec.structs.replace(decode_account(v), batch_money=[])
            for k, v in self.store.items()
            if k not in own
        }

    def decide(self, commands: Log) -> PartitionBatch:
        return decide_batch(
            self.partition, self.summary(), commands, self.load, self.reference(), POLICY,
            self.limits_cache,
        )  # fmt: skip

    def write(
        self, batch: PartitionBatch, states_written: int | None = None, summary: bool = True
    ) -> None:
        """The batch's writes in the worker's order: facts, states, summary. A crash is a write
        cut short: the first `states_written` states only (None: all), the summary or not."""
        self.emitted += [(key, codec.encode(fact)) for key, fact in batch.facts]
        if batch.reference is not None:
            self.store[reference_key(self.partition)] = encode_reference(batch.reference)
        for account_id, state in list(batch.states.items())[:states_written]:
            self.store[account_id.encode()] = encode_state(state)
        if summary:
            self.store[summary_key(self.partition)] = encode_summary(batch.summary)

    def run(self, commands: Log) -> PartitionBatch:
        batch = self.decide(commands)
        self.write(batch)
        return batch


def _balances(facts: Sequence[Fact], partitions: int) -> tuple[dict[str, Balance], ...]:
    return fold_balances(facts, "publisher", partitions), fold_balances(facts, "isp", partitions)


# --- the oracle ------------------------------------------------------------------------------


@fast
@given(history | busy_history, st.randoms(use_true_random=False))
def test_batches_decide_as_one_command_at_a_time(steps: list[tuple[Any, ...]], rnd: Any) -> None:
    logs = _logs(_commands(steps), PARTITIONS, rnd)
    summaries: list[PartitionSummary] = []
    all_facts: list[Fact] = []
    folded = 0
    for partition, log in logs.items():
        oracle = Oracle.of(log)
        worker = Worker(partition)
        for commands in _cut(log, rnd):
            batch = worker.run(commands)
            assert (batch.redelivered, batch.already_applied) == (0, 0)
            folded += batch.folded
        assert worker.emitted == oracle.emitted()
        assert worker.states() == oracle.states()
        summary = worker.summary()
        assert summary.next_offset == (log[-1][0] + 1 if log else 0)
        assert summary.closed == oracle.ledger.closed
        summaries.append(summary)
        all_facts += [fact for _, _, fact in oracle.facts]
    publishers, isps = _balances(all_facts, PARTITIONS)
    assert sum_balances(s.publishers for s in summaries) == publishers
    assert sum_balances(s.isps for s in summaries) == isps
    assert folded == sum(balance.purchases + balance.refunds for balance in publishers.values())


# --- crashes ---------------------------------------------------------------------------------

CRASHES = ("before_states", "some_states", "all_states", "after_summary")


@fast
@given(history | busy_history, st.randoms(use_true_random=False), st.sampled_from(CRASHES))
def test_a_crash_between_the_writes_of_a_batch_changes_nothing(
    steps: list[tuple[Any, ...]], rnd: Any, crash: str
) -> None:
    (log,) = _logs(_commands(steps), 1, rnd).values()
    oracle = Oracle.of(log)
    batches = _cut(log, rnd)
    crashed_at = rnd.randrange(len(batches))
    worker = Worker(0)
    for commands in batches[:crashed_at]:
        worker.run(commands)

    # The batch that crashes: its facts were sent, then some of its writes never happened.
    crashed = worker.decide(batches[crashed_at])
    states = len(crashed.states)
    written = {"before_states": 0, "some_states": rnd.randint(0, states)}.get(crash, states)
    worker.write(crashed, written, summary=crash == "after_summary")
    held = set(list(crashed.states)[:written])  # accounts whose state holds their commands
    restart_at = worker.summary().next_offset
    sent_before_restart = len(worker.emitted)

    # The restart: the fetch resumes from the group's committed offset, at or before the summary
    # (or from the log's start).
    resume = rnd.randint(log[0][0], max(log[0][0], restart_at))
    replay = [record for record in log if record[0] >= resume]
    redelivered = already_applied = 0
    for commands in _cut(replay, rnd):
        batch = worker.run(commands)
        redelivered += batch.redelivered
        already_applied += batch.already_applied

    def holds(command: Command | None) -> bool:
        return crash == "after_summary" or (
            command is not None
            and not isinstance(command, PeriodCloseRequested)
            and command.account_id in held
        )

    again = {offset for offset, command in batches[crashed_at] if not holds(command)}
    later = {offset for offset, _ in log if offset > batches[crashed_at][-1][0]}
    # Nothing re-emitted for a command an account's state holds; anything else byte-identical.
    assert worker.emitted[sent_before_restart:] == oracle.emitted(again | later)
    assert redelivered == sum(1 for offset, _ in replay if offset < restart_at)
    if crash != "after_summary":
        assert already_applied == sum(1 for _, command in batches[crashed_at] if holds(command))
    # And the partition ends as if nothing had happened.
    assert worker.states() == oracle.states()
    summary = worker.summary()
    publishers, isps = _balances([fact for _, _, fact in oracle.facts], 1)
    assert (summary.publishers, summary.isps) == (publishers, isps)
    assert summary.closed == oracle.ledger.closed
    assert summary.next_offset == log[-1][0] + 1


# --- the rules one at a time -----------------------------------------------------------------


def _partition_zero(*commands: Command | None, start: int = 0) -> Log:
    return [(start + index, command) for index, command in enumerate(commands)]


def test_commands_below_the_next_offset_are_skipped_as_redelivered() -> None:
    worker = Worker(0)
    log = _partition_zero(b.open_account("acct"), b.purchase("acct", 266, purchase_id="p1"))
    worker.run(log)
    sent = list(worker.emitted)
    again = worker.run([*log, (2, b.purchase("acct", 300, at(5), purchase_id="p2"))])
    assert (again.redelivered, again.already_applied, again.folded) == (2, 0, 1)
    ((_, fact),) = again.facts
    assert isinstance(fact, PurchaseAuthorized) and (fact.purchase_id, fact.origin) == ("p2", 2)
    assert worker.emitted[: len(sent)] == sent
    assert worker.summary().next_offset == 3


def test_undecodable_records_only_move_the_partition_on() -> None:
    worker = Worker(0)
    batch = worker.run([(4, None), (5, None)])
    assert (batch.facts, batch.states, batch.folded, batch.redelivered) == ([], {}, 0, 0)
    assert worker.summary() == PartitionSummary(next_offset=6)
    batch = worker.run([(5, None), (6, b.open_account("acct")), (7, None)])
    assert batch.redelivered == 1 and len(batch.facts) == 1
    assert worker.summary().next_offset == 8
    assert worker.states()["acct"].decided_through == 6


def test_a_close_in_a_batch_bills_the_later_purchases_of_that_batch_late() -> None:
    log = _partition_zero(
        b.open_account("acct"),
        b.purchase("acct", 266, at(days=10), purchase_id="in-march"),
        b.close("orange", "2006-03", at(days=31), command_id="close-march"),
        b.purchase("acct", 500, at(days=30), purchase_id="late-for-march"),
        b.purchase("acct", 300, at(days=32), purchase_id="in-april"),
    )
    worker = Worker(0)
    batch = worker.run(log)
    assert worker.emitted == Oracle.of(log).emitted()
    periods = {
        fact.purchase_id: (fact.billing_period, fact.late_for_period)
        for _, fact in batch.facts
        if isinstance(fact, PurchaseAuthorized)
    }
    assert periods == {
        "in-march": ("2006-03", None),
        "late-for-march": ("2006-04", "2006-03"),
        "in-april": ("2006-04", None),
    }
    assert isinstance(batch.facts[2][1], PeriodClosed) and batch.facts[2][0] == "orange"
    assert "2006-03" in batch.summary.closed.of("orange")


def test_a_state_that_holds_a_command_folds_its_money_without_emitting_it() -> None:
    # The crash of the docstring by hand: the state of the batch written, its summary lost.
    log = _partition_zero(
        b.open_account("acct"),
        b.purchase("acct", 266, purchase_id="p1"),
        b.refund("acct", "p1", 100, at(3), refund_id="r1"),
    )
    worker = Worker(0)
    crashed = worker.decide(log)
    worker.write(crashed, summary=False)
    replayed = worker.run(log)
    assert (replayed.facts, replayed.already_applied, replayed.folded) == ([], 3, 2)
    publishers, isps = _balances([fact for _, fact in crashed.facts], 1)
    assert worker.summary().publishers == publishers
    assert publishers["canalplay"].refunds == 1
    assert worker.summary().isps == isps


def test_a_held_purchase_whose_memo_a_later_command_pruned_is_still_counted() -> None:
    # One batch: a purchase, then a command of the same account past the horizon (here a rejected
    # purchase, 22 days on with a 20-day horizon; 90 days with the default one). Its state is
    # written, then the worker dies before the summary. The replay finds the state holding the
    # purchase (decided_through); its memo is gone (pruned by the later command), its money is not:
    # the state keeps the money of the batch that wrote it. The crash-free partials count it.
    log = _partition_zero(
        b.open_account("acct"),
        b.purchase("acct", 266, purchase_id="p1"),
        b.purchase("acct", 2_000, at(days=22), purchase_id="p2"),  # above the maximum
    )
    worker = Worker(0)
    crashed = worker.decide(log)
    worker.write(crashed, summary=False)
    replayed = worker.run(log)
    assert (replayed.facts, replayed.already_applied) == ([], 3)
    publishers, isps = _balances([fact for _, fact in crashed.facts], 1)
    assert publishers["canalplay"].purchases == 1
    assert (worker.summary().publishers, worker.summary().isps) == (publishers, isps)


# --- encodings -------------------------------------------------------------------------------


def test_a_summary_round_trips() -> None:
    worker = Worker(2)
    worker.run(
        _partition_zero(
            b.open_account("acct"),
            b.purchase("acct", 266, purchase_id="p1"),
            b.purchase("acct", 999, at(2), purchase_id="p2", publisher_id="lemonde-archives"),
            b.close("orange", "2006-02", at(1), partition=2, partitions=3),
            start=40,
        )
    )
    summary = worker.summary()
    assert summary.next_offset == 44
    assert set(summary.publishers) == {"canalplay", "lemonde-archives"}
    assert summary.closed.of("orange")
    assert summary.publishers["canalplay"].applied_through == {2: 41}
    assert decode_summary(encode_summary(summary)) == summary
    assert decode_summary(None) == PartitionSummary()
    assert summary_key(2) != summary_key(12) and summary_key(2).startswith(b"\x00")


# An account state as encoded before `decided_through` existed (ledger/core/state.py at commit
# 2ceb7a0): an array of 20 fields, one purchase remembered.
STATE_BEFORE_DECIDED_THROUGH = bytes.fromhex(
    "dc0014a461636374a66f72616e6765a8636f6e73756d6572c0a466666666ce440570a090908081aa323030362d"
    "30332d3031cd010a81a7323030362d3033cd010a808081a27031dc0010a26162ce440570dcc3c0cd010a00cd07"
    "a8cd05dccd1770aa323030362d30332d3031a7323030362d3033a7323030362d3033c0a27531a963616e616c70"
    "6c61790180ce440570dc00cd010a0100"
)


def test_a_state_encoded_before_decided_through_decodes_with_minus_one() -> None:
    state = decode_account(STATE_BEFORE_DECIDED_THROUGH)
    assert state.decided_through == -1
    assert (state.account_id, state.owed_cents, state.purchases_authorized) == ("acct", 266, 1)
    assert state.purchases["p1"].origin == 1
    assert state.watermark_seconds == int((T0 + timedelta(minutes=1)).timestamp())
    assert state.batch_money == []
    # Encoded again, it gains the fields added since at the end (decided_through, batch_money,
    # then holds and attempts: issue 14) and nothing else moves.
    again = msgspec.msgpack.decode(encode_state(state))
    assert again[20:24] == [-1, [], {}, []]
    assert again[:20] == msgspec.msgpack.decode(STATE_BEFORE_DECIDED_THROUGH)
    # An old state holds no command: the next one at any offset is decided, not skipped.
    worker = Worker(0)
    worker.store[b"acct"] = STATE_BEFORE_DECIDED_THROUGH
    batch = worker.run([(0, b.purchase("acct", 266, at(5), purchase_id="p2"))])
    assert batch.already_applied == 0 and len(batch.facts) == 1
    assert worker.states()["acct"].decided_through == 0
