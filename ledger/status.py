"""`ledger status`: what an operator looks at first. Lag per partition of the workers and of the
projection writer, throughput over the last minute, the last decision, the dead letters and the
state of each billing period, read from the broker and the database (not from the processes'
metrics: it answers even when a process is down, which is when it is needed), and the open holds
of each ISP (issue 14).

`gather` reads; `render` is pure and turns what was read into the screen.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any

from ledger.kafka import topics
from ledger.kafka.groups import APP_ID
from ledger.kafka.partitions import topic_partitions
from ledger.kafka.settings import admin_config, consumer_config
from projections.status import OpenHolds, PeriodState, open_holds, stored_offsets_and_periods
from schemas import codec
from schemas.facts import PurchaseAuthorized, PurchaseRejected

THROUGHPUT_WINDOW_SECONDS = 60
TAIL_RECORDS = 50  # read back from the end of each partition of ledger.events for the last decision
POLL_MS = 500
RECENT_PERIODS_PER_ISP = 3


@dataclass(frozen=True)
class PartitionLag:
    reader: str  # "workers" or "projections"
    topic: str
    partition: int
    end_offset: int
    position: int | None  # committed (workers) or stored (projections); None: never read

    @property
    def lag(self) -> int:
        return self.end_offset - (self.position or 0)


@dataclass(frozen=True)
class LastDecision:
    at: str  # ISO time the fact was appended
    age_seconds: float
    purchase_id: str
    account_id: str
    publisher_id: str
    amount_cents: int
    outcome: str  # authorized, or the rejection's reason


@dataclass
class Status:
    read_at: str
    lags: list[PartitionLag] = field(default_factory=list)
    commands_per_second: float = 0.0
    facts_per_second: float = 0.0
    last_decision: LastDecision | None = None
    dead_letters: int = 0
    last_dead_letter_reason: str | None = None
    periods: list[PeriodState] = field(default_factory=list)
    holds: list[OpenHolds] = field(default_factory=list)  # per ISP
    services: dict[str, int] = field(default_factory=dict)  # name → pid, of this machine

    def as_json(self) -> dict[str, Any]:
        data = asdict(self)
        for lag, raw in zip(self.lags, data["lags"], strict=True):
            raw["lag"] = lag.lag
        return data


def _euros(cents: int) -> str:
    return f"{cents / 100:,.2f} €".replace(",", " ")


def _age(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s ago"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min ago"
    return f"{seconds / 3600:.1f} h ago"


def render(status: Status) -> str:
    out = [f"ledger status at {status.read_at}", ""]
    out.append(
        f"throughput (last {THROUGHPUT_WINDOW_SECONDS} s): "
        f"{status.commands_per_second:,.1f} commands/s in, "
        f"{status.facts_per_second:,.1f} facts/s out"
    )
    last = status.last_decision
    if last is None:
        out.append("last decision: none on ledger.events")
    else:
        out.append(
            f"last decision: {last.at} ({_age(last.age_seconds)}) purchase {last.purchase_id} "
            f"{_euros(last.amount_cents)} by {last.account_id} at {last.publisher_id}: "
            f"{last.outcome}"
        )
    dead = f"dead letters: {status.dead_letters}"
    if status.last_dead_letter_reason:
        dead += f" (last: {status.last_dead_letter_reason})"
    out.append(dead + ("  <- look at ledger.dlq" if status.dead_letters else ""))
    out += ["", f"{'reader':<12} {'topic':<18} {'part':>4} {'end':>10} {'at':>10} {'lag':>8}"]
    for lag in status.lags:
        at = "-" if lag.position is None else str(lag.position)
        out.append(
            f"{lag.reader:<12} {lag.topic:<18} {lag.partition:>4} {lag.end_offset:>10} "
            f"{at:>10} {lag.lag:>8}"
        )
    total = {reader: sum(x.lag for x in status.lags if x.reader == reader) for reader in
             ("workers", "projections")}  # fmt: skip
    out.append(f"total lag: workers {total['workers']}, projections {total['projections']}")
    out += ["", "billing periods (the latest per ISP):"]
    if not status.periods:
        out.append("  none yet")
    for period in status.periods:
        invoices = "" if period.invoices is None else f", {period.invoices} invoices"
        out.append(
            f"  {period.isp_id:<16} {period.period}  {period.state:<8} "
            f"{period.purchases:>8,} purchases {_euros(period.gross_cents):>14} bought{invoices}"
        )
    out += ["", "open holds (held payments not captured, voided or expired):"]
    if not status.holds:
        out.append("  none")
    for held in status.holds:
        out.append(
            f"  {held.isp_id:<16} {held.holds:>8,} holds {_euros(held.held_cents):>14} held,"
            f" oldest {held.oldest_reserved_at}, next expiry {held.next_expiry_at}"
        )
    if status.services:
        running = sorted(status.services.items())
        out += ["", "services here: " + ", ".join(f"{name} (pid {pid})" for name, pid in running)]
    return "\n".join(out)


def _kafka_part(status: Status, bootstrap: str, stored: dict[int, int]) -> None:
    from kafka import KafkaAdminClient, KafkaConsumer

    consumer = KafkaConsumer(**consumer_config(bootstrap, "ledger-status", None))
    admin = KafkaAdminClient(**admin_config(bootstrap, "ledger-status"))
    try:
        commands, events, dlq = (
            topic_partitions(consumer, topic)
            for topic in (topics.COMMANDS, topics.EVENTS, topics.DLQ)
        )
        ends = consumer.end_offsets(commands + events + dlq)
        committed = {
            tp: meta.offset
            for tp, meta in admin.list_group_offsets({APP_ID: commands}).get(APP_ID, {}).items()
            if meta.offset >= 0
        }
        for tp in commands:
            status.lags.append(
                PartitionLag("workers", tp.topic, tp.partition, ends[tp], committed.get(tp))
            )
        for tp in events:
            status.lags.append(
                PartitionLag(
                    "projections", tp.topic, tp.partition, ends[tp], stored.get(tp.partition)
                )
            )
        since_ms = int((time.time() - THROUGHPUT_WINDOW_SECONDS) * 1000)
        then = consumer.offsets_for_times(dict.fromkeys(commands + events, since_ms))
        for tp_list, attr in ((commands, "commands_per_second"), (events, "facts_per_second")):
            appended = sum(
                ends[tp] - (then[tp].offset if then.get(tp) else ends[tp]) for tp in tp_list
            )
            setattr(status, attr, appended / THROUGHPUT_WINDOW_SECONDS)
        begins = consumer.beginning_offsets(dlq)
        status.dead_letters = sum(ends[tp] - begins[tp] for tp in dlq)
        tails = {tp: max(0, ends[tp] - TAIL_RECORDS) for tp in events if ends[tp]}
        if status.dead_letters:
            tails |= {tp: ends[tp] - 1 for tp in dlq if ends[tp] > begins[tp]}
        _read_tails(status, consumer, tails, ends)
    finally:
        consumer.close()
        admin.close()


def _read_tails(status: Status, consumer: Any, tails: dict[Any, int], ends: dict[Any, int]) -> None:
    """The last purchase decision of ledger.events and the last dead letter's reason."""
    if not tails:
        return
    consumer.assign(list(tails))
    for tp, offset in tails.items():
        consumer.seek(tp, offset)
    remaining = set(tails)
    deadline = time.monotonic() + 10
    best: tuple[int, Any] | None = None
    while remaining and time.monotonic() < deadline:
        for tp, records in consumer.poll(timeout_ms=POLL_MS).items():
            for record in records:
                if tp.topic == topics.DLQ:
                    try:
                        status.last_dead_letter_reason = codec.decode_dead_letter(
                            record.value
                        ).reason
                    except Exception:  # an operator's tool must not die of the thing it reports
                        status.last_dead_letter_reason = "unreadable dead letter"
                    continue
                if topics.is_marker(record.key):
                    continue
                try:
                    fact = codec.decode_fact(record.value)
                except Exception:
                    continue
                if isinstance(fact, PurchaseAuthorized | PurchaseRejected) and (
                    best is None or record.timestamp >= best[0]
                ):
                    best = (record.timestamp, fact)
            if records and records[-1].offset + 1 >= ends[tp]:
                remaining.discard(tp)
    if best is not None:
        timestamp_ms, fact = best
        status.last_decision = LastDecision(
            at=datetime.fromtimestamp(timestamp_ms / 1000, UTC).isoformat(timespec="seconds"),
            age_seconds=max(0.0, time.time() - timestamp_ms / 1000),
            purchase_id=fact.purchase_id,
            account_id=fact.account_id,
            publisher_id=fact.publisher_id,
            amount_cents=fact.amount_cents,
            outcome="authorized" if isinstance(fact, PurchaseAuthorized) else fact.reason,
        )


def gather(bootstrap: str, dsn: str, services: dict[str, int]) -> Status:
    status = Status(read_at=datetime.now(UTC).isoformat(timespec="seconds"), services=services)
    stored, status.periods = stored_offsets_and_periods(dsn, RECENT_PERIODS_PER_ISP)
    status.holds = open_holds(dsn)
    _kafka_part(status, bootstrap, stored)
    return status
