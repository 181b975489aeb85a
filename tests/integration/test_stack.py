"""The local stack on the real broker and the real database: round trips, idempotent `up`, a
`down` that leaves nothing running, and recovery from a stack that was killed."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import uuid
from pathlib import Path

import psycopg
import pytest
from kafka.admin import ConfigResource, ConfigResourceType, KafkaAdminClient

from ledger import smoke
from ledger.kafka import topics
from ledger.settings import StackSettings, load_settings
from ledger.stack import manager, proc
from ledger.stack.state import StackState
from tests.harness import free_port


def test_kafka_round_trip_acks_all_idempotent(stack: StackState) -> None:
    assert stack.kafka is not None
    topic = f"test.roundtrip.{uuid.uuid4().hex[:8]}"
    trip = smoke.kafka_round_trip(stack.kafka.bootstrap_servers, topic=topic, count=50)
    assert trip.received == 50
    assert trip.in_order


def test_database_round_trip_with_migrations(stack: StackState) -> None:
    assert stack.postgres is not None
    trip = smoke.db_round_trip(stack.postgres.dsn)
    assert "0001_offsets_and_applied_events" in trip.migrations
    assert trip.read == trip.written
    with psycopg.connect(stack.postgres.dsn) as db:
        left = db.execute(
            "SELECT count(*) FROM ledger.projection_offsets WHERE topic = %s", (trip.written[0],)
        ).fetchone()
    assert left == (0,), "the demo's transaction is rolled back and leaves nothing behind"


def test_ledger_topics_exist_with_their_configs(stack: StackState) -> None:
    assert stack.kafka is not None
    admin = KafkaAdminClient(bootstrap_servers=stack.kafka.bootstrap_servers)
    try:
        described = {t["name"]: t for t in admin.describe_topics([s.name for s in topics.TOPICS])}
        configs = admin.describe_configs(
            [
                ConfigResource(ConfigResourceType.TOPIC, name)
                for name in (topics.REFERENCE, topics.EVENTS, topics.COMMANDS)
            ]
        )
    finally:
        admin.close()
    partitions = stack.topic_partitions
    assert len(described[topics.COMMANDS]["partitions"]) == partitions
    assert len(described[topics.EVENTS]["partitions"]) == partitions
    assert len(described[topics.REFERENCE]["partitions"]) == 1
    by_topic = configs["topic"]
    assert by_topic[topics.REFERENCE]["cleanup.policy"]["value"] == "compact"
    for kept_forever in (topics.EVENTS, topics.COMMANDS):  # the commands too: ledger verify
        assert by_topic[kept_forever]["retention.ms"]["value"] == "-1"
        assert by_topic[kept_forever]["retention.bytes"]["value"] == "-1"


def _free_port() -> int:
    return free_port()


@pytest.fixture
def isolated(tmp_path: Path) -> StackSettings:
    """A second stack with its own home and ports: stopping it leaves the session's alone."""
    return load_settings().with_overrides(
        home=tmp_path / "home",
        kafka_port=_free_port(),
        kafka_controller_port=_free_port(),
        postgres_port=_free_port(),
        topic_partitions=2,
    )


def _pids(state: StackState) -> list[proc.ProcessRecord]:
    assert state.kafka is not None and state.postgres is not None
    return [state.kafka.process, state.postgres.process]


def test_up_twice_reuses_and_down_leaves_nothing_running(isolated: StackSettings) -> None:
    first = manager.up(isolated)
    try:
        assert not first.reused_kafka and not first.reused_postgres
        second = manager.up(isolated)
        assert second.reused_kafka and second.reused_postgres
        assert _pids(second.state) == _pids(first.state)
        assert second.topics_created == [] and second.migrations_applied == []
        env = {**os.environ, "LEDGER_HOME": str(isolated.home)}
        status = subprocess.run(
            [sys.executable, "-m", "ledger.cli", "stack", "status"],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert status.returncode == 0, status.stdout + status.stderr
        assert status.stdout.count(" up ") == 2
    finally:
        stopped = manager.down(isolated, purge=True)
    assert len(stopped) == 2
    for record in _pids(first.state):
        assert not proc.is_running(record)
    assert proc.port_is_free(isolated.kafka_port)
    assert proc.port_is_free(isolated.postgres_port)
    assert all(not row.running for row in manager.status(isolated))


def test_up_after_kill_9_restarts_from_stale_state(isolated: StackSettings) -> None:
    first = manager.up(isolated)
    try:
        for record in _pids(first.state):
            os.kill(record.pid, signal.SIGKILL)
            proc.stop(record, signal.SIGKILL, 10)  # waits until gone, reaps our own child
        again = manager.up(isolated)
        assert again.stale_cleared
        assert not again.reused_kafka and not again.reused_postgres
        assert again.state.postgres is not None and again.state.kafka is not None
        trip = smoke.db_round_trip(again.state.postgres.dsn)
        assert trip.read == trip.written
        round_trip = smoke.kafka_round_trip(again.state.kafka.bootstrap_servers, count=5)
        assert round_trip.received == 5
    finally:
        manager.down(isolated, purge=True)
