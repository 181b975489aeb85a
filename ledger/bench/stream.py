"""Benchmark of the stream on the real broker: how many decisions per second a worker sustains
(commands produced → facts on ledger.events), and the decision latency at half that rate.

Latency is measured from the command's record timestamp (set by our producer when it sent it) to
the fact's record timestamp (set by the worker's producer): both on this machine's clock.
"""

from __future__ import annotations

import random
import statistics
import time
import uuid
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from ledger import topics
from ledger.bench import table
from ledger.delivery import consumer_config
from ledger.produce import LedgerProducer
from schemas.commands import AccountOpenRequested, Command, PurchaseRequested
from schemas.reference import IspRegistered, PublisherRegistered
from streams.config import APP_ID

POLL_MS = 200
BASKETS_CENTS = (99, 150, 199, 266, 299, 350, 499)


@dataclass(frozen=True)
class StreamFigures:
    accounts: int
    commands: int
    decisions_per_second: float
    paced_rate_per_second: float
    latency_p50_seconds: float
    latency_p99_seconds: float
    latency_max_seconds: float


def world(run: str, accounts: int) -> tuple[list[Any], list[Command]]:
    start = datetime.now(UTC) - timedelta(days=1)
    reference: list[Any] = [
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


def _end_offsets(consumer: Any, topic: str) -> dict[Any, int]:
    from kafka import TopicPartition

    tps = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or ())]
    return dict(consumer.end_offsets(tps))


class FactWatcher:
    """Reads ledger.events from now on and notes when each fact of this run appears."""

    def __init__(self, bootstrap: str, run: str) -> None:
        from kafka import KafkaConsumer

        self._consumer = KafkaConsumer(**consumer_config(bootstrap, "ledger-bench", None))
        ends = _end_offsets(self._consumer, topics.EVENTS)
        self._consumer.assign(list(ends))
        for tp, offset in ends.items():
            self._consumer.seek(tp, offset)
        self._marker = run.encode()
        self.seen = 0
        self.decided_at_ms: dict[str, int] = {}  # purchase id → its fact's record timestamp

    def poll(self, timeout_ms: int = POLL_MS) -> None:
        from schemas import codec

        for records in self._consumer.poll(timeout_ms=timeout_ms).values():
            for record in records:
                if self._marker in record.value:
                    self.seen += 1
                    purchase_id = getattr(codec.decode_fact(record.value), "purchase_id", None)
                    if purchase_id is not None:
                        self.decided_at_ms.setdefault(purchase_id, record.timestamp)

    def wait_for(self, count: int, deadline_seconds: float) -> float:
        started = time.monotonic()
        while self.seen < count:
            if time.monotonic() - started > deadline_seconds:
                raise TimeoutError(f"{self.seen} of {count} facts after {deadline_seconds:.0f} s")
            self.poll()
        return time.monotonic() - started

    def close(self) -> None:
        self._consumer.close()


def send_and_wait(
    producer: LedgerProducer, watcher: FactWatcher, commands: list[Command], deadline_seconds: float
) -> float:
    """Send commands as fast as the producer goes and wait for a fact of each; returns the
    seconds from the first send to the last fact."""
    base = watcher.seen
    started = time.monotonic()
    for command in commands:
        producer.send_command(command)
    producer.flush()
    watcher.wait_for(base + len(commands), deadline_seconds)
    return time.monotonic() - started


def send_paced(
    producer: LedgerProducer, watcher: FactWatcher, paced: list[Command], rate: float
) -> dict[str, int]:
    """Send purchases at `rate` per second, reading facts meanwhile; returns purchase id → the
    wall-clock millisecond it was sent."""
    sent_ms: dict[str, int] = {}
    started = time.monotonic()
    for index, command in enumerate(paced):
        due = started + index / rate
        while (ahead := due - time.monotonic()) > 0:
            if ahead > 0.02:
                watcher.poll(timeout_ms=0)
            else:
                time.sleep(ahead)
        assert isinstance(command, PurchaseRequested)
        sent_ms[command.purchase_id] = int(time.time() * 1000)
        producer.send_command(command)
    producer.flush()
    return sent_ms


def wait_idle(bootstrap: str, group_id: str, deadline_seconds: float) -> None:
    """Until the workers have committed every record of every topic they read: the balances'
    backlog must not compete with the latency measurement."""
    from kafka import KafkaConsumer

    consumer = KafkaConsumer(**consumer_config(bootstrap, "ledger-bench-idle", group_id))
    try:
        started = time.monotonic()
        while time.monotonic() - started < deadline_seconds:
            ends: dict[Any, int] = {}
            for topic in topics.WORKER_SOURCES:
                ends |= _end_offsets(consumer, topic)
            if all((consumer.committed(tp) or 0) >= end for tp, end in ends.items()):
                return
            time.sleep(0.5)
        raise TimeoutError(f"the workers were not idle after {deadline_seconds:.0f} s")
    finally:
        consumer.close()


def _percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def run(bootstrap: str, partitions: int, accounts: int = 20_000, commands: int = 60_000,
        seed: int = 2006, deadline_seconds: float = 1_800) -> StreamFigures:  # fmt: skip
    """Needs a worker running against the stack (`ledger worker`)."""
    run_id = uuid.uuid4().hex[:8]
    reference, opens = world(run_id, accounts)
    watcher = FactWatcher(bootstrap, run_id)
    try:
        with LedgerProducer(bootstrap, partitions, client_id="ledger-bench") as producer:
            for record in reference:
                producer.send_reference(record)
            producer.flush()
            time.sleep(2)  # the workers' reference readers see the new ISP and publishers
            send_and_wait(producer, watcher, opens, deadline_seconds)
            # Throughput: a backlog produced as fast as we can, decided as fast as the worker can.
            backlog = purchases(run_id, accounts, commands, seed)
            throughput = len(backlog) / send_and_wait(producer, watcher, backlog, deadline_seconds)
            wait_idle(bootstrap, APP_ID, deadline_seconds)
            # Latency at half that rate, paced.
            rate = throughput / 2
            paced = purchases(run_id, accounts, min(commands, int(rate * 20)), seed + 1, commands)
            base = watcher.seen
            sent_ms = send_paced(producer, watcher, paced, rate)
            watcher.wait_for(base + len(paced), deadline_seconds)
        latencies = [
            max(0.0, (watcher.decided_at_ms[pid] - sent) / 1000) for pid, sent in sent_ms.items()
        ]
    finally:
        watcher.close()
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
