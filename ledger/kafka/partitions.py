"""The partitions of topics as a kafka-python consumer sees them: listed here once for the worker's
offset seeding, the partition markers, status, the fact check, the demo and the benchmarks."""

from __future__ import annotations

from typing import Any


def topic_partitions(consumer: Any, *names: str) -> list[Any]:
    """Every partition of these topics (kafka-python TopicPartitions), in topic then partition
    order; a topic the broker does not know has none."""
    from kafka import TopicPartition

    return [
        TopicPartition(topic, p)
        for topic in names
        for p in sorted(consumer.partitions_for_topic(topic) or ())
    ]


def end_offsets(consumer: Any, topic: str) -> dict[Any, int]:
    """The end offset of each partition of the topic, as it is now."""
    return dict(consumer.end_offsets(topic_partitions(consumer, topic)))
