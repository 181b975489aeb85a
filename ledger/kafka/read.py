"""Reading a topic from its start up to an end, with kafka-python and no consumer group: what the
fact check (`ledger reconcile`) and the tables' reader (`ledger balances`, `ledger table get`)
read."""

from __future__ import annotations

import time
from collections.abc import Iterator, Mapping
from typing import NamedTuple

from ledger.kafka.partitions import topic_partitions
from ledger.kafka.settings import consumer_config

POLL_TIMEOUT_MS = 500


class Record(NamedTuple):
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None


def read_records(
    bootstrap: str, client_id: str, topic: str, stall_seconds: float,
    partitions: list[int] | None = None, until: Mapping[int, int] | None = None,
) -> Iterator[Record]:  # fmt: skip
    """Every record of these partitions of the topic (None: all of them; a topic the broker does
    not know has none) from their start, in partition then offset order, each partition up to
    its offset in `until` (None: to its end as it is now). No record for `stall_seconds` is a
    TimeoutError: the time in all grows with the topic, the time between records does not."""
    from kafka import KafkaConsumer

    consumer = KafkaConsumer(**consumer_config(bootstrap, client_id, group_id=None))
    try:
        tps = [tp for tp in topic_partitions(consumer, topic)
               if partitions is None or tp.partition in partitions]  # fmt: skip
        ends = consumer.end_offsets(tps) if tps else {}
        for tp in tps:
            end = ends[tp] if until is None else min(ends[tp], until.get(tp.partition, 0))
            consumer.assign([tp])
            consumer.seek_to_beginning(tp)
            stalled_at = time.monotonic() + stall_seconds
            while consumer.position(tp) < end:
                if time.monotonic() > stalled_at:
                    raise TimeoutError(f"{topic}[{tp.partition}]: no record for {stall_seconds} s")
                records = consumer.poll(timeout_ms=POLL_TIMEOUT_MS).get(tp, [])
                if records:
                    stalled_at = time.monotonic() + stall_seconds
                for record in records:
                    if record.offset < end:
                        yield Record(tp.partition, record.offset, record.key, record.value)
    finally:
        consumer.close()
