"""The fault suite's supervisor: a stack of its own (broker and PostgreSQL in a temporary home, on
ports of their own, so that killing the broker harms nobody else), the workers and the projection
writer as processes it owns by pid, and the faults it injects into them."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from ledger.settings import StackSettings, load_settings
from ledger.stack import manager, proc
from ledger.stack import state as stack_state
from ledger.stack.proc import ProcessRecord
from ledger.stack.state import StackState
from tests.harness import Projector, Worker, wait_for

PORT_BASE = int(os.environ.get("LEDGER_FAULT_PORT_BASE") or 29092)


@dataclass
class FaultLog:
    """What was done, when (seconds since the scenario started), for the JSON result."""

    started: float = field(default_factory=time.monotonic)
    entries: list[tuple[float, str]] = field(default_factory=list)

    def note(self, what: str) -> None:
        at = round(time.monotonic() - self.started, 2)
        self.entries.append((at, what))
        print(f"[fault {at:7.2f} s] {what}", flush=True)


# The JVM heap of each node of a three-broker stack: three JVMs share a 2-core machine with the
# ledger's processes (issue 16 measured them at 256 MiB: see tests/fault/test_broker_faults.py).
CLUSTER_HEAP_MB = 256
REPLICATED = 3  # replicas of every topic on a three-broker stack, two in sync


class Supervisor:
    def __init__(self, home: Path, log: FaultLog, brokers: int = 1) -> None:
        self.home = home
        self.log = log
        self.brokers = brokers
        self.settings: StackSettings = load_settings().with_overrides(
            home=home,
            kafka_port=PORT_BASE,
            kafka_controller_port=PORT_BASE + 1,
            postgres_port=PORT_BASE + 2,
            kafka_brokers=brokers,
            kafka_heap_mb=CLUSTER_HEAP_MB if brokers > 1 else None,
        )
        self.env = {
            "LEDGER_HOME": str(home),
            "LEDGER_KAFKA_PORT": str(PORT_BASE),
            "LEDGER_KAFKA_CONTROLLER_PORT": str(PORT_BASE + 1),
            "LEDGER_POSTGRES_PORT": str(PORT_BASE + 2),
            "LEDGER_KAFKA_BROKERS": str(brokers),
            "LEDGER_BOOTSTRAP_SERVERS": "",
            "LEDGER_DATABASE_URL": "",
        }
        if brokers >= REPLICATED:
            self.env["LEDGER_TOPIC_REPLICATION"] = str(REPLICATED)  # faust's changelogs too
        self.writer_starts = 0
        self.workers: dict[str, Worker] = {}
        self.writer: Projector | None = None
        self.writers: dict[str, Projector] = {}  # more projection writers (issue 16)
        self.state: StackState = StackState()

    # -- the stack -----------------------------------------------------------------------------
    def up(self) -> None:
        self.state = manager.up(self.settings).state
        assert self.state.kafka is not None and self.state.postgres is not None

    @property
    def bootstrap(self) -> str:
        assert self.state.kafka is not None
        return self.state.kafka.bootstrap_servers

    @property
    def dsn(self) -> str:
        assert self.state.postgres is not None
        return self.state.postgres.dsn

    @property
    def partitions(self) -> int:
        return self.state.topic_partitions or self.settings.topic_partitions

    def down(self) -> None:
        for worker in self.workers.values():
            worker.stop(timeout=30)
        for writer in [self.writer, *self.writers.values()]:
            if writer is not None:
                writer.stop(timeout=30)
        manager.down(self.settings, purge=True)

    # -- the ledger's processes ----------------------------------------------------------------
    def start_worker(self, name: str) -> Worker:
        # Not under <home>/workers, which a purge deletes: the logs must outlive the scenario.
        worker = Worker(name, self.home / "worker-state" / name, env=self.env, static=True)
        worker.start()
        self.workers[name] = worker
        self.log.note(f"worker {name} started (pid {worker.pid})")
        return worker

    def start_writer(self, crash_after_db_commit_batch: int = 0, batch_events: int = 200) -> None:
        env = dict(self.env)
        if crash_after_db_commit_batch:
            env["LEDGER_FAULT_EXIT_AFTER_DB_COMMIT_BATCH"] = str(crash_after_db_commit_batch)
        self.writer = Projector("writer", self.home, batch_events_max=batch_events, env=env)
        self.writer.start()
        self.writer_starts += 1
        what = (
            f", exits after the DB commit of batch {crash_after_db_commit_batch}"
            if (crash_after_db_commit_batch)
            else ""
        )
        self.log.note(f"projection writer started (pid {self.writer.pid}){what}")

    # -- faults --------------------------------------------------------------------------------
    def kill_worker(self, name: str) -> None:
        worker = self.workers[name]
        pids = [worker.pid, *_children(worker.pid)]
        for pid in pids:  # the supervisor and its faust child, at once: a machine lost
            _signal(pid, signal.SIGKILL)
        worker.wait_gone()
        self.log.note(f"worker {name} killed with -9 (pids {pids})")

    def stop_worker(self, name: str) -> None:
        code = self.workers[name].stop(timeout=90)
        self.log.note(f"worker {name} stopped gracefully (exit {code})")

    def pause_worker(self, name: str, seconds: float) -> None:
        worker = self.workers[name]
        pids = [worker.pid, *_children(worker.pid)]
        for pid in pids:
            _signal(pid, signal.SIGSTOP)
        self.log.note(f"worker {name} paused (SIGSTOP) for {seconds:.0f} s")
        time.sleep(seconds)
        for pid in pids:
            _signal(pid, signal.SIGCONT)
        self.log.note(f"worker {name} resumed (SIGCONT)")

    def kill_writer(self) -> None:
        assert self.writer is not None
        self.writer.kill()
        self.writer.wait_gone()
        self.log.note("projection writer killed with -9")

    def writer_exited(self) -> bool:
        return self.writer is not None and not self.writer.alive()

    def kill_broker(self, down_seconds: float) -> None:
        assert self.state.kafka is not None
        record = self.state.kafka.process
        _signal(record.pid, signal.SIGKILL)
        wait_for(lambda: not proc.is_running(record), 30, "the broker to die")
        self.log.note(f"broker killed with -9 (pid {record.pid}); down for {down_seconds:.0f} s")
        time.sleep(down_seconds)
        self.up()
        self.log.note("broker restarted")

    # -- the brokers of a cluster (and the one broker, paused) ------------------------------------
    def broker_nodes(self) -> dict[int, ProcessRecord]:
        return {node.node_id: node.process for node in stack_state.kafka_nodes(self.state)}

    def leaders(self, topic: str) -> dict[int, int]:
        """partition -> node id of its leader (-1: none), from the admin client's metadata."""
        from kafka.admin import KafkaAdminClient

        admin = KafkaAdminClient(bootstrap_servers=self.bootstrap, client_id="fault-supervisor")
        try:
            (described,) = admin.describe_topics([topic])
        finally:
            admin.close()
        return {p["partition_index"]: p["leader_id"] for p in described["partitions"]}

    def in_sync(self, topic: str) -> dict[int, list[int]]:
        from kafka.admin import KafkaAdminClient

        admin = KafkaAdminClient(bootstrap_servers=self.bootstrap, client_id="fault-supervisor")
        try:
            (described,) = admin.describe_topics([topic])
        finally:
            admin.close()
        return {p["partition_index"]: sorted(p["isr_nodes"]) for p in described["partitions"]}

    def kill_node(self, node_id: int) -> None:
        record = self.broker_nodes()[node_id]
        _signal(record.pid, signal.SIGKILL)
        wait_for(lambda: not proc.is_running(record), 30, f"broker node {node_id} to die")
        self.log.note(f"broker node {node_id} killed with -9 (pid {record.pid})")

    def restart_nodes(self) -> None:
        """Start the nodes that are down (the others keep running), wait until every partition of
        the ledger's topics has all its replicas in sync again."""
        self.up()
        self.log.note("broker nodes restarted; waiting for every replica to be in sync")
        wait_for(self._fully_replicated, 120, "every replica back in sync")
        self.log.note("every partition has its replicas in sync")

    def _fully_replicated(self) -> bool:
        try:
            isr = [
                *self.in_sync("ledger.commands").values(),
                *self.in_sync("ledger.events").values(),
            ]
        except Exception:  # any client error: the metadata is not there yet
            return False
        return all(len(replicas) >= self.brokers for replicas in isr)

    def pause_broker(self, node_id: int, seconds: float) -> None:
        record = self.broker_nodes()[node_id]
        _signal(record.pid, signal.SIGSTOP)
        self.log.note(f"broker node {node_id} paused (SIGSTOP) for {seconds:.0f} s")
        try:
            time.sleep(seconds)
        finally:
            _signal(record.pid, signal.SIGCONT)
        self.log.note(f"broker node {node_id} resumed (SIGCONT)")

    def broker_usage(self) -> dict[int, dict[str, float]]:
        """Each broker JVM's resident memory (MiB) and CPU time (s) so far, from /proc."""
        ticks = os.sysconf("SC_CLK_TCK")
        usage = {}
        for node_id, record in self.broker_nodes().items():
            try:
                stat = Path(f"/proc/{record.pid}/stat").read_text()
                status = Path(f"/proc/{record.pid}/status").read_text()
            except OSError:
                continue
            fields = stat[stat.rindex(")") + 2 :].split()
            rss_kb = next(
                int(line.split()[1]) for line in status.splitlines() if line.startswith("VmRSS:")
            )
            usage[node_id] = {
                "rss_mib": round(rss_kb / 1024, 1),
                "cpu_seconds": round((int(fields[11]) + int(fields[12])) / ticks, 1),
            }
        return usage

    def worker_restarts(self) -> dict[str, int]:
        """How often each worker's supervisor restarted its faust child (a crash loop shows)."""
        return {
            name: worker.log_path.read_text(errors="replace").count("restarting the worker")
            for name, worker in self.workers.items()
        }

    def stop_postgres(self, down_seconds: float) -> None:
        assert self.state.postgres is not None
        record = self.state.postgres.process
        _signal(record.pid, signal.SIGQUIT)  # PostgreSQL's immediate shutdown: no checkpoint
        wait_for(lambda: not proc.is_running(record), 30, "PostgreSQL to stop")
        self.log.note(f"PostgreSQL stopped immediately (pid {record.pid}) for {down_seconds:.0f} s")
        time.sleep(down_seconds)
        self.up()
        self.log.note("PostgreSQL restarted")

    def check_alive(self) -> None:
        for name, worker in self.workers.items():
            if worker.process is not None and not worker.alive() and worker.process.returncode:
                raise AssertionError(f"worker {name} died: {worker.log_tail()}")

    # -- the projection writer's faults (issue 16) ---------------------------------------------
    def start_second_writer(self, name: str = "writer2", batch_events: int = 200) -> Projector:
        writer = Projector(name, self.home, batch_events_max=batch_events, env=self.env)
        writer.start()
        self.writers[name] = writer
        self.log.note(f"projection writer {name} started (pid {writer.pid})")
        return writer

    def writer_in_transaction(self, seconds: float, on_a_lock: bool = False) -> bool:
        """Wait up to `seconds` until a writer's transaction is open in PostgreSQL (the only
        clients during a scenario are the writers), waiting on a lock if `on_a_lock`: True if
        one was seen."""
        import psycopg

        deadline = time.monotonic() + seconds
        with psycopg.connect(self.dsn, autocommit=True) as db:
            while time.monotonic() < deadline:
                row = db.execute(
                    "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
                    " AND backend_type = 'client backend' AND pid <> pg_backend_pid()"
                    " AND xact_start IS NOT NULL"
                    + (" AND wait_event_type = 'Lock'" if on_a_lock else "")
                ).fetchone()
                if row and row[0]:
                    return True
                time.sleep(0.002)
        return False

    def all_writers(self) -> list[Projector]:
        return [w for w in [self.writer, *self.writers.values()] if w is not None]

    # -- the writer's fault-injection hooks (projections/writer.py, projections/store.py) ------
    def restart_writer_with(self, hooks: dict[str, str], batch_events: int = 200) -> None:
        """Stop the projection writer gracefully and start it again with fault-injection hooks
        in its environment (LEDGER_FAULT_HOLD_*: off in every real deployment)."""
        assert self.writer is not None
        self.writer.stop(timeout=60)
        self.writer = Projector(
            "writer", self.home, batch_events_max=batch_events, env={**self.env, **hooks}
        )
        self.writer.start()
        self.writer_starts += 1
        self.log.note(f"projection writer restarted (pid {self.writer.pid}) with {hooks}")

    def pause_writer_holding_a_batch(self, seconds: float, wait_seconds: float = 30) -> bool:
        """SIGSTOP the projection writer while it holds a batch it read, before its transaction
        (LEDGER_FAULT_HOLD_BEFORE_APPLY_SECONDS: it logs when it starts to hold), SIGCONT after
        `seconds`. True if it was caught holding one."""
        from projections.writer import HOLD_BEFORE_APPLY_LOG

        assert self.writer is not None
        writer = self.writer

        def holds() -> int:
            return writer.log_path.read_text(errors="replace").count(HOLD_BEFORE_APPLY_LOG)

        before = holds()
        deadline = time.monotonic() + wait_seconds
        while holds() == before and time.monotonic() < deadline:
            time.sleep(0.005)
        caught = holds() > before
        _signal(writer.pid, signal.SIGSTOP)
        where = "holding a batch it read" if caught else "NOT caught holding a batch"
        self.log.note(f"projection writer paused (SIGSTOP) {where} for {seconds:.0f} s")
        time.sleep(seconds)
        _signal(writer.pid, signal.SIGCONT)
        self.log.note("projection writer resumed (SIGCONT)")
        return caught

    def writer_in_hold(self, seconds: float) -> list[int]:
        """Wait up to `seconds` until a writer's transaction is in its server-side hold
        (LEDGER_FAULT_HOLD_IN_TRANSACTION_SECONDS: a pg_sleep before the commit); the backends'
        pids, [] if none was seen."""
        import psycopg

        deadline = time.monotonic() + seconds
        with psycopg.connect(self.dsn, autocommit=True) as db:
            while time.monotonic() < deadline:
                rows = db.execute(
                    "SELECT pid FROM pg_stat_activity WHERE datname = current_database()"
                    " AND pid <> pg_backend_pid() AND state = 'active'"
                    " AND query LIKE 'SELECT pg_sleep(%'"
                ).fetchall()
                if rows:
                    return [pid for (pid,) in rows]
                time.sleep(0.005)
        return []

    def cancel_writer_in_hold(self) -> int:
        """Cancel a writer's statement inside a batch's transaction (pg_cancel_backend: SQLSTATE
        57014, as a statement_timeout trips). Returns how many were cancelled."""
        import psycopg

        pids = self.writer_in_hold(20)
        with psycopg.connect(self.dsn, autocommit=True) as db:
            row = db.execute(
                "SELECT count(*) FILTER (WHERE pg_cancel_backend(pid)) FROM unnest(%s::int[]) pid",
                (pids,),
            ).fetchone()
        cancelled = int(row[0]) if row else 0
        self.log.note(f"{cancelled} writer statement(s) cancelled inside a transaction (57014)")
        return cancelled

    def kill_postgres_in_hold(self, sig: int = signal.SIGQUIT) -> bool:
        """PostgreSQL ended at once (SIGQUIT: immediate shutdown; SIGKILL of the postmaster)
        while a batch's transaction is open, before its commit, and restarted. True if caught
        inside one."""
        assert self.state.postgres is not None
        record = self.state.postgres.process
        caught = bool(self.writer_in_hold(20))
        children = _children(record.pid) if sig == signal.SIGKILL else []
        _signal(record.pid, sig)
        for child in children:  # a SIGKILL kills the postmaster alone: its backends too
            _signal(child, signal.SIGKILL)
        wait_for(lambda: not proc.is_running(record), 30, "PostgreSQL to stop")
        where = "inside a batch's transaction" if caught else "NOT inside a transaction"
        self.log.note(f"PostgreSQL ended with {signal.Signals(sig).name} {where}")
        self.up()
        self.log.note("PostgreSQL restarted")
        return caught

    def hold_lock_on_the_writer(self, table: str, seconds: float) -> bool:
        """A session holds an exclusive lock on `table` for `seconds`, past the writer's
        lock_timeout; True if a writer's transaction was seen waiting on it."""
        import psycopg

        with psycopg.connect(self.dsn) as db:
            db.execute(f"LOCK TABLE ledger.{table} IN ACCESS EXCLUSIVE MODE".encode())
            locked = time.monotonic()
            self.log.note(f"ledger.{table} locked (ACCESS EXCLUSIVE) for {seconds:.0f} s")
            waited = self.writer_in_transaction(seconds - 5, on_a_lock=True)
            time.sleep(max(0.0, seconds - (time.monotonic() - locked)))
        self.log.note(f"ledger.{table} unlocked (a writer waited on it: {waited})")
        return waited


def _children(pid: int) -> list[int]:
    try:
        return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


def _signal(pid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, sig)


def run_quietly(command: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        command, env={**os.environ, **env}, capture_output=True, text=True, timeout=600, check=False
    )
