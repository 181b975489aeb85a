"""The faust app: topics, tables and agents, built around the pure core.

- authorizer: ledger.commands → ledger.events, per-account state in the `accounts` table;
- publisher and ISP balances: ledger.events, grouped by publisher / ISP, into tables;
- reference data: ledger.reference, read whole by every worker into a global table.

The agents only move bytes in and out of the core (STYLE.md §1). Anything undecodable or invalid
goes to ledger.dlq with its reason; an exception that is not about the input is a broken invariant:
the worker stops at once, uncommitted, and its restart replays deterministically.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any, NoReturn

import faust
from faust.transport.drivers import aiokafka as faust_aiokafka

from ledger import topics
from ledger.core.authorizer import Context, decide_close, evolve_close, step
from ledger.core.balances import decode_balance, encode_balance
from ledger.core.state import ClosedPeriods, decode_account, decode_closed, encode_state
from ledger.partitioning import partition_for
from schemas import codec
from schemas.commands import PeriodCloseRequested
from schemas.deadletter import set_aside
from schemas.facts import (
    CommandRejected,
    Fact,
    PurchaseAuthorized,
    PurchaseRefunded,
    PurchaseRejected,
    RefundRejected,
)
from schemas.types import Party
from streams import metrics
from streams.config import ROCKSDB_OPTIONS, WorkerConfig, faust_settings
from streams.ordering import InOrder
from streams.reference_reader import ReferenceReader
from streams.state import put_state

log = logging.getLogger("ledger.streams")
EXIT_INVARIANT_BROKEN = 70  # EX_SOFTWARE: restart me; nothing was committed past the fault

ACCOUNTS_TABLE = "accounts"
CLOSED_TABLE = "closed-periods"
PUBLISHER_TABLE = "publisher-balances"
ISP_TABLE = "isp-balances"
FORWARD_TABLE = "group-by-progress"


class IdempotentProducer(faust_aiokafka.Producer):
    """faust turns idempotence on only inside transactions; a ledger wants it always, so that a
    retried send never writes a fact or a table update twice or out of order."""

    def _settings_extra(self) -> dict[str, Any]:
        return {"acks": "all", "enable_idempotence": True}


class LedgerApp(faust.App):
    def _new_producer_transport(self) -> Any:
        transport = super()._new_producer_transport()
        # The class the transport builds its producer from (faust.transport.base.Transport).
        setattr(transport, "Producer", IdempotentProducer)  # noqa: B010
        return transport


def _now() -> datetime:
    return datetime.now(UTC)


def crash(reason: str) -> NoReturn:
    """A broken invariant: stop now, commit nothing more (STYLE.md §6)."""
    log.critical("invariant broken, stopping the worker: %s", reason)
    logging.shutdown()
    os._exit(EXIT_INVARIANT_BROKEN)


def _is_money(raw: bytes) -> bool:
    # The tag is the first field msgspec writes: a cheap test before a full decode.
    return raw.startswith((b'{"type":"purchase.authorized.', b'{"type":"purchase.refunded.'))


def create_app(config: WorkerConfig) -> LedgerApp:  # noqa: PLR0915 - one wiring place
    app = LedgerApp(config.app_id, **faust_settings(config))
    raw: dict[str, Any] = {
        "key_type": bytes,
        "value_type": bytes,
        "key_serializer": "raw",
        "value_serializer": "raw",
    }
    raw_table: dict[str, Any] = {"key_type": bytes, "value_type": bytes}  # bytes: no serializer
    partitions = config.partitions
    commands_topic = app.topic(topics.COMMANDS, partitions=partitions, **raw)
    events_topic = app.topic(topics.EVENTS, partitions=partitions, **raw)
    dlq_topic = app.topic(topics.DLQ, partitions=1, **raw)
    table_options: dict[str, Any] = (
        {"options": dict(ROCKSDB_OPTIONS)} if config.store == "rocksdb" else {}
    )

    accounts = app.Table(ACCOUNTS_TABLE, partitions=partitions, **raw_table, **table_options)
    closed_periods = app.Table(CLOSED_TABLE, partitions=partitions, **raw_table, **table_options)
    publisher_balances = app.Table(
        PUBLISHER_TABLE, partitions=partitions, **raw_table, **table_options
    )
    isp_balances = app.Table(ISP_TABLE, partitions=partitions, **raw_table, **table_options)
    # The group-by of ledger.events keeps nothing but its progress (see streams/ordering.py).
    forwarded = app.Table(FORWARD_TABLE, partitions=partitions, **raw_table, **table_options)
    reader = ReferenceReader(config.bootstrap_servers)
    context = Context(reader.reference)

    @app.task
    async def read_reference() -> None:
        await reader.run()

    last_offsets: dict[tuple[str, int], int] = {}

    async def dead_letter(message: Any, reason: str, detail: str) -> None:
        letter = set_aside(
            reason, detail, message.topic, message.partition, message.offset, message.key,
            message.value, _now(),
        )  # fmt: skip
        await dlq_topic.send(key=message.key, value=codec.encode(letter), partition=0)
        metrics.DEAD_LETTERS.labels(message.topic, reason).inc()
        log.warning("dead-lettered %s[%d]@%d: %s: %s", message.topic, message.partition,
                    message.offset, reason, detail[:200])  # fmt: skip

    async def emit(facts: list[Fact], key: str, partition: int) -> None:
        for fact in facts:
            await events_topic.send(key=key.encode(), value=codec.encode(fact), partition=partition)
            if isinstance(fact, PurchaseRejected | RefundRejected | CommandRejected):
                metrics.DECISIONS.labels("rejected", fact.reason).inc()
            else:
                metrics.DECISIONS.labels("accepted", "").inc()

    def closed_for(partition: int) -> ClosedPeriods:
        found = closed_periods.get(f"partition:{partition}".encode())
        return decode_closed(found) if found is not None else ClosedPeriods()

    async def handle_close(message: Any, command: PeriodCloseRequested) -> None:
        if command.partition != message.partition or command.partitions != partitions:
            await dead_letter(message, "wrong_partition", (
                f"a close for partition {command.partition} of {command.partitions} arrived on "
                f"partition {message.partition} of {partitions}"))  # fmt: skip
            return
        closed = closed_for(message.partition)
        fact = decide_close(closed, command, context.reference)
        await put_state(
            closed_periods, f"partition:{message.partition}".encode(),
            encode_state(evolve_close(closed, fact, command)), message.partition,
        )  # fmt: skip
        await emit([fact], command.isp_id, message.partition)

    async def handle_command(message: Any) -> None:
        if topics.is_marker(message.key):
            return
        try:
            command = codec.decode_command(message.value)
        except codec.InvalidMessage as invalid:
            await dead_letter(message, invalid.reason, invalid.detail)
            return
        tag = command.__struct_config__.tag
        metrics.COMMANDS_CONSUMED.labels(tag).inc()
        if isinstance(command, PeriodCloseRequested):
            await handle_close(message, command)
            return
        home = partition_for(command.account_id, partitions)
        if home != message.partition:
            await dead_letter(message, "wrong_partition", (
                f"account {command.account_id} belongs to partition {home}, "
                f"this command arrived on {message.partition}"))  # fmt: skip
            return
        key = command.account_id.encode()
        found = accounts.get(key)
        state = decode_account(found) if found is not None else None
        partition_context = Context(
            context.reference, closed_for(message.partition).by_isp, context.policy,
            context._base_limits,
        )  # fmt: skip
        decision = step(state, command, partition_context, origin=message.offset)
        if decision.state is not None:
            await put_state(accounts, key, encode_state(decision.state), message.partition)
        await emit(decision.facts, command.account_id, message.partition)
        metrics.DECISION_LATENCY.observe(max(0.0, time.time() - message.timestamp))
        occurred = getattr(command, "occurred_at", None)
        if occurred is not None:
            metrics.EVENT_TIME_LAG.observe(max(0.0, (_now() - occurred).total_seconds()))

    starts = config.log_starts
    command_order = InOrder(accounts, topics.COMMANDS, starts.get(topics.COMMANDS, {}))
    event_order = InOrder(forwarded, topics.EVENTS, starts.get(topics.EVENTS, {}))
    gates = [command_order, event_order]

    @app.on_partitions_revoked.connect  # type: ignore[arg-type]
    async def forget_expectations(sender: Any, *args: Any, **kwargs: Any) -> None:
        for gate in gates:
            gate.forget()

    # Every agent acknowledges its records itself, in order (streams/ordering.py).
    @app.agent(commands_topic, name="authorizer", concurrency=1)
    async def authorizer(stream: Any) -> AsyncIterator[None]:
        await reader.ready.wait()
        async for event in stream.noack().events():
            message = event.message
            if command_order.admit(message):
                try:
                    await handle_command(message)
                    await command_order.done(message)
                except Exception as error:  # not about the input (that is dead-lettered): a bug
                    where = f"{message.topic}[{message.partition}]@{message.offset}"
                    crash(f"{type(error).__name__}: {error} at {where}")
                event.ack()
                last_offsets[topics.COMMANDS, message.partition] = message.offset
            yield None

    # Balances per publisher and per ISP: ledger.events is partitioned by account, so each money
    # fact is first re-keyed by publisher and by ISP (a group-by through a repartition topic of
    # ours), then applied by the agent that owns that key's table partition.
    by_publisher = app.topic(topics.BY_PUBLISHER, partitions=partitions, **raw)
    by_isp = app.topic(topics.BY_ISP, partitions=partitions, **raw)

    async def forward(message: Any) -> None:
        raw_fact = message.value
        if not _is_money(raw_fact):
            return
        try:
            fact = codec.decode_fact(raw_fact)
        except codec.InvalidMessage as invalid:
            # Not the authorizer's: something else wrote to ledger.events. Set it aside, with
            # its reason, and go on (a crash would only come back to it: a crash loop).
            await dead_letter(message, invalid.reason, invalid.detail)
            return
        if not isinstance(fact, PurchaseAuthorized | PurchaseRefunded):
            crash(f"group-by-party: a {type(fact).__name__} tagged as a money fact")
        for topic, key in ((by_publisher, fact.publisher_id), (by_isp, fact.isp_id)):
            await topic.send(
                key=key.encode(), value=raw_fact, partition=partition_for(key, partitions)
            )

    @app.agent(events_topic, name="group-by-party", concurrency=1)
    async def group_by_party(stream: Any) -> AsyncIterator[None]:
        async for event in stream.noack().events():
            if event_order.admit(event.message):
                if not topics.is_marker(event.message.key):
                    await forward(event.message)
                await event_order.done(event.message)
                event.ack()
            yield None

    def balance_agent(party: Party, source: Any, table: Any, name: str) -> None:
        topic_name = source.get_topic_name()
        order = InOrder(table, topic_name, starts.get(topic_name, {}))
        gates.append(order)

        async def apply(message: Any) -> None:
            if topics.is_marker(message.key):
                return
            try:
                fact = codec.decode_fact(message.value)
                assert isinstance(fact, PurchaseAuthorized | PurchaseRefunded)
                balance = decode_balance(table.get(message.key))
                if balance.apply(fact, party, partition_for(fact.account_id, partitions)):
                    await put_state(table, message.key, encode_balance(balance), message.partition)
                    metrics.BALANCE_FACTS.labels(name, "applied").inc()
                else:
                    metrics.BALANCE_FACTS.labels(name, "duplicate").inc()
            except Exception as error:  # the authorizer wrote it: a broken invariant
                crash(f"{name}: {type(error).__name__}: {error}")

        async def apply_balances(stream: Any) -> AsyncIterator[None]:
            async for event in stream.noack().events():
                if order.admit(event.message):
                    await apply(event.message)
                    await order.done(event.message)
                    event.ack()
                yield None

        app.agent(source, name=name, concurrency=1)(apply_balances)

    balance_agent("publisher", by_publisher, publisher_balances, PUBLISHER_TABLE)
    balance_agent("isp", by_isp, isp_balances, ISP_TABLE)

    @app.timer(interval=5.0)
    async def report_lag() -> None:
        for tp in app.consumer.assignment():
            if tp.topic != topics.COMMANDS:
                continue
            highwater = app.consumer.highwater(tp)
            done = last_offsets.get((tp.topic, tp.partition), -1) + 1
            if highwater is not None:
                metrics.CONSUMER_LAG.labels(tp.topic, str(tp.partition)).set(
                    max(0, highwater - done)
                )

    app.ledger_tables = {  # type: ignore[attr-defined]
        ACCOUNTS_TABLE: accounts,
        PUBLISHER_TABLE: publisher_balances,
        ISP_TABLE: isp_balances,
        CLOSED_TABLE: closed_periods,
    }
    return app
