"""`ledger verify`: every command of ledger.commands re-decided from offset 0 with the pure core,
in each partition's order, each fact compared with ledger.events byte for byte, then the balances
folded and compared with the workers' tables and with PostgreSQL (issue 15, part 2). The
comparison itself is pure: projections/redecide.py.

In this order, so that each thing compared was written before what it is compared with was
read: PostgreSQL's balances and the offsets its writer stored (one snapshot), the workers'
summaries (the accounts table's changelog), the ends of ledger.events, then of ledger.commands.
A fact on ledger.events below its end was decided from a command below the commands' end; a
command below a summary's `next_offset` has its facts on ledger.events; a fact PostgreSQL applied
is below the end taken.

Each partition is read with aiokafka, a chunk of commands at a time (the worker's batch path,
`decide_batch`, with the account states in memory), and the facts of the same partition of
ledger.events alongside. The partitions are shared among VERIFY_PROCESSES processes (forked, as
replay's), each partition in order; a partition's account states are dropped when it is done.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor, wait
from dataclasses import dataclass, field
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition

from ledger.core.batch import PartitionSummary, sum_balances
from ledger.errors import LedgerError
from ledger.kafka import topics
from ledger.kafka.partitioning import partition_for
from ledger.kafka.settings import aiokafka_reader_config
from projections.db import connect
from projections.progress import PROGRESS_SECONDS, Progress, partition_groups
from projections.redecide import (
    KINDS,
    Difference,
    PartitionResult,
    PartitionVerifier,
    PartyKey,
    PartyRow,
    balances_differ,
    parties_differ,
)

# Commands decided per call of decide_batch: the worker's batches are at most 10,000
# (FETCH_RECORDS_MAX); a larger chunk only spreads the per-call cost thinner.
CHUNK_COMMANDS_MAX = 20_000
FETCH_BYTES_MAX = 32 * 1024 * 1024  # as replay's reads: big fetches
POLL_TIMEOUT_MS = 500
STALL_SECONDS_MAX = 60.0  # no record for this long while some are due: the broker is gone
# Two cores on the development machine: each process decides its partitions on one (replay's
# measurement: one Python process leaves a core idle).
VERIFY_PROCESSES = 2
DIFFERENCES_SHOWN = 10


@dataclass
class Snapshot:
    """What the re-decision is compared with, read before the topics' ends."""

    partitions: int
    workers: dict[int, PartitionSummary]  # the workers' summaries (none: an empty one)
    projected: dict[int, int]  # ledger.events offsets PostgreSQL applied, per partition
    parties: dict[PartyKey, PartyRow]  # PostgreSQL's balances, accounts aside
    accounts: dict[int, dict[str, PartyRow]]  # PostgreSQL's account balances, per partition
    commands_end: dict[int, int] = field(default_factory=dict)
    events_end: dict[int, int] = field(default_factory=dict)


@dataclass
class VerifyResult:
    partitions: list[PartitionResult]
    seconds: float
    workers_differ: list[str] = field(default_factory=list)  # balances against the changelog
    postgres_differ: list[str] = field(default_factory=list)  # balances against PostgreSQL
    postgres_compared: bool = True
    postgres_differing: int = 0  # parties whose PostgreSQL balance differs (all, not only shown)

    def total(self, name: str) -> int:
        return sum(int(getattr(p, name)) for p in self.partitions)

    @property
    def differences(self) -> int:
        return self.total("differences")

    @property
    def equal(self) -> bool:
        return not self.differences and not self.workers_differ and not self.postgres_differ

    @property
    def events_per_second(self) -> float:
        return self.total("facts") / self.seconds if self.seconds > 0 else 0.0

    @property
    def first(self) -> Difference | None:
        """The first difference of the first partition that has one."""
        return next((p.first[0] for p in self.partitions if p.first), None)

    def as_json(self) -> dict[str, Any]:
        kinds = {k: sum(p.kinds[k] for p in self.partitions) for k in KINDS}
        first = self.first
        return {
            "equal": self.equal,
            "commands": self.total("commands"),
            "set_aside": self.total("set_aside"),
            "facts": self.total("facts"),
            "recorded": self.total("recorded"),
            "equal_facts": self.total("equal"),
            "duplicates": self.total("duplicates"),
            "differences": self.differences,
            "differences_by_kind": kinds,
            "undecided_facts": self.total("undecided_facts"),
            "undecided_commands": self.total("undecided_commands"),
            "seconds": round(self.seconds, 3),
            "events_per_second": round(self.events_per_second, 1),
            "first_difference": None if first is None else _difference_json(first),
            "differences_shown": [_difference_json(d) for p in self.partitions for d in p.first][
                :DIFFERENCES_SHOWN
            ],
            "workers_balances_differ": self.workers_differ,
            "postgres_balances_differ": self.postgres_differ,
            "postgres_compared": self.postgres_compared,
            "postgres_balances_differing": self.postgres_differing,
            "partitions": [_partition_json(p) for p in self.partitions],
        }


