"""Benchmark of the stream on the real broker: how many decisions per second a worker sustains
(commands produced → facts on ledger.events), and the decision latency at half that rate.

Latency is measured from the moment the bench sent a command to the fact's record timestamp (set
by the worker's producer when it appended the fact): both on this machine's clock.

The bench's own clients are aiokafka's, and its hot paths are cheap, so that the bench is never
what is measured: kafka-python, before the `crc32c` package was a dependency, computed its CRC-32C
in pure Python and measured 8,400 records/s sent at ~110 µs of CPU a record, and 11,900 facts/s
read and decoded, against 146,000 records/s sent in aiokafka record batches (~3 µs a record) and
185,000 facts/s read by aiokafka with the two-field decode below (~5 µs a fact).
"""

from __future__ import annotations

import asyncio
import random
import statistics
import time
import uuid
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, NamedTuple

import msgspec

from ledger.bench import table
from ledger.kafka import settings, topics
from ledger.kafka.batches import send_batched
from ledger.kafka.groups import APP_ID
from ledger.kafka.partitioning import partition_for
from ledger.kafka.partitions import end_offsets
from ledger.produce import reference_commands
from schemas import codec
from schemas.commands import (
    AccountOpenRequested,
    Command,
    PartitionBarrier,
    PurchaseRequested,
    barrier_key,
)
from schemas.reference import (
    IspRegistered,
    PublisherRegistered,
    ReferenceRecord,
    reference_key,
)

POLL_MS = 200
BASKETS_CENTS = (99, 150, 199, 266, 299, 350, 499)
# The watcher's fetches: as the projection writer's (projections/writer.py), so a backlog of
# facts is read in a few large fetches.
WATCH_FETCH_BYTES_MAX = 32 * 1024 * 1024
WATCH_RECORDS_MAX = 20_000  # a getmany's records: a poll stays well under 100 ms of work
PENDING_SENDS_MAX = 10_000  # paced sends not yet acknowledged before we wait for them
PACE_SLEEP_SECONDS_MAX = 0.005  # closer to a send's due time than this: sleep, do not poll
IDLE_POLL_SECONDS = 0.2
PROBE_PREFIX = "probe"  # accounts that only check the workers read the run's reference data
PROBE_RETRY_SECONDS = 0.5
AUTHORIZED = "purchase.authorized.v1"


class Outgoing(NamedTuple):
    """A record ready to send: encoded and partitioned before any clock starts."""

    topic: str
    partition: int
    key: bytes
    value: bytes


def encode_commands(commands: Sequence[Command], partitions: int) -> list[Outgoing]:
    """As LedgerProducer.send_command keys and partitions them: by account, a close by its own
    partition."""
    out: list[Outgoing] = []
    for command in commands:
        if isinstance(command, PartitionBarrier):
            key, partition = barrier_key(command), command.partition
        else:
            key, partition = command.account_id, partition_for(command.account_id, partitions)
        out.append(Outgoing(topics.COMMANDS, partition, key.encode(), codec.encode(command)))
    return out


def encode_reference(records: Sequence[ReferenceRecord], partitions: int) -> list[Outgoing]:
    """As LedgerProducer.send_reference: each change to every partition of ledger.commands
    (issue 15), then the records to the compacted ledger.reference, keyed by entity."""
    changes = [c for r in records for c in reference_commands(r, partitions)]
    return encode_commands(changes, partitions) + [
        Outgoing(topics.REFERENCE, 0, reference_key(r).encode(), codec.encode(r)) for r in records
    ]


@dataclass(frozen=True)
class StreamFigures:
    accounts: int
    commands: int
    decisions_per_second: float
    paced_rate_per_second: float
    latency_p50_seconds: float
    latency_p99_seconds: float
    latency_max_seconds: float


def world(run: str, accounts: int) -> tuple[list[ReferenceRecord], list[Command]]:
    start = datetime.now(UTC) - timedelta(days=1)
    reference: list[ReferenceRecord] = [
        IspRegistered(isp_id=f"isp-{run}", name="Orange", billing_day=1, commission_bp=1500,
                      occurred_at=start),
        *[PublisherRegistered(publisher_id=f"pub{i}-{run}", name=f"P{i}", category="vod",
                              revenue_share_bp=6000, vat_category="standard", occurred_at=start)
          for i in range(20)],
    ]  # fmt: skip
    opens: list[Command] = [
        AccountOpenRequested(command_id=f"o{n}-{run}", account_id=f"a{n}-{run}",
                             isp_id=f"isp-{run}", kind="consumer", occurred_at=start)
        for n in range(accounts)
    ]  # fmt: skip
    return reference, opens


