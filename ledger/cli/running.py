"""The stack a command runs against, as every command family sees it: the settings (environment
and flags), then the broker and the partitions, then the database. A stack of the cluster's
(LEDGER_BOOTSTRAP_SERVERS, LEDGER_DATABASE_URL) is taken as given; a local one from the state
`ledger stack up` recorded."""

from __future__ import annotations

import argparse
from dataclasses import dataclass

from ledger.errors import LedgerError
from ledger.settings import StackSettings, load_settings


def settings(args: argparse.Namespace) -> StackSettings:
    return load_settings().with_overrides(
        kafka_port=getattr(args, "kafka_port", None),
        kafka_controller_port=getattr(args, "kafka_controller_port", None),
        postgres_port=getattr(args, "postgres_port", None),
        topic_partitions=getattr(args, "partitions", None),
    )


@dataclass(frozen=True)
class Running:
    """The running stack's broker as a command sees it."""

    settings: StackSettings
    bootstrap_servers: str
    partitions: int


@dataclass(frozen=True)
class Connected:
    """The running stack's broker and database."""

    bootstrap_servers: str
    partitions: int
    dsn: str
    settings: StackSettings


def running(args: argparse.Namespace) -> Running:
    from ledger.stack import manager

    found = settings(args)
    if found.external_bootstrap is not None:
        return Running(found, found.external_bootstrap, found.topic_partitions)
    state = manager.connection(found)
    if state.kafka is None:
        raise LedgerError("the stack has no broker: run `ledger stack up`")
    partitions = state.topic_partitions or found.topic_partitions
    return Running(found, state.kafka.bootstrap_servers, partitions)


def connected(args: argparse.Namespace) -> Connected:
    from ledger.stack import manager

    stack = running(args)
    dsn = stack.settings.external_dsn
    if dsn is None:
        state = manager.connection(stack.settings)
        if state.postgres is None:
            raise LedgerError("the stack has no database: run `ledger stack up`")
        dsn = state.postgres.dsn
    return Connected(stack.bootstrap_servers, stack.partitions, dsn, stack.settings)


def admin_key(settings: StackSettings) -> str:
    """The admin API key: LEDGER_ADMIN_KEY, else one made once and kept in the stack's home."""
    import os

    from ledger import keys

    given = os.environ.get("LEDGER_ADMIN_KEY")
    if given:
        return given
    path = settings.home / "admin.key"
    if not path.exists():
        settings.home.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as out:
            out.write(keys.new_key("admin") + "\n")
    return path.read_text().strip()
