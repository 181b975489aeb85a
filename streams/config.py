"""What a worker needs to know, and its faust settings (built in ledger/kafka/settings.py, with
every other Kafka client's: STYLE.md §8, issue 17)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from ledger.kafka import settings
from ledger.kafka.groups import APP_ID

__all__ = ["ROCKSDB_OPTIONS", "StoreKind", "WorkerConfig", "faust_settings"]

StoreKind = Literal["rocksdb", "memory"]

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
    return settings.faust_settings(
        config.bootstrap_servers,
        partitions=config.partitions,
        store_url="rocksdb://" if config.store == "rocksdb" else "memory://",
        data_dir=config.data_dir,
        group_instance_id=instance_id(config) if config.static_membership else None,
    )


def suspension_seconds() -> float:
    """How long the event loop may stand still before the worker counts itself out of the group
    (streams/suspension.py): its session timeout less one heartbeat interval, the longest its
    last heartbeat can have been before the freeze."""
    return (settings.WORKER_SESSION_TIMEOUT_MS - settings.WORKER_HEARTBEAT_INTERVAL_MS) / 1000.0
