"""Moved to ledger/kafka/partitioning.py (issue 17). Kept for streams/authorizer.py and
ledger/bench/ until they move."""

from ledger.kafka.partitioning import murmur2, partition_for

__all__ = ["murmur2", "partition_for"]
