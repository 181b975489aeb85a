"""`ledger bench`: the whole ledger on the real stack, end to end.

For each worker count (1, then 2 by default) on a stack of its own (a fresh broker and database in
a temporary home, on ports of their own, purged afterwards: the developer's stack is left alone):

1. the workers (`ledger worker`) and the projection writer (`ledger project`) are started as
   processes; the reference data and the accounts are sent and waited for in PostgreSQL;
2. throughput: a backlog of purchase commands is produced as fast as the producer goes, and
   the clock runs until the last of them is decided, committed in PostgreSQL, and counted in the
   workers' balance tables (their consumer group has committed every record it reads); the rate
   of decisions alone (facts on ledger.events) is reported beside it;
3. latency: purchases paced at half that throughput; the decision latency of each is its fact's
   record timestamp (appended by the worker) minus the moment it was sent (both this machine's
   clock);
4. the checkout API: purchases over HTTP from a few clients at once, each answered through the
   stream (request → command → decision → answer), p50 and p99;
5. replay: `ledger replay`'s code rebuilds the projections from ledger.events into a fresh schema
   and compares them with the live ones;
6. the peak resident memory (VmHWM) of every process: workers (supervisor and faust child),
   writer, broker, PostgreSQL (its largest process).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ledger.bench import stream, table
from ledger.errors import LedgerError
from ledger.produce import LedgerProducer
from ledger.settings import StackSettings, load_settings
from streams.config import APP_ID

DEADLINE_SECONDS = 1_800.0
PACED_SECONDS = 20.0
API_REQUESTS = 1_000
API_CLIENTS = 4
POLL_SECONDS = 0.25


@dataclass
class RunFigures:
    workers: int
    accounts: int
    purchases: int
    throughput_events_per_second: float
    decisions_per_second: float
    decision_latency_p50_seconds: float
    decision_latency_p99_seconds: float
    decision_latency_max_seconds: float
    paced_rate_per_second: float
    api_requests: int
    api_latency_p50_seconds: float
    api_latency_p99_seconds: float
    api_answers: dict[str, int]
    replay_events_per_second: float
    replay_events: int
    replay_equal: bool
    peak_rss_mib: dict[str, float] = field(default_factory=dict)


def _vm_hwm_mib(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def _children(pid: int) -> list[int]:
    try:
        return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


class _Process:
    def __init__(self, name: str, arguments: list[str], env: dict[str, str], logs: Path) -> None:
        self.name = name
        with (logs / f"{name}.log").open("ab") as log:
            self.popen = subprocess.Popen(
                [sys.executable, "-m", "ledger.cli", *arguments], env=env, stdout=log,
                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
            )  # fmt: skip
        self.log = logs / f"{name}.log"

    def peak_rss_mib(self) -> float:
        """The process and its children (a worker is a supervisor and its faust child)."""
        return _vm_hwm_mib(self.popen.pid) + sum(_vm_hwm_mib(c) for c in _children(self.popen.pid))

    def check(self) -> None:
        if self.popen.poll() is not None:
            tail = self.log.read_text(errors="replace")[-1500:]
            raise LedgerError(f"{self.name} exited ({self.popen.returncode}): {tail}")

    def stop(self) -> None:
        if self.popen.poll() is None:
            self.popen.terminate()
            try:
                self.popen.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(timeout=30)


def _bench_settings(base: StackSettings, home: Path, port_base: int) -> StackSettings:
    return base.with_overrides(
        home=home, kafka_port=port_base, kafka_controller_port=port_base + 1,
        postgres_port=port_base + 2,
    )  # fmt: skip


def _count(dsn: str, query: str, *params: Any) -> int:
    import psycopg

    with psycopg.connect(dsn, options="-c search_path=ledger") as db:
        row = db.execute(query.encode(), params).fetchone()
    return int(row[0]) if row else 0


def _wait_projected(dsn: str, run: str, count: int, processes: list[_Process], table: str) -> None:
    deadline = time.monotonic() + DEADLINE_SECONDS
    column = "purchase_id" if table == "purchases" else "account_id"
    while _count(dsn, f"SELECT count(*) FROM {table} WHERE {column} LIKE %s", f"%-{run}") < count:
        if time.monotonic() > deadline:
            raise LedgerError(f"{table} of the bench not all projected after {DEADLINE_SECONDS} s")
        for process in processes:
            process.check()
        time.sleep(POLL_SECONDS)


def _start(settings: StackSettings, workers: int) -> list[_Process]:
    env = {**os.environ, "LEDGER_HOME": str(settings.home),
           "LEDGER_KAFKA_PORT": str(settings.kafka_port),
           "LEDGER_POSTGRES_PORT": str(settings.postgres_port)}  # fmt: skip
    env.pop("LEDGER_BOOTSTRAP_SERVERS", None)
    env.pop("LEDGER_DATABASE_URL", None)
    logs = settings.home / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    processes = [
        _Process(f"worker-{n}", ["worker", "--name", f"bench{n}", "--data-dir",
                                 str(settings.home / "workers" / f"bench{n}")], env, logs)
        for n in range(1, workers + 1)
    ]  # fmt: skip
    processes.append(_Process("projections", ["project", "--name", "bench",
                                              "--reconcile-seconds", "0"], env, logs))  # fmt: skip
    return processes


@dataclass
class _Measured:
    run: str
    purchases: int
    throughput: float
    decisions: float
    rate: float
    latencies: list[float]


def _measure(bootstrap: str, dsn: str, partitions: int, processes: list[_Process],
             accounts: int, purchases: int, seed: int, say: Any) -> _Measured:  # fmt: skip
    import uuid

    workers = len(processes) - 1
    run = uuid.uuid4().hex[:8]
    watcher = stream.FactWatcher(bootstrap, run)
    try:
        reference, opens = stream.world(run, accounts)
        with LedgerProducer(bootstrap, partitions, client_id="ledger-bench") as producer:
            for record in reference:
                producer.send_reference(record)
            producer.flush()
            time.sleep(2)  # the workers' reference readers see the ISP and publishers
            say(f"  {workers} worker(s): {accounts:,} accounts; waiting for them")
            stream.send_and_wait(producer, watcher, opens, DEADLINE_SECONDS)
            _wait_projected(dsn, run, accounts, processes, "accounts")
            backlog = stream.purchases(run, accounts, purchases, seed)
            say(f"  {workers} worker(s): {purchases:,} purchases, as fast as they go")
            started = time.monotonic()
            decisions = len(backlog) / stream.send_and_wait(
                producer, watcher, backlog, DEADLINE_SECONDS
            )
            _wait_projected(dsn, run, len(backlog), processes, "purchases")
            # Sustained means all the work kept up: the balance tables (the group-by of the
            # facts by publisher and ISP) too, or their backlog would only move the cost later.
            stream.wait_idle(bootstrap, APP_ID, DEADLINE_SECONDS)
            throughput = len(backlog) / (time.monotonic() - started)
            rate = throughput / 2
            paced = stream.purchases(run, accounts, int(rate * PACED_SECONDS), seed + 1, purchases)
            say(f"  {workers} worker(s): {len(paced):,} purchases paced at {rate:,.0f}/s")
            before = watcher.seen
            sent_ms = stream.send_paced(producer, watcher, paced, rate)
            watcher.wait_for(before + len(paced), DEADLINE_SECONDS)
        _wait_projected(dsn, run, len(backlog) + len(paced), processes, "purchases")
        latencies = sorted(
            max(0.0, (watcher.decided_at_ms[pid] - sent) / 1000) for pid, sent in sent_ms.items()
        )
    finally:
        watcher.close()
    return _Measured(run, len(backlog), throughput, decisions, rate, latencies)


class _Checkout:
    """A `ledger api` process of the bench's own, and an HTTP client of it."""

    def __init__(self, settings: StackSettings) -> None:
        import secrets
        import socket

        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]
        self.admin = f"admin_{secrets.token_hex(16)}"
        env = {**os.environ, "LEDGER_HOME": str(settings.home), "LEDGER_ADMIN_KEY": self.admin,
               "LEDGER_KAFKA_PORT": str(settings.kafka_port),
               "LEDGER_POSTGRES_PORT": str(settings.postgres_port)}  # fmt: skip
        self.process = _Process("checkout-api", ["api", "--port", str(self.port)], env,
                                settings.home / "logs")  # fmt: skip

    def call(self, path: str, body: dict[str, Any], key: str) -> tuple[int, float, bytes]:
        import json
        import urllib.error
        import urllib.request

        request = urllib.request.Request(
            f"http://127.0.0.1:{self.port}{path}", data=json.dumps(body).encode(), method="POST",
            headers={"Content-Type": "application/json", "Authorization": f"Bearer {key}"},
        )  # fmt: skip
        started = time.perf_counter()
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                return response.status, time.perf_counter() - started, response.read()
        except urllib.error.HTTPError as error:
            return error.code, time.perf_counter() - started, b""
        except OSError:
            return 0, time.perf_counter() - started, b""

    def until(self, path: str, body: dict[str, Any], key: str, wanted: tuple[int, ...]) -> bytes:
        deadline = time.monotonic() + 120
        while True:
            self.process.check()
            status, _, answer = self.call(path, body, key)
            if status in wanted:
                return answer
            if time.monotonic() > deadline:
                raise LedgerError(f"the checkout API answered {status} to {path} for 120 s")
            time.sleep(0.5)


