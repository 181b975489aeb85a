"""Every Kafka client's settings, built in this one module from named constants (STYLE.md §8,
issue 17): kafka-python's producer, consumer and admin client, aiokafka's producer and consumer,
and faust's settings.

Library defaults are chosen for other workloads; a ledger wants each of these on purpose. Where a
client always ran with a library default, the default is written out here under a name, so that
what each process runs with can be read in one place (the values are those each site had before
issue 17: nothing changed).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

# Producers: a record acknowledged to a caller is on every in-sync replica, and a retry never
# writes it twice or out of order.
PRODUCER_ACKS = "all"
PRODUCER_ENABLE_IDEMPOTENCE = True
PRODUCER_MAX_IN_FLIGHT_REQUESTS = 5  # the most that idempotence keeps in order (KIP-185)
PRODUCER_LINGER_MS = 5
PRODUCER_DELIVERY_TIMEOUT_MS = 120_000
PRODUCER_REQUEST_TIMEOUT_MS = 30_000
# No compression: the codecs need native packages of their own in kafka-python, and events
# are a few hundred bytes on a local broker.
PRODUCER_COMPRESSION: str | None = None
PRODUCER_BATCH_SIZE_BYTES = 64 * 1024

# Consumers: progress is stored with the output, never auto-committed; a new group starts from
# the beginning of the log, and reads only committed records.
CONSUMER_ENABLE_AUTO_COMMIT = False
CONSUMER_AUTO_OFFSET_RESET = "earliest"
CONSUMER_ISOLATION_LEVEL = "read_committed"
CONSUMER_MAX_POLL_RECORDS = 2000
CONSUMER_SESSION_TIMEOUT_MS = 30_000
CONSUMER_HEARTBEAT_INTERVAL_MS = 3_000
CONSUMER_MAX_POLL_INTERVAL_MS = 300_000
# The workers' group (faust): a worker lost without leaving (kill -9, a lost machine) keeps its
# partitions undecided until its session expires, static member or not, so their session is a
# third of the others'. Measured, a worker killed with -9 and not restarted, the survivor's first
# fact on its partitions (3 kills each): 30 s / 3 s heartbeat: 31.7 to 32.1 s; 10 s / 1 s: 9.6 to
# 10.9 s.
# aiokafka heartbeats from faust's consumer thread, not the event loop that decides, so a slow
# batch does not cost the membership; a one-second heartbeat keeps the survivor's wait for the
# rebalance short and leaves 9 s of the session to a worker frozen (streams/suspension.py).
WORKER_SESSION_TIMEOUT_MS = 10_000
WORKER_HEARTBEAT_INTERVAL_MS = 1_000
# kafka-python checks each record batch's CRC-32C, in C with the crc32c package (pyproject.toml:
# its own pure-Python CRC cost ~110 µs a record).
CONSUMER_CHECK_CRCS = True
# Readers that seek where they start and, should that offset have left the log, jump to its end
# rather than its start: the API's decision listener, replay and the bench's fact watcher.
READER_OFFSET_RESET_LATEST = "latest"
# Offsets only, nothing read (the bench's record counts): the high watermark, which counts every
# record appended (the ledger uses no transactions, so it equals the read_committed end).
OFFSETS_ISOLATION_LEVEL = "read_uncommitted"

# Admin clients (kafka-python): its default request timeout, written out.
ADMIN_REQUEST_TIMEOUT_MS = 30_000


def producer_config(bootstrap_servers: str, client_id: str) -> dict[str, Any]:
    """kafka-python's producer: the bulk producer, the stack's markers, the smoke test."""
    return {
        "bootstrap_servers": bootstrap_servers,
        "client_id": client_id,
        "acks": PRODUCER_ACKS,
        "enable_idempotence": PRODUCER_ENABLE_IDEMPOTENCE,
        "max_in_flight_requests_per_connection": PRODUCER_MAX_IN_FLIGHT_REQUESTS,
        "linger_ms": PRODUCER_LINGER_MS,
        "delivery_timeout_ms": PRODUCER_DELIVERY_TIMEOUT_MS,
        "request_timeout_ms": PRODUCER_REQUEST_TIMEOUT_MS,
        "compression_type": PRODUCER_COMPRESSION,
        "batch_size": PRODUCER_BATCH_SIZE_BYTES,
    }


def consumer_config(
    bootstrap_servers: str,
    client_id: str,
    group_id: str | None,
    *,
    check_crcs: bool = CONSUMER_CHECK_CRCS,
) -> dict[str, Any]:
    """kafka-python's consumer: the CLI's readers, the worker's offset seeding, the fact check."""
    return {
        "bootstrap_servers": bootstrap_servers,
        "client_id": client_id,
        "group_id": group_id,
        "enable_auto_commit": CONSUMER_ENABLE_AUTO_COMMIT,
        "auto_offset_reset": CONSUMER_AUTO_OFFSET_RESET,
        "isolation_level": CONSUMER_ISOLATION_LEVEL,
        "max_poll_records": CONSUMER_MAX_POLL_RECORDS,
        "session_timeout_ms": CONSUMER_SESSION_TIMEOUT_MS,
        "heartbeat_interval_ms": CONSUMER_HEARTBEAT_INTERVAL_MS,
        "max_poll_interval_ms": CONSUMER_MAX_POLL_INTERVAL_MS,
        "check_crcs": check_crcs,
    }