def purchases(run: str, accounts: int, count: int, seed: int, first: int = 0) -> list[Command]:
    rnd = random.Random(seed)
    now = datetime.now(UTC) - timedelta(hours=1)
    return [
        PurchaseRequested(
            purchase_id=f"p{first + i}-{run}", account_id=f"a{rnd.randrange(accounts)}-{run}",
            user_id="u", publisher_id=f"pub{rnd.randrange(20)}-{run}",
            amount_cents=rnd.choice(BASKETS_CENTS), category="vod", description="episode",
            occurred_at=now + timedelta(milliseconds=first + i),
        )
        for i in range(count)
    ]  # fmt: skip


class Sender:
    """The bench's producer (aiokafka, the ledger's delivery options): a backlog goes in record
    batches per partition, paced purchases one `send` each, never awaited one at a time."""

    def __init__(self, bootstrap_servers: str) -> None:
        from aiokafka import AIOKafkaProducer

        # Paced purchases stand for the checkout API's callers: lingered as the ledger's command
        # producer lingers (ledger/produce.py), so the latency compares with its figures.
        self._producer = AIOKafkaProducer(
            **settings.aiokafka_producer_config(
                bootstrap_servers, "ledger-bench", linger_ms=settings.PRODUCER_LINGER_MS
            )
        )
        self._pending: list[asyncio.Future[Any]] = []

    async def __aenter__(self) -> Sender:
        await self._producer.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._producer.stop()

    async def send_all(self, records: Sequence[Outgoing]) -> None:
        """Every record, in order per partition, and wait until the broker has them all."""
        await send_batched(self._producer, records)

    async def send(self, record: Outgoing) -> None:
        sent = await self._producer.send(
            record.topic, record.value, key=record.key, partition=record.partition
        )
        self._pending.append(sent)
        if len(self._pending) >= PENDING_SENDS_MAX:
            await self.flush()

    async def flush(self) -> None:
        pending, self._pending = self._pending, []
        await asyncio.gather(*pending)  # raises if the broker refused one


class _Seen(msgspec.Struct):
    """The two fields of a fact the bench needs; msgspec skips the rest without building it."""

    type: str = ""
    purchase_id: str | None = None
    account_id: str | None = None


_SEEN = msgspec.json.Decoder(_Seen)


class FactWatcher:
    """Reads ledger.events from now on and notes when each fact of this run was appended."""

    def __init__(self, bootstrap_servers: str, run: str, partitions: int) -> None:
        from aiokafka import AIOKafkaConsumer

        self._consumer = AIOKafkaConsumer(
            **settings.aiokafka_reader_config(
                bootstrap_servers, "ledger-bench",
                auto_offset_reset=settings.READER_OFFSET_RESET_LATEST,
                fetch_bytes_max=WATCH_FETCH_BYTES_MAX,
            )
        )  # fmt: skip
        self._marker = run.encode()
        self._partitions = partitions
        self.seen = 0  # facts of this run
        self.types: Counter[str] = Counter()  # of those, by message type
        self.decided_at_ms: dict[str, int] = {}  # purchase id → its fact's record timestamp
        self.last_fact_ms = 0  # the latest record timestamp of a fact of this run
        self.next_offsets: dict[int, int] = {}  # partition → after the last record read
        self.probes: dict[str, str] = {}  # probe account → the type of its fact

    async def __aenter__(self) -> FactWatcher:
        from aiokafka import TopicPartition

        await self._consumer.start()
        tps = [TopicPartition(topics.EVENTS, p) for p in range(self._partitions)]
        self._consumer.assign(tps)
        # From the end offsets as they are now, explicitly: seek_to_end resolves lazily and
        # would skip facts appended before the first fetch.
        for tp, offset in (await self._consumer.end_offsets(tps)).items():
            self._consumer.seek(tp, offset)
            self.next_offsets[tp.partition] = offset
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._consumer.stop()

    async def poll(self, timeout_ms: int = POLL_MS) -> None:
        fetched = await self._consumer.getmany(timeout_ms=timeout_ms, max_records=WATCH_RECORDS_MAX)
        marker, decode, decided = self._marker, _SEEN.decode, self.decided_at_ms
        for tp, records in fetched.items():
            self.next_offsets[tp.partition] = records[-1].offset + 1
            for record in records:
                value = record.value
                if value is None or marker not in value:
                    continue
                fact = decode(value)
                if fact.account_id is not None and fact.account_id.startswith(PROBE_PREFIX):
                    self.probes[fact.account_id] = fact.type
                self.types[fact.type] += 1
                # A purchase's fact emitted again (a worker taking over a partition re-decides
                # what the other had not committed) is counted once.
                if fact.purchase_id is None:
                    self.seen += 1
                elif fact.purchase_id not in decided:
                    self.seen += 1
                    decided[fact.purchase_id] = record.timestamp
                self.last_fact_ms = max(self.last_fact_ms, record.timestamp)

    async def wait_for(
        self, count: int, deadline_seconds: float, check: Callable[[], None] = lambda: None
    ) -> float:
        """Until `count` facts of this run are seen; `check` raises if what makes them died."""
        started = time.monotonic()
        while self.seen < count:
            if time.monotonic() - started > deadline_seconds:
                raise TimeoutError(f"{self.seen} of {count} facts after {deadline_seconds:.0f} s")
            check()
            await self.poll()
        return time.monotonic() - started


