"""`ledger stack up | down | status`: bring the local stack up (reusing what already runs), stop
only what it started, and tell what runs."""

from __future__ import annotations

import time
from dataclasses import dataclass

from ledger.errors import StackError
from ledger.kafka.markers import mark_empty_partitions
from ledger.settings import StackSettings
from ledger.stack import kafka, postgres, proc
from ledger.stack import state as stack_state
from ledger.stack.state import StackState


@dataclass(frozen=True)
class UpReport:
    state: StackState
    reused_kafka: bool
    reused_postgres: bool
    stale_cleared: bool
    kafka_ready_seconds: float
    topics_created: list[str]
    migrations_applied: list[str]


def _is_up(recorded: StackState | None) -> tuple[bool, bool]:
    if recorded is None:
        return False, False
    nodes = stack_state.kafka_nodes(recorded)
    kafka_up = bool(nodes) and all(proc.is_running(node.process) for node in nodes)
    pg_up = recorded.postgres is not None and proc.is_running(recorded.postgres.process)
    return kafka_up, pg_up


def up(settings: StackSettings) -> UpReport:
    recorded = stack_state.load(settings.home)
    kafka_up, pg_up = _is_up(recorded)
    current = recorded if recorded is not None else StackState()
    stale = (
        recorded is not None
        and not (kafka_up and pg_up)
        and (recorded.kafka is not None or recorded.postgres is not None)
    )
    if kafka_up and current.kafka and current.kafka.port != settings.kafka_port:
        settings = settings.with_overrides(kafka_port=current.kafka.port)
    # A node of a cluster that died is started again alone; the others keep running.
    running = [n for n in stack_state.kafka_nodes(current) if proc.is_running(n.process)]
    if not kafka_up:
        if current.kafka is not None and len(running) > 0:
            settings = settings.with_overrides(kafka_brokers=len(stack_state.kafka_nodes(current)))
        else:
            running = []
    if not pg_up:
        current.postgres = None
    ready_seconds = 0.0
    try:
        if not kafka_up:
            alive = {node.node_id: node for node in running}
            if not alive:
                current.topic_partitions = settings.topic_partitions
            current.kafka = alive.get(1)
            current.kafka_others = [n for n in alive.values() if n.node_id != 1]
            for node_id in range(1, settings.kafka_brokers + 1):
                node = alive.get(node_id) or kafka.start_node(settings, node_id)
                others = [n for n in current.kafka_others if n.node_id != node_id]
                if node_id == 1:
                    current.kafka = node
                else:
                    others.append(node)
                current.kafka_others = sorted(others, key=lambda n: n.node_id)
                stack_state.save(settings.home, current)  # recorded at once: `down` can stop it
        if not pg_up:
            current.postgres = postgres.start(settings)
            stack_state.save(settings.home, current)
        assert current.kafka is not None and current.postgres is not None
        started = time.monotonic()
        brokers = len(stack_state.kafka_nodes(current))
        kafka.wait_ready(current.kafka, brokers=brokers)
        ready_seconds = time.monotonic() - started
        partitions = current.topic_partitions or settings.topic_partitions
        replication = 3 if brokers >= 3 else 1
        topics = kafka.ensure_topics(current.kafka.bootstrap_servers, partitions, replication)
        # Before anything produces to them: offset 0 of the workers' partitions is a marker.
        mark_empty_partitions(current.kafka.bootstrap_servers)
        migrations = postgres.ensure_database(current.postgres)
    except StackError:
        stack_state.save(settings.home, current)
        raise
    stack_state.save(settings.home, current)
    return UpReport(
        state=current,
        reused_kafka=kafka_up,
        reused_postgres=pg_up,
        stale_cleared=stale,
        kafka_ready_seconds=ready_seconds,
        topics_created=topics,
        migrations_applied=migrations,
    )


def init_external(settings: StackSettings, replication: int) -> tuple[list[str], list[str]]:
    """On a stack run elsewhere (LEDGER_BOOTSTRAP_SERVERS, LEDGER_DATABASE_URL): create the
    topics and apply the migrations, as `up` does locally. Returns (topics, migrations)."""
    from projections.migrate import apply_migrations

    if settings.external_bootstrap is None or settings.external_dsn is None:
        raise StackError(
            "`ledger stack init` prepares a stack run elsewhere: set LEDGER_BOOTSTRAP_SERVERS and "
            "LEDGER_DATABASE_URL (a local stack is prepared by `ledger stack up`)"
        )
    created = kafka.ensure_topics(
        settings.external_bootstrap, settings.topic_partitions, replication
    )
    mark_empty_partitions(settings.external_bootstrap)
    return created, apply_migrations(settings.external_dsn)


def down(settings: StackSettings, purge: bool = False) -> list[str]:
    """Stop the processes this stack started, by pid. Returns what was stopped."""
    from ledger.stack import services

    # The ledger's own processes first: they would only retry against a stopped broker.
    stopped: list[str] = services.stop_all(settings.home)
    recorded = stack_state.load(settings.home)
    if recorded is not None:
        for node, killed in kafka.stop_all(stack_state.kafka_nodes(recorded)):
            name = "kafka" if node.node_id == 1 else f"kafka node {node.node_id}"
            stopped.append(f"{name} (pid {node.process.pid}){' killed' if killed else ''}")
        if recorded.postgres is not None and proc.is_running(recorded.postgres.process):
            killed = postgres.stop(recorded.postgres)
            stopped.append(
                f"postgres (pid {recorded.postgres.process.pid}){' killed' if killed else ''}"
            )
        stack_state.remove(settings.home)
    if purge:
        import shutil

        postgres.purge(settings)
        shutil.rmtree(settings.home / "kafka", ignore_errors=True)
        shutil.rmtree(settings.home / "workers", ignore_errors=True)
    return stopped


@dataclass(frozen=True)
class ComponentStatus:
    name: str
    running: bool
    pid: int | None
    address: str | None
    detail: str


def status(settings: StackSettings) -> list[ComponentStatus]:
    recorded = stack_state.load(settings.home)
    kafka_up, pg_up = _is_up(recorded)
    rows: list[ComponentStatus] = []
    kafka_rec = recorded.kafka if recorded else None
    pg_rec = recorded.postgres if recorded else None
    rows.append(
        ComponentStatus(
            name="kafka",
            running=kafka_up,
            pid=kafka_rec.process.pid if kafka_rec else None,
            address=kafka_rec.bootstrap_servers if kafka_rec else None,
            detail=f"log {kafka_rec.log_file}" if kafka_rec else "not started",
        )
    )
    for node in recorded.kafka_others if recorded else []:
        rows.append(
            ComponentStatus(
                name=f"kafka node {node.node_id}",
                running=proc.is_running(node.process),
                pid=node.process.pid,
                address=f"127.0.0.1:{node.port}",
                detail=f"log {node.log_file}",
            )
        )
    rows.append(
        ComponentStatus(
            name="postgres",
            running=pg_up,
            pid=pg_rec.process.pid if pg_rec else None,
            address=f"127.0.0.1:{pg_rec.port}/{postgres.DATABASE}" if pg_rec else None,
            detail=f"data {pg_rec.data_dir}" if pg_rec else "not started",
        )
    )
    return rows


def connection(settings: StackSettings) -> StackState:
    """The running stack's addresses for clients; a clear error when it is not up."""
    recorded = stack_state.load(settings.home)
    kafka_up, pg_up = _is_up(recorded)
    if recorded is None or not (kafka_up and pg_up):
        raise StackError("the stack is not running: start it with `ledger stack up`")
    return recorded