def offsets_consumer_config(bootstrap_servers: str, client_id: str) -> dict[str, Any]:
    """kafka-python's consumer that only asks for offsets: no group, every record appended
    counted, and no topic created by asking for one."""
    return {
        "bootstrap_servers": bootstrap_servers,
        "client_id": client_id,
        "group_id": None,
        "enable_auto_commit": CONSUMER_ENABLE_AUTO_COMMIT,
        "isolation_level": OFFSETS_ISOLATION_LEVEL,
        "allow_auto_create_topics": False,
    }


def admin_config(
    bootstrap_servers: str, client_id: str, request_timeout_ms: int = ADMIN_REQUEST_TIMEOUT_MS
) -> dict[str, Any]:
    """kafka-python's admin client."""
    return {
        "bootstrap_servers": bootstrap_servers,
        "client_id": client_id,
        "request_timeout_ms": request_timeout_ms,
    }


# aiokafka's producers. The authorizer's: facts and changelog records handed over in record
# batches that are already whole, so they go at once (no linger): a batch awaits its facts, then
# its changelog records, and a 2 ms linger put 4 ms into every batch's cycle (stream bench, one
# run each at ~7,000/s paced: cycle p50 25 -> 14 ms, decision latency p50 56 -> 40 ms). Every
# batch is awaited before its commands are acknowledged. Half a MiB: under the 1 MiB a request and
# the broker's message.max.bytes allow, with room for the batch's own headers.
AIOKAFKA_PRODUCER_LINGER_MS = 0
AIOKAFKA_PRODUCER_MAX_BATCH_BYTES = 512 * 1024
# The checkout API's: one command per request, lingered as the bulk producer lingers
# (PRODUCER_LINGER_MS), in aiokafka's default batch size, which it always had.
API_PRODUCER_MAX_BATCH_BYTES = 16 * 1024
# The projection writer's dead letters: rare, sent at once, with aiokafka's defaults, which it
# always had (no linger, 16 KiB batches, a 40 s request timeout).
DEAD_LETTER_PRODUCER_LINGER_MS = 0
DEAD_LETTER_PRODUCER_MAX_BATCH_BYTES = 16 * 1024
DEAD_LETTER_PRODUCER_REQUEST_TIMEOUT_MS = 40_000