async def wait_for_reference(
    sender: Sender, watcher: FactWatcher, run: str, partitions: int, deadline_seconds: float
) -> None:
    """Until the worker of every partition decides with the run's ISP: a probe account opened on
    each partition is accepted, not rejected as isp_unknown (a rejected one is sent again under
    another id). Waiting a fixed 2 s was not enough for workers just started: a 2-worker bench saw
    2,130 of its 100,000 accounts rejected. The probes' ids do not end with the run's id, so they
    are not counted among its accounts."""
    started = time.monotonic()
    waiting = set(range(partitions))
    attempt = 0
    while waiting:
        if time.monotonic() - started > deadline_seconds:
            raise TimeoutError(f"partitions {sorted(waiting)} never saw the bench's reference data")
        probes = {_probe_account(run, p, attempt, partitions): p for p in sorted(waiting)}
        opens = [AccountOpenRequested(command_id=f"c-{account}", account_id=account,
                                      isp_id=f"isp-{run}", kind="consumer",
                                      occurred_at=datetime.now(UTC) - timedelta(days=1))
                 for account in probes]  # fmt: skip
        for record in encode_commands(opens, partitions):
            await sender.send(record)
        await sender.flush()
        while not probes.keys() <= watcher.probes.keys():
            if time.monotonic() - started > deadline_seconds:
                raise TimeoutError("the workers decided no probe account")
            await watcher.poll()
        waiting -= {p for a, p in probes.items() if watcher.probes[a].startswith("account.opened")}
        attempt += 1
        if waiting:
            await asyncio.sleep(PROBE_RETRY_SECONDS)


def _probe_account(run: str, partition: int, attempt: int, partitions: int) -> str:
    """A probe account id on this partition (Kafka's partitioner of the id)."""
    n = 0
    while partition_for(account := f"{PROBE_PREFIX}{attempt}.{n}-{run}-p", partitions) != partition:
        n += 1
    return account


async def send_and_wait(
    sender: Sender,
    watcher: FactWatcher,
    records: Sequence[Outgoing],
    deadline_seconds: float,
    check: Callable[[], None] = lambda: None,
) -> float:
    """Send commands as fast as the producer goes and wait for a fact of each; returns the
    seconds from the first send to the last fact seen."""
    base = watcher.seen
    started = time.monotonic()
    await sender.send_all(records)
    await watcher.wait_for(base + len(records), deadline_seconds, check)
    return time.monotonic() - started


async def send_paced(
    sender: Sender, watcher: FactWatcher, paced: Sequence[tuple[str, Outgoing]], rate: float
) -> dict[str, int]:
    """Send (purchase id, record) pairs at `rate` per second, reading facts meanwhile; returns
    purchase id → the wall-clock millisecond it was sent."""
    sent_ms: dict[str, int] = {}
    started = time.monotonic()
    for index, (purchase_id, record) in enumerate(paced):
        due = started + index / rate
        while (ahead := due - time.monotonic()) > 0:
            if ahead > PACE_SLEEP_SECONDS_MAX:
                await watcher.poll(timeout_ms=int(ahead * 1000))
            else:
                await asyncio.sleep(ahead)
        sent_ms[purchase_id] = int(time.time() * 1000)
        await sender.send(record)
    await sender.flush()
    return sent_ms


def paced_records(commands: Sequence[Command], partitions: int) -> list[tuple[str, Outgoing]]:
    ids = [command.purchase_id for command in commands if isinstance(command, PurchaseRequested)]
    assert len(ids) == len(commands), "only purchases are paced"
    return list(zip(ids, encode_commands(commands, partitions), strict=True))


