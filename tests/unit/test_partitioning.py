"""Our partitioner agrees with Kafka's default (through kafka-python's, which follows the Java
client byte for byte)."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st
from kafka.partitioner.default import murmur2 as kafka_murmur2

from ledger.kafka.partitioning import murmur2, partition_for


@given(st.binary(max_size=80))
def test_murmur2_matches_kafka(data: bytes) -> None:
    assert murmur2(data) & 0x7FFFFFFF == kafka_murmur2(data) & 0x7FFFFFFF


@given(st.text(min_size=1, max_size=64), st.integers(1, 64))
def test_partition_is_in_range_and_stable(key: str, partitions: int) -> None:
    first = partition_for(key, partitions)
    assert 0 <= first < partitions
    assert partition_for(key, partitions) == first


def test_known_values() -> None:
    # Values from Apache Kafka's own test of Utils.murmur2, as signed Java ints.
    assert murmur2(b"21") == (-973932308) & 0xFFFFFFFF
    assert murmur2(b"foobar") == (-790332482) & 0xFFFFFFFF
    assert murmur2(b"a-little-bit-long-string") == (-985981536) & 0xFFFFFFFF
