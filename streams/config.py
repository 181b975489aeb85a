"""What a worker needs to know, and every faust setting written out (STYLE.md §8)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

APP_ID = "internet-plus-ledger"
StoreKind = Literal["rocksdb", "memory"]

# Offsets are committed every this many seconds (faust's commit timer). Progress that counts is
# each partition's summary in the accounts changelog (ledger/core/batch.py); the committed offset
# only says where a worker without it starts reading.
COMMIT_INTERVAL_SECONDS = 1.0
# The most records one fetch hands to the authorizer (all partitions together): measured in the
# batched prototype (shared/PERF.md), above it a batch only grows the latency.
FETCH_RECORDS_MAX = 10_000
# RocksDB per table partition: a small block cache and write buffers, so that a worker holding
# 1.1 million accounts stays under 1 GiB (faust's defaults are a 2 GiB cache per partition).
ROCKSDB_OPTIONS: dict[str, int] = {
    "block_cache_size": 32 * 1024 * 1024,
    "block_cache_compressed_size": 0,
    "write_buffer_size": 16 * 1024 * 1024,
    "max_write_buffer_number": 2,
    "target_file_size_base": 32 * 1024 * 1024,
}


@dataclass(frozen=True)
class WorkerConfig:
    bootstrap_servers: str
    partitions: int
    data_dir: Path
    store: StoreKind = "rocksdb"
    metrics_port: int | None = None
    name: str = "w1"  # unique per worker in the group: its static membership id
    # Static membership (KIP-345), off by default: `ledger worker --static` turns it on. Measured
    # with faust 0.15.3: a worker could get no record at all after static members had come and
    # gone; dynamic membership does not show it.
    static_membership: bool = False
    app_id: str = APP_ID
    # topic → partition → first offset still in the log: where a partition with no progress of
    # ours starts (streams/gate.py).
    log_starts: dict[str, dict[int, int]] = field(default_factory=dict)


def instance_id(config: WorkerConfig) -> str:
    return f"{config.app_id}-{config.name}"


def faust_settings(config: WorkerConfig) -> dict[str, Any]:
    return {
        "broker": f"kafka://{config.bootstrap_servers}",
        "store": "rocksdb://" if config.store == "rocksdb" else "memory://",
        "datadir": str(config.data_dir),
        # at_least_once: faust's exactly_once still has open duplicate bugs (DESIGN.md §5).
        # Correctness comes from deterministic decisions and idempotent consumers.
        "processing_guarantee": "at_least_once",
        "topic_partitions": config.partitions,
        "topic_replication_factor": 1,
        "topic_allow_declare": True,  # faust declares its own changelog and repartition topics
        # No standby copies: a failed-over partition is restored from its changelog, and each
        # worker holds only its own partitions (memory).
        "table_standby_replicas": 0,
        # Commits by time only (the fetch loop of streams/fetch.py does not count records).
        "broker_commit_interval": COMMIT_INTERVAL_SECONDS,
        # Static membership (KIP-345): a worker that restarts under the same name within the
        # session timeout gets its partitions back without a rebalance.
        "consumer_group_instance_id": instance_id(config) if config.static_membership else None,
        "broker_session_timeout": 30.0,
        "broker_heartbeat_interval": 3.0,
        "broker_max_poll_interval": 300.0,
        "broker_max_poll_records": FETCH_RECORDS_MAX,
        "consumer_auto_offset_reset": "earliest",
        "producer_acks": -1,  # all in-sync replicas
        "producer_linger_ms": 5,  # faust's own producer: nothing on the hot path any more
        "producer_request_timeout": 30.0,
        # No stream buffers the commands (streams/fetch.py); nothing to wait for on a stop.
        "stream_wait_empty": False,
        "web_enabled": False,  # metrics are served by prometheus-client, see streams/metrics.py
        "worker_redirect_stdouts": False,
    }