def _difference_json(d: Difference) -> dict[str, Any]:
    return {
        "kind": d.kind, "partition": d.partition, "events_offset": d.offset,
        "commands_offset": d.command_offset, "fields": list(d.fields),
        "re_decided": d.expected, "recorded": d.recorded,
    }  # fmt: skip


def _partition_json(p: PartitionResult) -> dict[str, Any]:
    names = ("commands", "set_aside", "facts", "recorded", "equal", "duplicates", "differences",
             "undecided_facts", "undecided_commands", "workers_offset", "projected_offset",
             "accounts_differing")  # fmt: skip
    return {"partition": p.partition, **{n: getattr(p, n) for n in names}}


# -- the snapshot ------------------------------------------------------------------------------


def _postgres(dsn: str, partitions: int) -> tuple[dict[int, int], dict[PartyKey, PartyRow],
                                                  dict[int, dict[str, PartyRow]]]:  # fmt: skip
    """PostgreSQL's balances and the offsets of ledger.events they cover, in one snapshot."""
    projected: dict[int, int] = {}
    parties: dict[PartyKey, PartyRow] = {}
    accounts: dict[int, dict[str, PartyRow]] = {p: {} for p in range(partitions)}
    with connect(dsn) as db:
        db.execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
        for p, offset in db.execute(
            "SELECT partition, next_offset FROM projection_offsets WHERE topic = %s",
            (topics.EVENTS,),
        ).fetchall():
            projected[int(p)] = int(offset)
        cursor = db.execute(
            "SELECT party, party_id, purchases, refunds, gross_cents, debits_cents, credits_cents"
            " FROM balances"
        )
        for party, party_id, *counts in cursor:
            row: PartyRow = (int(counts[0]), int(counts[1]), int(counts[2]), int(counts[3]),
                             int(counts[4]))  # fmt: skip
            if party == "account":
                accounts.setdefault(partition_for(party_id, partitions), {})[party_id] = row
            else:
                parties[party, party_id] = row
    return projected, parties, accounts


def _ends(bootstrap_servers: str, topic: str) -> dict[int, int]:
    from kafka import KafkaConsumer

    from ledger.kafka.partitions import end_offsets
    from ledger.kafka.settings import consumer_config

    consumer = KafkaConsumer(**consumer_config(bootstrap_servers, "ledger-verify", None))
    try:
        return {tp.partition: end for tp, end in end_offsets(consumer, topic).items()}
    finally:
        consumer.close()


def take_snapshot(
    bootstrap_servers: str, dsn: str | None, partitions: int,
    workers: Callable[[], dict[int, PartitionSummary]],
) -> Snapshot:  # fmt: skip
    """In the order the module's docstring gives (PostgreSQL left out when `dsn` is None)."""
    projected: dict[int, int] = {}
    parties: dict[PartyKey, PartyRow] = {}
    accounts: dict[int, dict[str, PartyRow]] = {}
    if dsn is not None:
        projected, parties, accounts = _postgres(dsn, partitions)
    summaries = workers()
    snapshot = Snapshot(partitions, summaries, projected, parties, accounts)
    snapshot.events_end = _ends(bootstrap_servers, topics.EVENTS)
    snapshot.commands_end = _ends(bootstrap_servers, topics.COMMANDS)
    return snapshot


# -- one partition -------------------------------------------------------------------------------


class _Reader:
    """One partition of a topic up to an end, a fetch at a time."""

    def __init__(self, consumer: AIOKafkaConsumer, topic: str, partition: int, end: int) -> None:
        self.consumer = consumer
        self.tp = TopicPartition(topic, partition)
        self.end = end
        self.position = 0

    @property
    def done(self) -> bool:
        return self.position >= self.end

    async def next(self) -> list[Any]:
        stalled_at = time.monotonic() + STALL_SECONDS_MAX
        while not self.done:
            fetched = await self.consumer.getmany(
                self.tp, timeout_ms=POLL_TIMEOUT_MS, max_records=CHUNK_COMMANDS_MAX
            )
            records = fetched.get(self.tp, [])
            if records:
                self.position = records[-1].offset + 1
                return [r for r in records if r.offset < self.end]
            if time.monotonic() > stalled_at:
                raise TimeoutError(f"{self.tp.topic}[{self.tp.partition}]: no record for"
                                   f" {STALL_SECONDS_MAX:.0f} s")  # fmt: skip
        return []


