"""The library internals the stream layer leans on, pinned, so that an upgrade fails here and not in
a worker: the fetch loop override (streams/fetch.py) replaces a private method of faust-streaming
0.15.3's consumer and calls others; the authorizer (streams/authorizer.py) sends aiokafka record
batches and writes faust's RocksDB store a write batch at a time. Then the override's behaviour, on
a consumer faust builds itself (never started: no broker), fed by a scripted fetch."""

from __future__ import annotations

import asyncio
import importlib.metadata
import inspect
import types
from collections.abc import Callable
from typing import Any, cast

import faust
import pytest
import rocksdict
from aiokafka import AIOKafkaProducer
from aiokafka.producer.message_accumulator import BatchBuilder, MessageBatch
from aiokafka.structs import ConsumerRecord, TopicPartition
from faust.stores import rocksdb as faust_rocksdb
from faust.transport import consumer as faust_consumer
from faust.transport.drivers import aiokafka as faust_aiokafka
from faust.types import TP

from streams import authorizer
from streams.fetch import LedgerConsumer, consumer_class

COMMANDS = "ledger.commands"
CHANGELOG = "ledger-worker-accounts-changelog"


def _parameters(function: Callable[..., Any]) -> list[str]:
    return list(inspect.signature(function).parameters)


# --- versions and names ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("distribution", "version"),
    [("faust-streaming", "0.15.3"), ("mode-streaming", "0.7.1"), ("aiokafka", "0.14.0")],
)
def test_the_installed_versions_are_the_ones_the_override_was_written_for(
    distribution: str, version: str
) -> None:
    assert importlib.metadata.version(distribution) == version, (
        f"{distribution} moved: check streams/fetch.py and streams/authorizer.py against it, "
        "then update this pin"
    )


def test_faust_still_drains_through_the_method_the_ledger_overrides() -> None:
    consumer = faust_aiokafka.Consumer
    assert issubclass(LedgerConsumer, consumer)
    assert LedgerConsumer._drain_messages is not consumer._drain_messages
    assert _parameters(consumer._drain_messages) == ["self", "fetcher"]
    assert inspect.iscoroutinefunction(consumer._drain_messages)
    # The fetcher service is what runs it, with itself as the argument.
    assert "consumer._drain_messages(self)" in inspect.getsource(faust_consumer.Fetcher)


@pytest.mark.parametrize(
    ("name", "parameters", "coroutine"),
    [
        ("_wait_next_records", ["self", "timeout"], True),
        ("_to_message", ["self", "tp", "record"], False),
        ("seek", ["self", "partition", "offset"], True),  # the gates' seek back
        ("ack", ["self", "message"], False),
        ("highwater", ["self", "tp"], False),  # the lag metric
        ("assignment", ["self"], False),
    ],
)
def test_the_consumer_methods_the_ledger_calls(
    name: str, parameters: list[str], coroutine: bool
) -> None:
    method = getattr(faust_aiokafka.Consumer, name)
    assert _parameters(method) == parameters
    assert inspect.iscoroutinefunction(method) == coroutine


def test_wait_next_records_answers_the_records_and_the_active_partitions() -> None:
    source = inspect.getsource(faust_consumer.Consumer._wait_next_records)
    assert "return records, active_partitions" in source
    # While the flow is stopped (a rebalance) it waits for it to resume before fetching.
    assert "if not self.flow_active" in source and "can_resume_flow" in source


def test_the_consumer_attributes_the_ledger_reads() -> None:
    consumer = faust_aiokafka.Consumer
    assert isinstance(inspect.getattr_static(consumer, "should_stop"), property)
    assert inspect.getattr_static(consumer, "flow_active") is True
    init = inspect.getsource(faust_consumer.Consumer.__init__)
    assert "self.callback = callback" in init
    assert "self._buffered_partitions = set()" in init
    # The generation the override compares before handing a batch over.
    assigned = inspect.getsource(faust_aiokafka.ConsumerRebalanceListener.on_partitions_assigned)
    assert "app.consumer_generation_id = generation" in assigned


def test_the_aiokafka_producer_batch_api() -> None:
    assert _parameters(AIOKafkaProducer.create_batch) == ["self"]
    assert _parameters(AIOKafkaProducer.send_batch) == ["self", "batch", "topic", "partition"]
    partition = inspect.signature(AIOKafkaProducer.send_batch).parameters["partition"]
    assert partition.kind is inspect.Parameter.KEYWORD_ONLY
    assert inspect.iscoroutinefunction(AIOKafkaProducer.send_batch)
    append = inspect.signature(BatchBuilder.append).parameters
    assert {"timestamp", "key", "value"} <= set(append)
    assert all(append[name].kind is inspect.Parameter.KEYWORD_ONLY for name in ("key", "value"))


