"""faust's fetch loop, replaced for ledger.commands: whole fetched batches go to the authorizer.

faust-streaming 0.15.3 (pinned with mode-streaming 0.7.1 and aiokafka 0.14.0; tests/unit/
test_stream_fetch.py checks the private names this relies on) hands each fetched record to its
agents one by one: `Consumer._drain_messages` awaits `wait_first(callback(message),
suspend_flow.wait())` per record, which costs several tasks and futures a record (a no-op agent
tops out at ~6,700 records/s here, ~20,000/s with the callback awaited directly; shared/PERF.md).
It also loses records: `Consumer.getmany` stops iterating a fetched batch when the flow stops
(a rebalance) or the generation changes, after aiokafka has moved its position past them, and a
cancelled callback is still counted as read. The ledger saw those losses as in-order gaps
("record 51528 came before 50899") and restarted the worker on each.

`LedgerConsumer._drain_messages` fetches with faust's own `_wait_next_records` (which keeps
faust's pausing of partitions under recovery), passes every record of ledger.commands, per
partition and in offset order, to one awaited call of the batch handler, and every other record
(the tables' changelogs during recovery) to faust's callback, awaited directly. Nothing is
filtered here: the handler's gates (streams/gate.py) know the next offset of each partition and
seek back over anything lost, so a loss costs a seek, not a restart.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from faust.transport.drivers import aiokafka as faust_aiokafka

log = logging.getLogger("ledger.streams.fetch")
FETCH_TIMEOUT_SECONDS = 1.0
# How long the broker may hold a fetch with nothing new. faust 0.15.3 hard-codes 1,500 ms
# (drivers/aiokafka.py, _create_worker_consumer); measured by the bench (issue 13): decided facts
# then came in bursts about 1.5 s apart at a few thousand commands/s (p50 405 ms, p99 1,966 ms),
# and 66 ms p50 against 1,065 ms in an A/B with 20 ms.
FETCH_MAX_WAIT_MS = 20


class _ConsumerThread(faust_aiokafka.AIOKafkaConsumerThread):
    def _create_worker_consumer(self, transport: Any) -> Any:
        consumer = super()._create_worker_consumer(transport)
        consumer._fetch_max_wait_ms = FETCH_MAX_WAIT_MS  # read by its fetcher when it starts
        return consumer


# Handed to the batch handler: partition → its fetched records of ledger.commands, in offset order.
BatchHandler = Callable[[dict[int, list[Any]]], Awaitable[None]]


class LedgerConsumer(faust_aiokafka.Consumer):
    """faust's aiokafka consumer with the fetch loop above. `batch_topic` and `batch_handler`
    are set by the app before the worker starts (streams/app.py)."""

    batch_topic: str = ""
    batch_handler: BatchHandler | None = None

    def _new_consumer_thread(self) -> faust_aiokafka.AIOKafkaConsumerThread:
        return _ConsumerThread(self, loop=self.loop, beacon=self.beacon)

    async def _drain_messages(self, fetcher: Any) -> None:
        consumer_should_stop = self._stopped.is_set
        fetcher_should_stop = fetcher._stopped.is_set
        while not (consumer_should_stop() or fetcher_should_stop()):
            try:
                records, active = await self._wait_next_records(FETCH_TIMEOUT_SECONDS)
                if not records or self.should_stop or not self.flow_active:
                    # Records dropped here are fetched again: the gates seek back to them.
                    await asyncio.sleep(0)
                    continue
                await self._deliver(records, active)
            except asyncio.CancelledError:
                if _cancelled_from_outside():
                    # faust stops the fetcher around a rebalance and starts it again after its
                    # recovery; 0.15.3's own loop re-raises here and its Fetcher then crashes the
                    # worker (consumer.py, `self.supervisor.wakeup()` on None). A batch cut short
                    # left nothing in memory (streams/authorizer.py): returning is a clean stop.
                    log.info("fetch loop stopped (rebalancing: %s)", self.app.rebalancing)
                    return
                # A fetch of the consumer's thread cancelled under us by a rebalance: fetch again.
                log.info("a fetch was cancelled (rebalancing: %s)", self.app.rebalancing)

    async def _deliver(self, records: Mapping[Any, list[Any]], active: set[Any] | None) -> None:
        generation = self.app.consumer_generation_id
        to_message = self._to_message
        commands: dict[int, list[Any]] = {}
        for tp, batch in records.items():
            if active is not None and tp not in active and tp not in self._buffered_partitions:
                continue  # paused (its table is recovering): fetched again when resumed
            if tp.topic == self.batch_topic:
                commands[tp.partition] = [to_message(tp, record) for record in batch]
                continue
            for record in batch:
                await self.callback(to_message(tp, record))
        if commands and self.app.consumer_generation_id == generation:
            assert self.batch_handler is not None, "the app sets the batch handler before start"
            await self.batch_handler(commands)


def _cancelled_from_outside() -> bool:
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0


def consumer_class(topic: str, handler: BatchHandler) -> type[LedgerConsumer]:
    """A LedgerConsumer class bound to one app's topic and handler (faust builds the consumer
    from a class, so the binding is a subclass)."""
    return type(
        "BoundLedgerConsumer",
        (LedgerConsumer,),
        {"batch_topic": topic, "batch_handler": staticmethod(handler)},
    )