async def _verify_partition(
    consumer: AIOKafkaConsumer, verifier: PartitionVerifier, snapshot: Snapshot,
    done: Callable[[int], None],
) -> PartitionResult:  # fmt: skip
    p = verifier.partition
    commands = _Reader(consumer, topics.COMMANDS, p, snapshot.commands_end.get(p, 0))
    events = _Reader(consumer, topics.EVENTS, p, snapshot.events_end.get(p, 0))
    consumer.assign([commands.tp, events.tp])
    starts = await consumer.beginning_offsets([commands.tp, events.tp])
    for reader in (commands, events):
        if starts[reader.tp] > 0:
            raise LedgerError(
                f"{reader.tp.topic}[{p}] starts at offset {starts[reader.tp]}: its first records"
                " are deleted (retention), and verify re-decides the whole log from offset 0"
            )
        consumer.seek(reader.tp, 0)
    while not commands.done:
        chunk = await commands.next()
        verifier.decide(chunk)
        done(len(chunk))
        while verifier.wants_records() and not events.done:
            verifier.record(await events.next())
    verifier.commands_done()
    while not events.done:  # the rest: re-decided facts to match, then duplicates or extras
        verifier.record(await events.next())
    return verifier.finish()


# -- the processes -------------------------------------------------------------------------------

# What a forked child inherits from the parent (nothing of it is pickled): the snapshot and the
# shared count of commands done.
_inherited: dict[str, Any] = {}


async def _verify_group_async(bootstrap_servers: str, group: list[int]) -> list[PartitionResult]:
    snapshot: Snapshot = _inherited["snapshot"]
    counter = _inherited.get("counter")

    def done(count: int) -> None:
        if counter is not None:
            with counter.get_lock():
                counter.value += count

    consumer = AIOKafkaConsumer(
        **aiokafka_reader_config(
            bootstrap_servers, "ledger-verify", fetch_bytes_max=FETCH_BYTES_MAX
        )
    )
    await consumer.start()
    try:
        results = []
        for p in group:
            verifier = PartitionVerifier(
                p, snapshot.partitions,
                workers=snapshot.workers.get(p, PartitionSummary()),
                projected_offset=snapshot.projected.get(p, 0),
                projected_accounts=snapshot.accounts.get(p) if snapshot.accounts else None,
            )  # fmt: skip
            results.append(await _verify_partition(consumer, verifier, snapshot, done))
        return results
    finally:
        await consumer.stop()


def _verify_group(bootstrap_servers: str, group: list[int]) -> list[PartitionResult]:
    return asyncio.run(_verify_group_async(bootstrap_servers, group))


def _share(counter: Any) -> None:
    _inherited["counter"] = counter


def _compare_balances(result: VerifyResult, snapshot: Snapshot, with_postgres: bool) -> None:
    parts = result.partitions
    mine = [p.mine for p in parts if p.mine is not None]
    workers = [p.workers for p in parts if p.workers is not None]
    for party in ("publisher", "isp"):
        ours = sum_balances(s.publishers if party == "publisher" else s.isps for s in mine)
        theirs = sum_balances(s.publishers if party == "publisher" else s.isps for s in workers)
        result.workers_differ += balances_differ(party, ours, theirs)
    if not with_postgres:
        result.postgres_compared = False
        return
    folded: dict[PartyKey, list[int]] = {}
    for part in parts:
        for key, row in part.parties.items():
            into = folded.setdefault(key, [0, 0, 0, 0, 0])
            for i, n in enumerate(row):
                into[i] += n
    ours_pg = {k: (v[0], v[1], v[2], v[3], v[4]) for k, v in folded.items()}
    result.postgres_differ += parties_differ(ours_pg, snapshot.parties)
    result.postgres_differing = len(result.postgres_differ)
    for part in parts:
        result.postgres_differ += part.accounts
        result.postgres_differing += part.accounts_differing