def test_a_sent_batch_resolves_with_its_base_offset() -> None:
    """streams/authorizer.py takes the offset of a batch's last record as base + count - 1."""

    async def scenario() -> Any:
        producer = AIOKafkaProducer(bootstrap_servers="127.0.0.1:1")  # never started
        batch = MessageBatch(TopicPartition(COMMANDS, 0), producer.create_batch(), 30_000, 0)
        batch.done(base_offset=120)
        await producer.stop()
        return await batch.future

    metadata = asyncio.run(scenario())
    assert (metadata.topic, metadata.partition, metadata.offset) == (COMMANDS, 0, 120)


def test_the_rocksdb_store_names_the_account_store_writes_through() -> None:
    assert faust_rocksdb.Store.offset_key == b"__faust\x00offset__"
    assert _parameters(faust_rocksdb.Store._db_for_partition) == ["self", "partition"]
    # A property at run time (rocksdict's stub declares a method): assigning it sets the option.
    disable_wal = inspect.getattr_static(rocksdict.WriteOptions, "disable_wal")
    assert isinstance(disable_wal, types.GetSetDescriptorType)
    options = rocksdict.WriteOptions()
    setattr(options, "disable_wal", True)  # noqa: B010
    assert disable_wal.__get__(options) is True
    write_batch = rocksdict.WriteBatch(raw_mode=True)
    write_batch.put(b"key", b"value")
    assert len(write_batch) == 1


# --- the authorizer's sends ------------------------------------------------------------------


def test_send_records_hands_whole_record_batches_to_the_producer() -> None:
    sent: list[tuple[MessageBatch, str, int, int]] = []

    async def scenario() -> list[Any]:
        # A real producer, never started: its batches are real, its send is the scripted one.
        producer = AIOKafkaProducer(bootstrap_servers="127.0.0.1:1", max_batch_size=300)

        async def send_batch(builder: BatchBuilder, topic: str, *, partition: int) -> Any:
            batch = MessageBatch(TopicPartition(topic, partition), builder, 30_000, 0)
            sent.append((batch, topic, partition, builder.record_count()))
            return asyncio.shield(batch.future)

        setattr(producer, "send_batch", send_batch)  # noqa: B010
        records = [(b"k%d" % n, b"v" * 40) for n in range(12)]
        futures = await authorizer.send_records(producer, "ledger.events", 2, records)
        base = 500
        for batch, _, _, count in sent:
            batch.done(base_offset=base)
            base += count
        await producer.stop()
        return list(await asyncio.gather(*futures))

    lasts = asyncio.run(scenario())
    counts = [count for _, _, _, count in sent]
    assert len(sent) > 1 and sum(counts) == 12  # a full batch is sent, a new one started
    assert {(topic, partition) for _, topic, partition, _ in sent} == {("ledger.events", 2)}
    ends = [500 + sum(counts[: i + 1]) - 1 for i in range(len(counts))]
    assert [(last.topic, last.partition, last.offset) for last in lasts] == [
        ("ledger.events", 2, end) for end in ends
    ]


# --- the fetch loop --------------------------------------------------------------------------


class Fetcher:
    """faust's fetcher service, as far as the loop looks at it."""

    def __init__(self) -> None:
        self._stopped = asyncio.Event()


def _record(topic: str, partition: int, offset: int) -> ConsumerRecord[bytes, bytes]:
    return ConsumerRecord(
        topic=topic, partition=partition, offset=offset, timestamp=1_000 * offset,
        timestamp_type=0, key=b"k%d" % offset, value=b"v%d" % offset, checksum=None,
        serialized_key_size=3, serialized_value_size=3, headers=[],
    )  # fmt: skip


class Scripted:
    """A consumer built by faust from the ledger's class, its fetch answering from a script; once
    the script is done, the consumer stops."""

    def __init__(self, fetches: list[tuple[dict[TP, list[Any]], set[TP] | None]]) -> None:
        self.fetches = fetches
        self.handled: list[dict[int, list[Any]]] = []
        self.called: list[Any] = []
        self.app = faust.App(
            "ledger-fetch-test", broker="kafka://127.0.0.1:1", store="memory://",
            web_enabled=False,
        )  # fmt: skip

        async def handle(fetched: dict[int, list[Any]]) -> None:
            self.handled.append(fetched)

        async def callback(message: Any) -> None:
            self.called.append(message)

        # As streams/app.py binds it: faust builds the consumer from the transport's class.
        setattr(self.app.transport, "Consumer", consumer_class(COMMANDS, handle))  # noqa: B010
        consumer = self.app.consumer
        assert isinstance(consumer, LedgerConsumer)
        self.consumer: Any = cast(Any, consumer)  # its private parts scripted below
        self.consumer.callback = callback
        self.consumer._wait_next_records = self._next

    async def drain(self, fetcher: Fetcher | None = None) -> Scripted:
        try:
            await self.consumer._drain_messages(fetcher or Fetcher())
        finally:
            self.close()
        return self

    def close(self) -> None:
        # The consumer's thread service made an event loop of its own, never started.
        self.consumer._thread.thread_loop.close()

    async def _next(self, timeout: float) -> tuple[dict[TP, list[Any]], set[TP] | None]:
        if not self.fetches:
            self.consumer._stopped.set()
            return {}, None
        return self.fetches.pop(0)