def aiokafka_producer_config(
    bootstrap_servers: str,
    client_id: str,
    *,
    linger_ms: int = AIOKAFKA_PRODUCER_LINGER_MS,
    max_batch_bytes: int = AIOKAFKA_PRODUCER_MAX_BATCH_BYTES,
    request_timeout_ms: int = PRODUCER_REQUEST_TIMEOUT_MS,
) -> dict[str, Any]:
    """aiokafka's producer, as the authorizer sends (the defaults), or lingered and batched as a
    caller says (the named sets below, the benchmarks)."""
    return {
        "bootstrap_servers": bootstrap_servers,
        "client_id": client_id,
        "acks": PRODUCER_ACKS,
        "enable_idempotence": PRODUCER_ENABLE_IDEMPOTENCE,
        "linger_ms": linger_ms,
        "max_batch_size": max_batch_bytes,
        "request_timeout_ms": request_timeout_ms,
        "compression_type": PRODUCER_COMPRESSION,
    }


def api_producer_config(bootstrap_servers: str, client_id: str) -> dict[str, Any]:
    return aiokafka_producer_config(
        bootstrap_servers, client_id,
        linger_ms=PRODUCER_LINGER_MS, max_batch_bytes=API_PRODUCER_MAX_BATCH_BYTES,
    )  # fmt: skip


def dead_letter_producer_config(bootstrap_servers: str, client_id: str) -> dict[str, Any]:
    return aiokafka_producer_config(
        bootstrap_servers, client_id,
        linger_ms=DEAD_LETTER_PRODUCER_LINGER_MS,
        max_batch_bytes=DEAD_LETTER_PRODUCER_MAX_BATCH_BYTES,
        request_timeout_ms=DEAD_LETTER_PRODUCER_REQUEST_TIMEOUT_MS,
    )  # fmt: skip


# aiokafka's consumers fetch up to 50 MiB a request and 1 MiB a partition (its defaults); a reader
# that wants bigger fetches names its total, and gets a quarter of it per partition.
AIOKAFKA_FETCH_BYTES_MAX = 50 * 1024 * 1024
AIOKAFKA_PARTITION_FETCH_BYTES_MAX = 1024 * 1024