def _api_latency(
    settings: StackSettings, run: str, accounts: int
) -> tuple[float, float, dict[str, int]]:
    """Purchases through the checkout API (HTTP → command → decision → answer), from
    API_CLIENTS clients at once: (p50, p99, answers by HTTP status)."""
    import json
    import random
    from concurrent.futures import ThreadPoolExecutor
    from datetime import UTC, datetime

    checkout = _Checkout(settings)
    publisher = f"pub-api-{run}"
    rnd = random.Random(run)

    def body(n: int) -> dict[str, Any]:
        return {"purchase_id": f"api{n}-{run}", "account_id": f"a{rnd.randrange(accounts)}-{run}",
                "user_id": "u", "publisher_id": publisher, "amount_cents": 99, "category": "vod",
                "description": "episode", "occurred_at": datetime.now(UTC).isoformat()}  # fmt: skip

    try:
        registration = {"publisher_id": publisher, "name": "Bench", "category": "vod",
                        "revenue_share_bp": 6000, "vat_category": "standard"}  # fmt: skip
        registered = checkout.until("/v1/admin/publishers", registration, checkout.admin, (201,))
        key = json.loads(registered)["api_key"]
        # The new publisher reaches the workers' reference data and the API its key first.
        checkout.until("/v1/purchases", body(-1), key, (200, 402))
        bodies = [body(n) for n in range(API_REQUESTS)]
        with ThreadPoolExecutor(API_CLIENTS) as pool:
            answers = list(pool.map(lambda b: checkout.call("/v1/purchases", b, key)[:2], bodies))
    finally:
        checkout.process.stop()
    latencies = sorted(seconds for _, seconds in answers)
    by_status: dict[str, int] = {}
    for status, _ in answers:
        by_status[str(status)] = by_status.get(str(status), 0) + 1
    p99 = latencies[min(len(latencies) - 1, int(0.99 * len(latencies)))]
    return latencies[len(latencies) // 2], p99, by_status


def _one_run(settings: StackSettings, workers: int, accounts: int, purchases: int,
             seed: int, say: Any) -> RunFigures:  # fmt: skip
    """On a started stack of its own."""
    from ledger.stack import manager
    from projections.replay import drop_schema, replay

    state = manager.connection(settings)
    assert state.kafka is not None and state.postgres is not None
    bootstrap, dsn = state.kafka.bootstrap_servers, state.postgres.dsn
    processes = _start(settings, workers)
    try:
        measured = _measure(bootstrap, dsn, settings.topic_partitions, processes, accounts,
                            purchases, seed, say)  # fmt: skip
        say(f"  {workers} worker(s): {API_REQUESTS} purchases through the checkout API")
        api = _api_latency(settings, measured.run, accounts)
        say(f"  {workers} worker(s): replaying ledger.events into a fresh schema")
        try:
            result = replay(bootstrap, dsn, "ledger_bench_replay", settings.topic_partitions)
        finally:
            drop_schema(dsn, "ledger_bench_replay")
        peaks = {p.name: round(p.peak_rss_mib(), 1) for p in processes}
        peaks["kafka"] = round(_vm_hwm_mib(state.kafka.process.pid), 1)
        postgres = [state.postgres.process.pid, *_children(state.postgres.process.pid)]
        peaks["postgres (largest process)"] = round(max(_vm_hwm_mib(p) for p in postgres), 1)
    finally:
        for process in processes:
            process.stop()
    latencies = measured.latencies
    return RunFigures(
        workers=workers, accounts=accounts, purchases=measured.purchases,
        throughput_events_per_second=measured.throughput,
        decisions_per_second=measured.decisions,
        decision_latency_p50_seconds=latencies[len(latencies) // 2],
        decision_latency_p99_seconds=latencies[min(len(latencies) - 1, int(0.99 * len(latencies)))],
        decision_latency_max_seconds=latencies[-1], paced_rate_per_second=measured.rate,
        api_requests=API_REQUESTS, api_latency_p50_seconds=api[0], api_latency_p99_seconds=api[1],
        api_answers=api[2],
        replay_events_per_second=result.events_per_second, replay_events=result.records,
        replay_equal=result.equal, peak_rss_mib=peaks,
    )  # fmt: skip


def run(worker_counts: list[int], accounts: int, purchases: int, seed: int, port_base: int,
        say: Any = print) -> list[RunFigures]:  # fmt: skip
    from ledger.stack import manager

    base = load_settings()
    figures = []
    for workers in worker_counts:
        home = Path(tempfile.mkdtemp(prefix="ledger-bench-home-"))
        settings = _bench_settings(base, home, port_base)
        try:
            say(f"{workers} worker(s): a stack of its own on ports {port_base}-{port_base + 2}")
            manager.up(settings)
            figures.append(_one_run(settings, workers, accounts, purchases, seed, say))
        finally:
            manager.down(settings, purge=True)
            shutil.rmtree(home, ignore_errors=True)
    return figures


def report(figures: list[RunFigures]) -> str:
    rows: list[tuple[str, ...]] = [("", *[f"{f.workers} worker(s)" for f in figures])]

    def row(name: str, values: list[str]) -> None:
        rows.append((name, *values))

    row("accounts / purchases (backlog)", [f"{f.accounts:,} / {f.purchases:,}" for f in figures])
    row("throughput (decided, balanced, in PostgreSQL)",
        [f"{f.throughput_events_per_second:,.0f} /s" for f in figures])  # fmt: skip
    row("decisions (facts on ledger.events)",
        [f"{f.decisions_per_second:,.0f} /s" for f in figures])  # fmt: skip
    row("paced at (half the throughput)", [f"{f.paced_rate_per_second:,.0f} /s" for f in figures])
    for name, attr in (("decision latency p50", "decision_latency_p50_seconds"),
                       ("decision latency p99", "decision_latency_p99_seconds"),
                       ("decision latency max", "decision_latency_max_seconds")):  # fmt: skip
        row(name, [f"{getattr(f, attr) * 1000:,.0f} ms" for f in figures])
    row(
        f"checkout API p50 / p99 ({API_CLIENTS} clients)",
        [
            f"{f.api_latency_p50_seconds * 1000:,.0f} / {f.api_latency_p99_seconds * 1000:,.0f} ms"
            for f in figures
        ],
    )
    row(
        "checkout API answers",
        [" ".join(f"{k}:{v}" for k, v in sorted(f.api_answers.items())) for f in figures],
    )
    row("replay", [f"{f.replay_events_per_second:,.0f} events/s" for f in figures])
    row("replay equals live", [str(f.replay_equal) for f in figures])
    names = sorted({name for f in figures for name in f.peak_rss_mib})
    for name in names:
        row(
            f"peak RSS {name}",
            [
                f"{f.peak_rss_mib[name]:,.0f} MiB" if name in f.peak_rss_mib else "-"
                for f in figures
            ],
        )
    return table(rows)


def as_json(figures: list[RunFigures]) -> dict[str, Any]:
    """The first run's figures at the top (the issue's field names), every run under `runs`."""
    first = figures[0]
    return {
        "throughput_events_per_second": first.throughput_events_per_second,
        "decision_latency_p50_seconds": first.decision_latency_p50_seconds,
        "decision_latency_p99_seconds": first.decision_latency_p99_seconds,
        "replay_events_per_second": first.replay_events_per_second,
        "peak_rss_mib": first.peak_rss_mib,
        "runs": [asdict(f) for f in figures],
    }
