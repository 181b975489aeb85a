"""The recorded state of a running stack, so that status and down work from another shell."""

from __future__ import annotations

import os
from pathlib import Path

import msgspec

from ledger.stack.proc import ProcessRecord

STATE_FILE = "stack.json"


class KafkaState(msgspec.Struct):
    process: ProcessRecord
    port: int
    controller_port: int
    log_dir: str
    log_file: str
    bootstrap_servers: str  # every node's client address, for a cluster
    node_id: int = 1


class PostgresState(msgspec.Struct):
    process: ProcessRecord
    port: int
    data_dir: str
    log_file: str
    os_user: str | None  # the OS user it runs as when the stack is started by root
    dsn: str


class StackState(msgspec.Struct):
    kafka: KafkaState | None = None  # node 1
    kafka_others: list[KafkaState] = []  # nodes 2..N of a local cluster (LEDGER_KAFKA_BROKERS)
    postgres: PostgresState | None = None
    topic_partitions: int | None = None


def state_path(home: Path) -> Path:
    return home / STATE_FILE


def load(home: Path) -> StackState | None:
    path = state_path(home)
    if not path.exists():
        return None
    try:
        return msgspec.json.decode(path.read_bytes(), type=StackState)
    except msgspec.DecodeError:
        return None  # unreadable: treated as stale, the processes it named are checked by port


def save(home: Path, state: StackState) -> None:
    """Written whole to a temporary file and renamed: a crash never leaves half a state file.
    Mode 0600: it holds the database password."""
    home.mkdir(parents=True, exist_ok=True)
    path = state_path(home)
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as out:
        out.write(msgspec.json.format(msgspec.json.encode(state)))
    os.replace(tmp, path)


def remove(home: Path) -> None:
    state_path(home).unlink(missing_ok=True)


def kafka_nodes(state: StackState) -> list[KafkaState]:
    """Every local Kafka node the state records, node 1 first."""
    return ([state.kafka] if state.kafka is not None else []) + list(state.kafka_others)
