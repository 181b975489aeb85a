"""The partition markers (ledger/kafka/topics.py, PARTITION_MARKER_KEY): written when the stack
creates the topics and again by every worker as it starts, so that no partition the workers read
starts empty at offset 0. Here, below both, since issue 17: the worker imported it from the local
stack's manager."""

from __future__ import annotations

from ledger.kafka import topics
from ledger.kafka.partitions import topic_partitions
from ledger.kafka.settings import consumer_config, producer_config

MARKER_SEND_TIMEOUT_SECONDS = 30


def mark_empty_partitions(bootstrap_servers: str) -> int:
    """Write the partition marker at offset 0 of every empty partition of topics.MARKED.
    Returns how many were written."""
    from kafka import KafkaConsumer, KafkaProducer

    consumer = KafkaConsumer(**consumer_config(bootstrap_servers, "ledger-mark", None))
    try:
        wanted = topic_partitions(consumer, *topics.MARKED)
        empty = [tp for tp, end in consumer.end_offsets(wanted).items() if end == 0]
    finally:
        consumer.close()
    if empty:
        producer = KafkaProducer(**producer_config(bootstrap_servers, "ledger-mark"))
        try:
            for tp in empty:
                producer.send(
                    tp.topic, key=topics.PARTITION_MARKER_KEY,
                    value=topics.PARTITION_MARKER_VALUE, partition=tp.partition,
                ).get(timeout=MARKER_SEND_TIMEOUT_SECONDS)  # fmt: skip
        finally:
            producer.close()
    return len(empty)
