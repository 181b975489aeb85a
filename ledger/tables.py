"""Reading the workers' tables from their changelog topics: what `ledger balances` prints and what
`ledger reconcile` compares, without asking a worker. A changelog keeps each key's latest value
last; a key of a table lives in the changelog partition of the source partition that wrote it,
which for every table of the ledger is partition_for(key)."""

from __future__ import annotations

from ledger.core.balances import Balance
from ledger.core.batch import PartitionSummary, decode_summary, sum_balances, summary_key
from ledger.kafka.groups import changelog_topic
from ledger.kafka.partitioning import partition_for
from ledger.kafka.read import read_records
from schemas.types import Party

STALL_SECONDS_MAX = 60  # reading a changelog: no record for this long is an error


def read_partitions(
    bootstrap_servers: str, topic: str, partitions: list[int], bookkeeping: bool = False,
    keys: frozenset[bytes] | None = None,
) -> dict[bytes, bytes]:  # fmt: skip
    """The latest value of every key in these partitions of a changelog (deleted keys left out;
    the workers' own keys, which start with a NUL byte, only if `bookkeeping`), or of `keys`
    only: the others are not kept while reading (1.1 million account states, when only the
    partitions' summaries are wanted)."""
    latest: dict[bytes | None, bytes | None] = {}
    for record in read_records(bootstrap_servers, "ledger-tables", topic, STALL_SECONDS_MAX,
                               partitions):  # fmt: skip
        if keys is None or record.key in keys:
            latest[record.key] = record.value
    return {
        key: value
        for key, value in latest.items()
        if value is not None and key is not None and (bookkeeping or not key.startswith(b"\x00"))
    }


def read_key(bootstrap_servers: str, table: str, key: str, partitions: int) -> bytes | None:
    found = read_partitions(
        bootstrap_servers, changelog_topic(table), [partition_for(key, partitions)],
        keys=frozenset({key.encode()}),
    )  # fmt: skip
    return found.get(key.encode())


def read_table(bootstrap_servers: str, table: str, partitions: int) -> dict[bytes, bytes]:
    return read_partitions(bootstrap_servers, changelog_topic(table), list(range(partitions)))


def read_summaries(
    bootstrap_servers: str, table: str, partitions: int
) -> dict[int, PartitionSummary]:
    """Each partition's latest summary (ledger/core/batch.py), for the partitions that have one."""
    found = read_partitions(
        bootstrap_servers, changelog_topic(table), list(range(partitions)), bookkeeping=True,
        keys=frozenset(summary_key(p) for p in range(partitions)),
    )  # fmt: skip
    return {p: decode_summary(found[summary_key(p)]) for p in range(partitions)
            if summary_key(p) in found}  # fmt: skip


def read_balances(
    bootstrap_servers: str, table: str, party: Party, partitions: int
) -> dict[str, Balance]:
    """Every publisher's or ISP's balance: the sum of the partial balances that each partition's
    summary holds (ledger/core/batch.py)."""
    summaries = read_summaries(bootstrap_servers, table, partitions).values()
    return sum_balances(s.publishers if party == "publisher" else s.isps for s in summaries)