def _offsets(messages: list[Any]) -> list[tuple[str, int, int]]:
    return [(m.topic, m.partition, m.offset) for m in messages]


def test_a_consumer_built_by_faust_is_the_ledgers() -> None:
    async def build() -> Any:
        run = Scripted([])
        run.close()
        return run.consumer

    consumer = asyncio.run(build())
    assert consumer.batch_topic == COMMANDS and consumer.batch_handler is not None
    assert consumer._buffered_partitions == set()
    assert consumer.flow_active is True and consumer.should_stop is False
    assert not consumer._stopped.is_set()
    assert consumer.app.consumer_generation_id == 0


def test_fetched_commands_go_to_the_handler_per_partition_and_the_rest_to_the_callback() -> None:
    commands_0, commands_1, paused = TP(COMMANDS, 0), TP(COMMANDS, 1), TP(COMMANDS, 2)
    buffered, changelog = TP(COMMANDS, 3), TP(CHANGELOG, 0)
    fetched = {
        commands_0: [_record(COMMANDS, 0, 10), _record(COMMANDS, 0, 11)],
        changelog: [_record(CHANGELOG, 0, 4), _record(CHANGELOG, 0, 5)],
        commands_1: [_record(COMMANDS, 1, 7)],
        paused: [_record(COMMANDS, 2, 1)],  # its table is recovering: fetched again on resume
        buffered: [_record(COMMANDS, 3, 2)],
    }

    async def scenario() -> Scripted:
        run = Scripted([(fetched, {commands_0, commands_1, changelog})])
        run.consumer._buffered_partitions.add(buffered)
        return await run.drain()

    run = asyncio.run(scenario())
    assert _offsets(run.called) == [(CHANGELOG, 0, 4), (CHANGELOG, 0, 5)]
    (handled,) = run.handled
    assert {p: _offsets(messages) for p, messages in handled.items()} == {
        0: [(COMMANDS, 0, 10), (COMMANDS, 0, 11)],
        1: [(COMMANDS, 1, 7)],
        3: [(COMMANDS, 3, 2)],
    }
    message = handled[0][0]
    assert (message.key, message.value, message.tp) == (b"k10", b"v10", commands_0)
    assert message.timestamp == 10.0  # seconds, from the record's milliseconds


def test_no_active_set_means_every_partition() -> None:
    async def scenario() -> Scripted:
        return await Scripted([({TP(COMMANDS, 5): [_record(COMMANDS, 5, 0)]}, None)]).drain()

    assert [list(h) for h in asyncio.run(scenario()).handled] == [[5]]


def test_a_rebalance_during_the_callbacks_withholds_the_commands() -> None:
    fetched = {
        TP(CHANGELOG, 0): [_record(CHANGELOG, 0, 4)],
        TP(COMMANDS, 0): [_record(COMMANDS, 0, 10)],
    }

    async def scenario() -> Scripted:
        run = Scripted([(fetched, None)])

        async def callback(message: Any) -> None:
            run.called.append(message)
            run.app.consumer_generation_id += 1  # partitions assigned anew meanwhile

        run.consumer.callback = callback
        return await run.drain()

    run = asyncio.run(scenario())
    assert len(run.called) == 1 and run.handled == []


def test_nothing_is_delivered_while_the_flow_is_stopped_or_the_consumer_stops() -> None:
    fetched = {TP(COMMANDS, 0): [_record(COMMANDS, 0, 10)]}

    async def scenario() -> list[Scripted]:
        stopped_flow = Scripted([(fetched, None)])
        stopped_flow.consumer.flow_active = False
        crashed = Scripted([(fetched, None)])
        crashed.consumer._crashed.set()  # should_stop, while the loop's own flags are not set
        return [await stopped_flow.drain(), await crashed.drain()]

    for run in asyncio.run(scenario()):
        assert (run.handled, run.called, run.fetches) == ([], [], [])


def test_the_loop_ends_when_the_fetcher_stops() -> None:
    async def scenario() -> Scripted:
        run = Scripted([({TP(COMMANDS, 0): [_record(COMMANDS, 0, 10)]}, None)])
        fetcher = Fetcher()
        fetcher._stopped.set()
        return await run.drain(fetcher)

    run = asyncio.run(scenario())
    assert run.handled == [] and len(run.fetches) == 1  # not even fetched