def verify(
    bootstrap_servers: str,
    dsn: str | None,
    partitions: int,
    workers: Callable[[], dict[int, PartitionSummary]],
    progress: Progress | None = None,
    processes: int = VERIFY_PROCESSES,
) -> VerifyResult:
    """Re-decide every partition and compare; `dsn` None leaves PostgreSQL out. `workers` reads
    the workers' summaries, partition → summary (ledger.tables.read_summaries)."""
    started = time.perf_counter()
    snapshot = take_snapshot(bootstrap_servers, dsn, partitions, workers)
    _inherited["snapshot"] = snapshot
    to_do = sum(snapshot.commands_end.values())
    groups = partition_groups(partitions, max(1, processes))
    results: list[PartitionResult] = []
    try:
        if len(groups) == 1:
            results = _verify_group(bootstrap_servers, groups[0])
        else:
            results = _in_processes(bootstrap_servers, groups, progress, to_do)
    finally:
        _inherited.clear()
    results.sort(key=lambda r: r.partition)
    result = VerifyResult(results, time.perf_counter() - started)
    _compare_balances(result, snapshot, dsn is not None)
    if progress is not None:
        progress(to_do, to_do)
    return result


def _in_processes(
    bootstrap_servers: str, groups: list[list[int]], progress: Progress | None, to_do: int
) -> list[PartitionResult]:
    # fork: the children start with the snapshot in memory, unpickled.
    context = multiprocessing.get_context("fork")
    counter = context.Value("q", 0)
    results: list[PartitionResult] = []
    with ProcessPoolExecutor(
        len(groups), mp_context=context, initializer=_share, initargs=(counter,)
    ) as pool:
        futures = [pool.submit(_verify_group, bootstrap_servers, g) for g in groups]
        while wait(futures, timeout=PROGRESS_SECONDS).not_done:
            if progress is not None:
                progress(counter.value, to_do)
        for future in futures:  # a child's failure is raised here
            results += future.result()
    return results


def report(result: VerifyResult, out: Callable[[str], None] = print) -> None:
    """The summary, then the first difference with both versions, then the balances'."""
    out(
        f"re-decided {result.total('commands'):,} commands ({result.total('set_aside'):,} set"
        f" aside) into {result.total('facts'):,} facts in {result.seconds:.1f} s:"
        f" {result.events_per_second:,.0f} events/s"
    )
    out(
        f"  ledger.events: {result.total('recorded'):,} facts read, {result.total('equal'):,}"
        f" equal, {result.total('duplicates'):,} identical duplicates (re-emitted after a crash),"
        f" {result.differences:,} differences"
    )
    undecided = result.total("undecided_commands")
    facts = result.total("undecided_facts")
    if undecided or facts:
        out(f"  not decided yet by the workers: {undecided:,} commands ({facts:,} facts):"
            " compared up to where they are")  # fmt: skip
    first = result.first
    if first is not None:
        kinds = ", ".join(f"{n} {k}" for k in KINDS
                          if (n := sum(p.kinds[k] for p in result.partitions)))  # fmt: skip
        out(f"DIFFERENT facts ({kinds}); the first:")
        for line in first.describe().splitlines():
            out(f"  {line}")
    for title, lines in (("the workers' tables", result.workers_differ),
                         ("PostgreSQL", result.postgres_differ)):  # fmt: skip
        if lines:
            count = result.postgres_differing if title == "PostgreSQL" else len(lines)
            out(f"balances DIFFER from {title} ({count} parties); the first:")
            out(f"  {lines[0]}")
        elif title == "PostgreSQL" and not result.postgres_compared:
            out("balances not compared with PostgreSQL")
        else:
            out(f"balances equal {title}")
    out("verify: the log re-decides to the same facts and balances" if result.equal
        else "verify: DIFFERENCES found")  # fmt: skip


def observe(result: VerifyResult, finished_at: float) -> None:
    """The run's figures as Prometheus metrics (`ledger verify --every`)."""
    from projections import verify_metrics as m

    m.RUNS.labels("equal" if result.equal else "different").inc()
    m.LAST_RUN.set(finished_at)
    m.LAST_SUCCESS.set(finished_at)
    m.DIFFERENCES.labels("events").set(result.differences)
    m.DIFFERENCES.labels("workers").set(len(result.workers_differ))
    m.DIFFERENCES.labels("postgres").set(result.postgres_differing)
    m.FACTS.set(result.total("facts"))
    m.DUPLICATES.set(result.total("duplicates"))
    m.UNDECIDED.set(result.total("undecided_commands"))
    m.SECONDS.set(result.seconds)
    m.EVENTS_PER_SECOND.set(result.events_per_second)


def observe_failure(finished_at: float) -> None:
    from projections import verify_metrics as m

    m.RUNS.labels("failed").inc()
    m.LAST_RUN.set(finished_at)