def latencies_seconds(sent_ms: dict[str, int], decided_at_ms: dict[str, int]) -> list[float]:
    """Each paced purchase's decision latency, sorted."""
    return sorted(max(0.0, (decided_at_ms[pid] - sent) / 1000) for pid, sent in sent_ms.items())


def wait_idle(bootstrap: str, group_id: str, deadline_seconds: float) -> None:
    """Until the workers' consumer group has committed every record of what it reads
    (topics.WORKER_SOURCES: ledger.commands alone). A worker acknowledges a batch only once its
    facts, its account states and each partition's summary, which holds the partial balances per
    publisher and ISP, are written (streams/authorizer.py): committed means decided and balanced.
    faust commits every COMMIT_INTERVAL_SECONDS, so this may see it up to that much late."""
    from kafka import KafkaConsumer

    consumer = KafkaConsumer(**settings.consumer_config(bootstrap, "ledger-bench-idle", group_id))
    try:
        started = time.monotonic()
        while time.monotonic() - started < deadline_seconds:
            ends: dict[Any, int] = {}
            for topic in topics.WORKER_SOURCES:
                ends |= end_offsets(consumer, topic)
            if all((consumer.committed(tp) or 0) >= end for tp, end in ends.items()):
                return
            time.sleep(IDLE_POLL_SECONDS)
        raise TimeoutError(f"the workers were not idle after {deadline_seconds:.0f} s")
    finally:
        consumer.close()


def _percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def run(bootstrap: str, partitions: int, accounts: int = 20_000, commands: int = 60_000,
        seed: int = 2006, deadline_seconds: float = 1_800) -> StreamFigures:  # fmt: skip
    """Needs a worker running against the stack (`ledger worker`)."""
    return asyncio.run(_run(bootstrap, partitions, accounts, commands, seed, deadline_seconds))


async def _run(bootstrap: str, partitions: int, accounts: int, commands: int, seed: int,
               deadline_seconds: float) -> StreamFigures:  # fmt: skip
    run_id = uuid.uuid4().hex[:8]
    reference, opens = world(run_id, accounts)
    async with Sender(bootstrap) as sender, FactWatcher(bootstrap, run_id, partitions) as watcher:
        await sender.send_all(encode_reference(reference, partitions))
        await wait_for_reference(sender, watcher, run_id, partitions, deadline_seconds)
        await send_and_wait(sender, watcher, encode_commands(opens, partitions), deadline_seconds)
        # Throughput: a backlog produced as fast as we can, decided as fast as the worker can.
        backlog = encode_commands(purchases(run_id, accounts, commands, seed), partitions)
        seconds = await send_and_wait(sender, watcher, backlog, deadline_seconds)
        throughput = len(backlog) / seconds
        await asyncio.to_thread(wait_idle, bootstrap, APP_ID, deadline_seconds)
        # Latency at half that rate, paced.
        rate = throughput / 2
        count = min(commands, int(rate * 20))
        paced = paced_records(purchases(run_id, accounts, count, seed + 1, commands), partitions)
        base = watcher.seen
        sent_ms = await send_paced(sender, watcher, paced, rate)
        await watcher.wait_for(base + len(paced), deadline_seconds)
    latencies = latencies_seconds(sent_ms, watcher.decided_at_ms)
    return StreamFigures(
        accounts=accounts,
        commands=len(backlog),
        decisions_per_second=throughput,
        paced_rate_per_second=rate,
        latency_p50_seconds=statistics.median(latencies),
        latency_p99_seconds=_percentile(latencies, 0.99),
        latency_max_seconds=max(latencies),
    )


def report(figures: StreamFigures) -> str:
    rows = [
        ("accounts", f"{figures.accounts:,}"),
        ("purchase commands (backlog)", f"{figures.commands:,}"),
        ("decisions/s sustained (commands → facts)", f"{figures.decisions_per_second:,.0f}"),
        ("paced rate for latency (half)", f"{figures.paced_rate_per_second:,.0f}/s"),
        ("decision latency p50", f"{figures.latency_p50_seconds * 1000:,.1f} ms"),
        ("decision latency p99", f"{figures.latency_p99_seconds * 1000:,.1f} ms"),
        ("decision latency max", f"{figures.latency_max_seconds * 1000:,.1f} ms"),
    ]
    return table(rows)


def as_json(figures: StreamFigures) -> dict[str, float]:
    return asdict(figures)
