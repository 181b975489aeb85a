"""Moved to ledger/kafka/topics.py (issue 17). Kept for streams/authorizer.py,
projections/writer.py, projections/replay.py and ledger/bench/ until they move."""

from ledger.kafka.topics import (
    COMMANDS,
    DLQ,
    EVENTS,
    MARKED,
    PARTITION_MARKER_KEY,
    PARTITION_MARKER_VALUE,
    REFERENCE,
    TOPICS,
    WORKER_SOURCES,
    TopicSpec,
    is_marker,
)

__all__ = [
    "COMMANDS",
    "DLQ",
    "EVENTS",
    "MARKED",
    "PARTITION_MARKER_KEY",
    "PARTITION_MARKER_VALUE",
    "REFERENCE",
    "TOPICS",
    "WORKER_SOURCES",
    "TopicSpec",
    "is_marker",
]