def _fetch_sizes(fetch_bytes_max: int | None) -> dict[str, int]:
    if fetch_bytes_max is None:
        return {
            "fetch_max_bytes": AIOKAFKA_FETCH_BYTES_MAX,
            "max_partition_fetch_bytes": AIOKAFKA_PARTITION_FETCH_BYTES_MAX,
        }
    return {"fetch_max_bytes": fetch_bytes_max, "max_partition_fetch_bytes": fetch_bytes_max // 4}


def aiokafka_group_consumer_config(
    bootstrap_servers: str,
    client_id: str,
    group_id: str,
    *,
    group_instance_id: str | None = None,
    fetch_bytes_max: int | None = None,
) -> dict[str, Any]:
    """aiokafka's consumer in a consumer group (the projection writer)."""
    return {
        "bootstrap_servers": bootstrap_servers,
        "client_id": client_id,
        "group_id": group_id,
        "group_instance_id": group_instance_id,
        "enable_auto_commit": CONSUMER_ENABLE_AUTO_COMMIT,
        "auto_offset_reset": CONSUMER_AUTO_OFFSET_RESET,
        "isolation_level": CONSUMER_ISOLATION_LEVEL,
        "session_timeout_ms": CONSUMER_SESSION_TIMEOUT_MS,
        "heartbeat_interval_ms": CONSUMER_HEARTBEAT_INTERVAL_MS,
        "max_poll_interval_ms": CONSUMER_MAX_POLL_INTERVAL_MS,
        **_fetch_sizes(fetch_bytes_max),
    }


def aiokafka_reader_config(
    bootstrap_servers: str,
    client_id: str,
    *,
    auto_offset_reset: str = CONSUMER_AUTO_OFFSET_RESET,
    fetch_bytes_max: int | None = None,
) -> dict[str, Any]:
    """aiokafka's consumer with no group, which assigns itself partitions and seeks (the API's
    listener, the reference reader, replay, the bench's watcher): every one reads them all."""
    return {
        "bootstrap_servers": bootstrap_servers,
        "client_id": client_id,
        "group_id": None,
        "enable_auto_commit": CONSUMER_ENABLE_AUTO_COMMIT,
        "auto_offset_reset": auto_offset_reset,
        "isolation_level": CONSUMER_ISOLATION_LEVEL,
        **_fetch_sizes(fetch_bytes_max),
    }


# faust. Offsets are committed every this many seconds (faust's commit timer). Progress that
# counts is each partition's summary in the accounts changelog (ledger/core/batch.py); the
# committed offset only says where a worker without it starts reading.
COMMIT_INTERVAL_SECONDS = 1.0
# The most records one fetch hands to the authorizer (all partitions together): measured in the
# batched prototype (shared/PERF.md), above it a batch only grows the latency.
FETCH_RECORDS_MAX = 10_000
FAUST_PRODUCER_ACKS = -1  # Kafka's number for "all": faust's setting takes an int
# faust's own producer (table changelogs through faust, nothing on the hot path any more).
FAUST_PRODUCER_LINGER_MS = PRODUCER_LINGER_MS
# Replicas of the changelog topics faust declares: 1 on the one-broker stack, 3 on a cluster
# (LEDGER_TOPIC_REPLICATION, set by the three-broker fault scenarios), where a table whose
# changelog had one replica would stop with the broker that held it.
FAUST_TOPIC_REPLICATION_DEFAULT = 1
# faust reads its timeouts in seconds.
_MS_PER_SECOND = 1000.0


def faust_settings(
    bootstrap_servers: str,
    *,
    partitions: int,
    store_url: str,
    data_dir: Path,
    group_instance_id: str | None,
) -> dict[str, Any]:
    """faust's settings for a worker (streams/config.py says which worker)."""
    return {
        "broker": f"kafka://{bootstrap_servers}",
        "store": store_url,
        "datadir": str(data_dir),
        # at_least_once: faust's exactly_once still has open duplicate bugs (DESIGN.md §5).
        # Correctness comes from deterministic decisions and idempotent consumers.
        "processing_guarantee": "at_least_once",
        "topic_partitions": partitions,
        "topic_replication_factor": int(
            os.environ.get("LEDGER_TOPIC_REPLICATION") or FAUST_TOPIC_REPLICATION_DEFAULT
        ),
        "topic_allow_declare": True,  # faust declares its own changelog and repartition topics
        # No standby copies: a failed-over partition is restored from its changelog, and each
        # worker holds only its own partitions (memory).
        "table_standby_replicas": 0,
        # Commits by time only (the fetch loop of streams/fetch.py does not count records).
        "broker_commit_interval": COMMIT_INTERVAL_SECONDS,
        # Static membership (KIP-345): a worker that restarts under the same name within the
        # session timeout gets its partitions back without a rebalance.
        "consumer_group_instance_id": group_instance_id,
        "broker_session_timeout": WORKER_SESSION_TIMEOUT_MS / _MS_PER_SECOND,
        "broker_heartbeat_interval": WORKER_HEARTBEAT_INTERVAL_MS / _MS_PER_SECOND,
        "broker_max_poll_interval": CONSUMER_MAX_POLL_INTERVAL_MS / _MS_PER_SECOND,
        "broker_max_poll_records": FETCH_RECORDS_MAX,
        "consumer_auto_offset_reset": CONSUMER_AUTO_OFFSET_RESET,
        "producer_acks": FAUST_PRODUCER_ACKS,
        "producer_linger_ms": FAUST_PRODUCER_LINGER_MS,
        "producer_request_timeout": PRODUCER_REQUEST_TIMEOUT_MS / _MS_PER_SECOND,
        # No stream buffers the commands (streams/fetch.py); nothing to wait for on a stop.
        "stream_wait_empty": False,
        "web_enabled": False,  # metrics are served by prometheus-client, see streams/metrics.py
        "worker_redirect_stdouts": False,
    }


def faust_producer_extra() -> dict[str, Any]:
    """What faust's producer adds to its own settings: faust turns idempotence on only inside
    transactions, and a ledger wants it always (streams/app.py's IdempotentProducer)."""
    return {"acks": PRODUCER_ACKS, "enable_idempotence": PRODUCER_ENABLE_IDEMPOTENCE}
