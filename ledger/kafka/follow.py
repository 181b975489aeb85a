"""Read a topic to its end, signal ready, then follow it: the loop of every reader that keeps a
topic in memory (the API's decision listener, the reference reader). Written once (issue 17).

The end is the end offsets as they were when the reader started: ready means "holds at least
everything that was on the topic before me", which is what a worker deciding with the reference
data, or an API answering from the recent decisions, needs before it serves."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ledger.kafka.settings import aiokafka_reader_config

# partition, its end offset → where to start reading it; None: from the start of its log.
StartAt = Callable[[int, int], int | None]


def from_the_start(_partition: int, _end: int) -> int | None:
    return None


async def follow(
    bootstrap_servers: str,
    client_id: str,
    topic: str,
    partitions: int,
    apply: Callable[[bytes], None],
    on_ready: Callable[[], None],
    *,
    start_at: StartAt = from_the_start,
    auto_offset_reset: str,
    poll_timeout_ms: int,
) -> None:
    """Read partitions 0 to `partitions - 1` of the topic with no consumer group, each from
    `start_at`, hand every record's value to `apply`, call `on_ready` once all have reached the end
    they had at start, and go on for ever (until cancelled)."""
    from aiokafka import AIOKafkaConsumer, TopicPartition

    consumer = AIOKafkaConsumer(
        **aiokafka_reader_config(bootstrap_servers, client_id, auto_offset_reset=auto_offset_reset)
    )
    await consumer.start()
    try:
        # The partition count comes from the caller: aiokafka's partitions_for_topic answers
        # None until the consumer has subscribed, and this one assigns.
        assigned = [TopicPartition(topic, p) for p in range(partitions)]
        consumer.assign(assigned)
        ends: dict[Any, int] = await consumer.end_offsets(assigned)
        for tp in assigned:
            start = start_at(tp.partition, ends[tp])
            if start is None:
                await consumer.seek_to_beginning(tp)
            else:
                consumer.seek(tp, start)
        ready = False
        while True:
            if not ready:
                positions = [await consumer.position(tp) for tp in assigned]
                ready = all(p >= ends[tp] for p, tp in zip(positions, assigned, strict=True))
                if ready:
                    on_ready()
            batches = await consumer.getmany(timeout_ms=poll_timeout_ms)
            for records in batches.values():
                for record in records:
                    apply(record.value)
    finally:
        await consumer.stop()
