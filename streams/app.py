"""The faust app: topics, the accounts table and the authorizer, built around the pure core.

- authorizer: ledger.commands → ledger.events, a fetched batch at a time (streams/authorizer.py),
  the per-account state and each partition's summary (closed periods, partial balances per
  publisher and per ISP) in the `accounts` table (RocksDB, with its changelog);
- reference data: in each partition's command order (`reference.change_requested.v1`, issue 15),
  kept per partition in the accounts table; the workers no longer read ledger.reference.

faust keeps what it does well: the consumer group and its rebalances, the table's changelog
topic, its recovery into RocksDB on assignment, and the commits. Its per-record path is replaced
for ledger.commands (streams/fetch.py). Anything undecodable or invalid goes to ledger.dlq with
its reason; an exception that is not about the input is a broken invariant: the worker stops at
once, uncommitted, and its restart replays deterministically.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import AsyncIterator
from typing import Any, NoReturn

import faust
from faust.transport.drivers import aiokafka as faust_aiokafka

from ledger.kafka import topics
from ledger.kafka.groups import ACCOUNTS_TABLE
from ledger.kafka.settings import aiokafka_producer_config, faust_producer_extra
from streams import metrics
from streams.authorizer import BatchAuthorizer, MemoryAccounts, RocksAccounts
from streams.config import ROCKSDB_OPTIONS, WorkerConfig, faust_settings, suspension_seconds
from streams.fetch import consumer_class
from streams.suspension import TICK_SECONDS

log = logging.getLogger("ledger.streams")
EXIT_INVARIANT_BROKEN = 70  # EX_SOFTWARE: restart me; nothing was committed past the fault

LAG_REPORT_SECONDS = 5.0


class IdempotentProducer(faust_aiokafka.Producer):
    """faust turns idempotence on only inside transactions; a ledger wants it always, so that a
    retried send never writes a table update twice or out of order."""

    def _settings_extra(self) -> dict[str, Any]:
        return faust_producer_extra()


class LedgerApp(faust.App):
    def _new_producer_transport(self) -> Any:
        transport = super()._new_producer_transport()
        # The class the transport builds its producer from (faust.transport.base.Transport).
        setattr(transport, "Producer", IdempotentProducer)  # noqa: B010
        return transport


def crash(reason: str) -> NoReturn:
    """A broken invariant: stop now, commit nothing more (STYLE.md §6)."""
    log.critical("invariant broken, stopping the worker: %s", reason)
    logging.shutdown()
    os._exit(EXIT_INVARIANT_BROKEN)


def create_app(config: WorkerConfig) -> LedgerApp:
    app = LedgerApp(config.app_id, **faust_settings(config))
    commands_topic, accounts = _declare(app, config)
    authorizer = BatchAuthorizer(
        app,
        RocksAccounts(accounts.data)
        if config.store == "rocksdb"
        else MemoryAccounts(accounts.data),
        accounts.changelog_topic.get_topic_name(),
        config.partitions,
        config.log_starts.get(topics.COMMANDS, {}),
        aiokafka_producer_config(config.bootstrap_servers, f"{config.app_id}-{config.name}"),
        suspension_seconds=suspension_seconds(),
    )
    _bind_fetch_loop(app, authorizer)
    _services(app, authorizer, commands_topic)
    app.ledger_tables = {ACCOUNTS_TABLE: accounts}  # type: ignore[attr-defined]
    return app


def _declare(app: LedgerApp, config: WorkerConfig) -> tuple[Any, Any]:
    """The topics the worker reads and writes, and the accounts table (RocksDB or memory)."""
    raw: dict[str, Any] = {
        "key_type": bytes,
        "value_type": bytes,
        "key_serializer": "raw",
        "value_serializer": "raw",
    }
    partitions = config.partitions
    commands_topic = app.topic(topics.COMMANDS, partitions=partitions, **raw)
    app.topic(topics.EVENTS, partitions=partitions, **raw)  # declared: the facts go there
    table_options: dict[str, Any] = (
        {"options": dict(ROCKSDB_OPTIONS)} if config.store == "rocksdb" else {}
    )
    accounts = app.Table(
        ACCOUNTS_TABLE, partitions=partitions, key_type=bytes, value_type=bytes, **table_options
    )
    return commands_topic, accounts


def _bind_fetch_loop(app: LedgerApp, authorizer: BatchAuthorizer) -> None:
    """The fetch loop (streams/fetch.py) hands every fetched batch of commands to the
    authorizer."""

    async def decide(fetched: dict[int, list[Any]]) -> None:
        try:
            await authorizer.handle(fetched)
        except Exception as error:  # not about the input (that is dead-lettered): a bug
            crash(f"authorizer: {type(error).__name__}: {error}")

    # The consumer is built from this class when the worker starts (faust.transport.base).
    setattr(app.transport, "Consumer", consumer_class(topics.COMMANDS, decide))  # noqa: B010


def _services(app: LedgerApp, authorizer: BatchAuthorizer, commands_topic: Any) -> None:
    """The rebalance and shutdown hooks, the subscribing agent and the lag report."""

    @app.on_partitions_revoked.connect  # type: ignore[arg-type]
    async def forget_expectations(sender: Any, *args: Any, **kwargs: Any) -> None:
        authorizer.forget()

    @app.on_before_shutdown.connect  # type: ignore[arg-type]
    async def stop_producer(sender: Any, *args: Any, **kwargs: Any) -> None:
        await authorizer.stop()

    # The agent subscribes the worker to ledger.commands and co-partitions the accounts table
    # with it; its records never reach it: the fetch loop hands them to the authorizer.
    @app.agent(commands_topic, name="authorizer", concurrency=1)
    async def subscribed(stream: Any) -> AsyncIterator[None]:
        async for _ in stream.noack().events():  # pragma: no cover - never delivered
            crash("a command reached the agent's stream instead of the batch authorizer")
            yield None

    @app.timer(interval=TICK_SECONDS)
    async def tick() -> None:  # the event loop runs: no freeze (streams/suspension.py)
        authorizer.suspension.tick(time.monotonic(), app.consumer_generation_id)

    @app.timer(interval=LAG_REPORT_SECONDS)
    async def report_lag() -> None:
        for tp in app.consumer.assignment():
            if tp.topic != topics.COMMANDS:
                continue
            highwater = app.consumer.highwater(tp)
            done = authorizer.last_offsets.get(tp.partition, -1) + 1
            if highwater is not None:
                metrics.CONSUMER_LAG.labels(tp.topic, str(tp.partition)).set(
                    max(0, highwater - done)
                )
