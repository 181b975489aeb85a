"""`ledger bench`: the whole ledger on the real stack, end to end.

For each worker count (1, then 2 by default) on a stack of its own (a fresh broker and database in
a temporary home, on ports of their own, purged afterwards: the developer's stack is left alone):

1. the workers (`ledger worker`) and the projection writer (`ledger project`) are started as
   processes; the reference data and the accounts are sent and waited for in PostgreSQL;
2. throughput: a backlog of purchase commands, encoded before the clock starts, is produced as
   fast as the producer goes, and the clock runs until the last of them is decided, committed in
   PostgreSQL, and balanced (the workers fold the publisher and ISP balances into each
   partition's summary with the batch that decides it, and their consumer group has committed
   every record of ledger.commands); the rate of decisions alone (facts on ledger.events) is
   reported beside it. What the backlog cost is counted over the same clock: Kafka records per
   purchase, from the end offsets of every topic on the broker, and CPU seconds per 1,000
   purchases of each process, from /proc (ledger/bench/costs.py);
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

import asyncio
import gc
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ledger.bench import costs, stream, table
from ledger.errors import LedgerError
from ledger.kafka import topics
from ledger.kafka.groups import APP_ID
from ledger.settings import StackSettings, load_settings

if TYPE_CHECKING:
    from ledger.api.client import Checkout

DEADLINE_SECONDS = 1_800.0
PACED_SECONDS = 20.0
API_REQUESTS = 1_000
API_CLIENTS = 4
# Subscribers with credentials at the identity component for the checkout's latency: 5 payments
# each, under the default velocity limit (issuing one costs a scrypt hash, about 50 ms).
API_ACCOUNTS = 200
POLL_SECONDS = 0.25
PROJECTION_SCHEMA = "ledger"  # where `ledger project` writes


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
    backlog_seconds: float = 0.0  # the throughput's clock: first send to the last commit
    # From the same start: until the broker had every command, until the last fact was
    # appended, until PostgreSQL had every fact (the last done is the workers' commit).
    backlog_send_seconds: float = 0.0
    backlog_decided_seconds: float = 0.0
    backlog_projected_seconds: float = 0.0
    authorized_share: float = 0.0  # of the backlog's purchases
    # Records appended per purchase during the backlog: Kafka's own topics (__consumer_offsets)
    # are in the breakdown, not in the total.
    kafka_records_per_purchase: float = 0.0
    kafka_records_per_purchase_by_topic: dict[str, float] = field(default_factory=dict)
    # CPU seconds during the backlog per 1,000 of its purchases, by process (a worker with its
    # faust child, PostgreSQL with all its processes); the machine's beside them, every process
    # on it included (other people's too: this machine is shared).
    cpu_seconds_per_1000_purchases: dict[str, float] = field(default_factory=dict)
    machine_cpu_seconds_per_1000_purchases: float = 0.0
    # How long after the backlog's last fact was appended the bench's watcher read it: the
    # bench keeps up when this stays small.
    watcher_behind_seconds: float = 0.0
    # The checkout with consent (issue 14): api_latency_* is the subscriber's confirmation (the
    # page, the ISP's sign-in, confirm, back to the decision); prepare_latency_* the publisher's
    # POST /v1/payments.
    prepare_latency_p50_seconds: float = 0.0
    prepare_latency_p99_seconds: float = 0.0


def _vm_hwm_mib(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def _tree(pid: int) -> list[int]:
    """The process and every process below it."""
    return costs.descendants(costs.process_table(), pid)


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
        return sum(_vm_hwm_mib(pid) for pid in _tree(self.popen.pid))

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
    from projections.db import connect

    with connect(dsn, PROJECTION_SCHEMA) as db:
        row = db.execute(query.encode(), params).fetchone()
    return int(row[0]) if row else 0


def _wait_projected(dsn: str, next_offsets: dict[int, int], processes: list[_Process]) -> None:
    """Until the projection writer has stored offsets at or past these on ledger.events: it
    stores them in the transaction of the rows they cover (projection_offsets, STYLE.md §5).
    Read from that small table, not by counting rows: a count of a growing table every poll
    would be PostgreSQL CPU charged to the ledger."""
    import psycopg

    from projections.replay import live_offsets

    deadline = time.monotonic() + DEADLINE_SECONDS
    with psycopg.connect(dsn, autocommit=True) as db:
        while True:
            stored = live_offsets(db, PROJECTION_SCHEMA, topics.EVENTS)
            if all(stored.get(p, 0) >= offset for p, offset in next_offsets.items()):
                return
            if time.monotonic() > deadline:
                raise LedgerError(f"the bench's facts not all projected after {DEADLINE_SECONDS} s")
            for process in processes:
                process.check()
            time.sleep(POLL_SECONDS)


def _alive(processes: list[_Process]) -> Callable[[], None]:
    """Raises, with the tail of its log, if one of the processes has exited."""

    def check() -> None:
        for process in processes:
            process.check()

    return check


def _check_projected(dsn: str, run: str, table: str, count: int) -> None:
    """Once a phase is timed: its rows are all there (the offsets said so)."""
    column = "purchase_id" if table == "purchases" else "account_id"
    found = _count(dsn, f"SELECT count(*) FROM {table} WHERE {column} LIKE %s", f"%-{run}")
    if found != count:
        raise LedgerError(f"{found:,} {table} of the bench in PostgreSQL, {count:,} expected")


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
class _Backlog:
    """The throughput phase's figures."""

    purchases: int
    seconds: float = 0.0  # from the first send until all is done
    send_seconds: float = 0.0  # until the broker had every command
    decided_seconds: float = 0.0  # until the last fact was appended
    projected_seconds: float = 0.0  # until PostgreSQL had it all
    decisions_per_second: float = 0.0
    authorized_share: float = 0.0
    watcher_behind_seconds: float = 0.0
    records_by_topic: dict[str, float] = field(default_factory=dict)
    cpu_per_thousand: dict[str, float] = field(default_factory=dict)

    @property
    def throughput(self) -> float:
        return self.purchases / self.seconds


@dataclass
class _Measured:
    run: str
    backlog: _Backlog
    rate: float
    latencies: list[float]


async def _accounts(sender: stream.Sender, watcher: stream.FactWatcher, dsn: str, run: str,
                    accounts: int, partitions: int, processes: list[_Process]) -> None:  # fmt: skip
    reference, opens = stream.world(run, accounts)
    await sender.send_all(stream.encode_reference(reference, partitions))
    await stream.wait_for_reference(sender, watcher, run, partitions, DEADLINE_SECONDS)
    records = stream.encode_commands(opens, partitions)
    await stream.send_and_wait(sender, watcher, records, DEADLINE_SECONDS, _alive(processes))
    await asyncio.to_thread(_wait_projected, dsn, dict(watcher.next_offsets), processes)
    _check_projected(dsn, run, "accounts", accounts)


async def _backlog(sender: stream.Sender, watcher: stream.FactWatcher, bootstrap: str, dsn: str,
                   records: list[stream.Outgoing], roots: dict[str, list[int]],
                   processes: list[_Process]) -> _Backlog:  # fmt: skip
    """Throughput: the records (encoded before the clock) sent as fast as the producer goes; the
    clock stops once every purchase is decided (its fact on ledger.events), committed in
    PostgreSQL, and balanced: the workers fold the publisher and ISP balances into each
    partition's summary with the batch, and acknowledge a batch once that is written, so their
    group's committed offsets on what they read (ledger.commands) say it (stream.wait_idle)."""
    figures = _Backlog(purchases=len(records))
    types_before = dict(watcher.types)
    ends_before = await asyncio.to_thread(costs.topic_end_offsets, bootstrap)
    cpu_before = costs.sample_cpu(roots)
    started, started_ms = time.monotonic(), time.time() * 1000
    await sender.send_all(records)
    figures.send_seconds = time.monotonic() - started
    await watcher.wait_for(watcher.seen + len(records), DEADLINE_SECONDS, _alive(processes))
    figures.watcher_behind_seconds = max(0.0, time.time() - watcher.last_fact_ms / 1000)
    # By the facts' own timestamps: how soon the watcher read them does not count.
    figures.decided_seconds = (watcher.last_fact_ms - started_ms) / 1000
    figures.decisions_per_second = len(records) / figures.decided_seconds
    await asyncio.to_thread(_wait_projected, dsn, dict(watcher.next_offsets), processes)
    figures.projected_seconds = time.monotonic() - started
    await asyncio.to_thread(stream.wait_idle, bootstrap, APP_ID, DEADLINE_SECONDS)
    figures.seconds = time.monotonic() - started
    cpu_after = costs.sample_cpu(roots)
    ends_after = await asyncio.to_thread(costs.topic_end_offsets, bootstrap)
    figures.cpu_per_thousand = costs.per_thousand(cpu_before, cpu_after, len(records))
    figures.records_by_topic = costs.records_per_purchase(ends_before, ends_after, len(records))
    authorized = watcher.types[stream.AUTHORIZED] - types_before.get(stream.AUTHORIZED, 0)
    figures.authorized_share = authorized / len(records)
    return figures


async def _measure(bootstrap: str, dsn: str, partitions: int, processes: list[_Process],
                   roots: dict[str, list[int]], accounts: int, purchases: int, seed: int,
                   say: Any) -> _Measured:  # fmt: skip
    import uuid

    workers = len(processes) - 1
    run = uuid.uuid4().hex[:8]
    async with (
        stream.Sender(bootstrap) as sender,
        stream.FactWatcher(bootstrap, run, partitions) as watcher,
    ):
        say(f"  {workers} worker(s): {accounts:,} accounts; waiting for them")
        await _accounts(sender, watcher, dsn, run, accounts, partitions, processes)
        records = stream.encode_commands(stream.purchases(run, accounts, purchases, seed),
                                         partitions)  # fmt: skip
        # What start-up and the backlog allocated stays out of the collector's way while the
        # bench reads the facts (a full collection walks every object the bench holds).
        gc.collect()
        gc.freeze()
        say(f"  {workers} worker(s): {purchases:,} purchases, as fast as they go")
        backlog = await _backlog(sender, watcher, bootstrap, dsn, records, roots, processes)
        _check_projected(dsn, run, "purchases", purchases)
        rate = backlog.throughput / 2
        commands = stream.purchases(run, accounts, int(rate * PACED_SECONDS), seed + 1, purchases)
        paced = stream.paced_records(commands, partitions)
        say(f"  {workers} worker(s): {len(paced):,} purchases paced at {rate:,.0f}/s")
        before = watcher.seen
        sent_ms = await stream.send_paced(sender, watcher, paced, rate)
        await watcher.wait_for(before + len(paced), DEADLINE_SECONDS, _alive(processes))
        await asyncio.to_thread(_wait_projected, dsn, dict(watcher.next_offsets), processes)
    _check_projected(dsn, run, "purchases", purchases + len(paced))
    latencies = stream.latencies_seconds(sent_ms, watcher.decided_at_ms)
    return _Measured(run, backlog, rate, latencies)


class _Checkout:
    """A `ledger api` process of the bench's own, the ISPs' identity component beside it, and an
    HTTP client of both (ledger.api.client)."""

    def __init__(self, settings: StackSettings) -> None:
        import secrets

        from ledger.api.client import Checkout

        self.port, idp_port = _free_port(), _free_port()
        self.admin = f"admin_{secrets.token_hex(16)}"
        env = {**os.environ, "LEDGER_HOME": str(settings.home), "LEDGER_ADMIN_KEY": self.admin,
               "LEDGER_KAFKA_PORT": str(settings.kafka_port),
               "LEDGER_POSTGRES_PORT": str(settings.postgres_port)}  # fmt: skip
        base = f"http://127.0.0.1:{self.port}"
        self.idp = _Process("isp-idp", ["idp", "--port", str(idp_port), "--platform-url", base],
                            env, settings.home / "logs")  # fmt: skip
        # No holds' expiry barrier: the bench counts the commands it sent.
        self.process = _Process("checkout-api", ["api", "--port", str(self.port), "--idp-url",
                                f"http://127.0.0.1:{idp_port}", "--holds-expiry-seconds", "0"],
                                env, settings.home / "logs")  # fmt: skip
        self.client = Checkout(base)

    def until(self, path: str, body: dict[str, Any], key: str, wanted: tuple[int, ...]) -> Any:
        return call_until(self.client, "POST", path, body, key, wanted, [self.process, self.idp])

    def stop(self) -> None:
        self.process.stop()
        self.idp.stop()


def _free_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def call_until(
    client: Checkout, method: str, path: str, body: Any, key: str, wanted: tuple[int, ...],
    processes: list[_Process], headers: dict[str, str] | None = None,
) -> Any:  # fmt: skip
    """Call an API of the bench's until it answers one of `wanted` (it may still be starting, or
    not yet know what was just registered), for at most 120 s; a process that died ends it."""
    deadline = time.monotonic() + 120
    while True:
        for process in processes:
            process.check()
        try:
            status, answer = client.call(method, path, body, key, headers)
        except OSError:
            status, answer = 0, {}
        if status in wanted:
            return answer
        if time.monotonic() > deadline:
            raise LedgerError(f"{client.base}{path} answered {status} for 120 s: {answer}")
        time.sleep(0.5)


def _percentiles(values: list[float]) -> tuple[float, float]:
    ordered = sorted(values)
    return ordered[len(ordered) // 2], ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))]


@dataclass(frozen=True)
class _ApiFigures:
    prepare: tuple[float, float]  # p50, p99
    confirm: tuple[float, float]
    outcomes: dict[str, int]  # by the decision the page showed


def _api_latency(settings: StackSettings, run: str, accounts: int) -> _ApiFigures:
    """Payments through the checkout with consent, from API_CLIENTS clients at once, each as a
    browser does it (ledger.api.client): the publisher prepares, the subscriber opens the page,
    signs in at their ISP and confirms, and the page shows the decision read back from the
    stream."""
    from concurrent.futures import ThreadPoolExecutor

    checkout = _Checkout(settings)
    publisher, isp = f"pub-api-{run}", f"isp-{run}"
    try:
        registration = {"publisher_id": publisher, "name": "Bench", "category": "vod",
                        "revenue_share_bp": 6000, "vat_category": "standard"}  # fmt: skip
        key = checkout.until("/v1/admin/publishers", registration, checkout.admin, (201,))[
            "api_key"
        ]
        checkout.until(f"/v1/admin/isps/{isp}/secret", {}, checkout.admin, (201,))
        logins = [
            checkout.until(
                f"/v1/admin/accounts/a{n}-{run}/credentials",
                {"user_id": "u"},
                checkout.admin,
                (201,),
            )
            for n in range(min(API_ACCOUNTS, accounts))
        ]
        body = {"amount_cents": 99, "category": "vod", "description": "episode"}
        # The new publisher's key reaches the API first.
        deadline = time.monotonic() + 120
        while checkout.client.prepare(key, body, f"warm-{run}")[0] != 201:
            if time.monotonic() > deadline:
                raise LedgerError("the checkout API never knew the bench's publisher")
            time.sleep(0.5)

        def one(n: int) -> tuple[float, float, str]:
            login = logins[n % len(logins)]
            started = time.perf_counter()
            status, prepared = checkout.client.prepare(key, body, f"api{n}-{run}")
            prepared_at = time.perf_counter()
            if status != 201:
                return prepared_at - started, 0.0, f"prepare {status}"
            confirmed = checkout.client.confirm(prepared["confirm_url"], isp, login["login"],
                                                login["password"])  # fmt: skip
            outcome = confirmed.outcome.get("status", str(confirmed.page.status))
            return prepared_at - started, time.perf_counter() - prepared_at, outcome

        with ThreadPoolExecutor(API_CLIENTS) as pool:
            answers = list(pool.map(one, range(API_REQUESTS)))
    finally:
        checkout.stop()
    outcomes: dict[str, int] = {}
    for _, _, outcome in answers:
        outcomes[outcome] = outcomes.get(outcome, 0) + 1
    return _ApiFigures(
        _percentiles([a[0] for a in answers]),
        _percentiles([a[1] for a in answers if a[1] > 0] or [0.0]),
        outcomes,
    )


def _one_run(settings: StackSettings, workers: int, accounts: int, purchases: int,
             seed: int, say: Any) -> RunFigures:  # fmt: skip
    """On a started stack of its own."""
    from ledger.stack import manager
    from projections.replay import drop_schema, replay

    state = manager.connection(settings)
    assert state.kafka is not None and state.postgres is not None
    bootstrap, dsn = state.kafka.bootstrap_servers, state.postgres.dsn
    processes = _start(settings, workers)
    postmaster = state.postgres.process.pid
    roots = {p.name: [p.popen.pid] for p in processes}
    roots |= {"kafka": [state.kafka.process.pid], "postgres": [postmaster]}
    try:
        measured = asyncio.run(_measure(bootstrap, dsn, settings.topic_partitions, processes,
                                        roots, accounts, purchases, seed, say))  # fmt: skip
        say(f"  {workers} worker(s): {API_REQUESTS} payments through the checkout with consent")
        api = _api_latency(settings, measured.run, accounts)
        say(f"  {workers} worker(s): replaying ledger.events into a fresh schema")
        try:
            result = replay(bootstrap, dsn, "ledger_bench_replay", settings.topic_partitions)
        finally:
            drop_schema(dsn, "ledger_bench_replay")
        peaks = {p.name: round(p.peak_rss_mib(), 1) for p in processes}
        peaks["kafka"] = round(_vm_hwm_mib(state.kafka.process.pid), 1)
        peaks["postgres (largest process)"] = round(
            max(_vm_hwm_mib(p) for p in _tree(postmaster)), 1
        )
    finally:
        for process in processes:
            process.stop()
    latencies, backlog = measured.latencies, measured.backlog
    cpu = {name: round(value, 4) for name, value in backlog.cpu_per_thousand.items()}
    machine = cpu.pop(costs.MACHINE)
    records = {topic: round(value, 4) for topic, value in backlog.records_by_topic.items()}
    return RunFigures(
        workers=workers, accounts=accounts, purchases=backlog.purchases,
        throughput_events_per_second=backlog.throughput,
        decisions_per_second=backlog.decisions_per_second,
        decision_latency_p50_seconds=latencies[len(latencies) // 2],
        decision_latency_p99_seconds=latencies[min(len(latencies) - 1, int(0.99 * len(latencies)))],
        decision_latency_max_seconds=latencies[-1], paced_rate_per_second=measured.rate,
        api_requests=API_REQUESTS, api_latency_p50_seconds=api.confirm[0],
        api_latency_p99_seconds=api.confirm[1], api_answers=api.outcomes,
        prepare_latency_p50_seconds=api.prepare[0], prepare_latency_p99_seconds=api.prepare[1],
        replay_events_per_second=result.events_per_second, replay_events=result.records,
        replay_equal=result.equal, peak_rss_mib=peaks,
        backlog_seconds=backlog.seconds, backlog_send_seconds=backlog.send_seconds,
        backlog_decided_seconds=backlog.decided_seconds,
        backlog_projected_seconds=backlog.projected_seconds,
        authorized_share=backlog.authorized_share,
        kafka_records_per_purchase=round(costs.ledger_records_per_purchase(records), 4),
        kafka_records_per_purchase_by_topic=records,
        cpu_seconds_per_1000_purchases=cpu, machine_cpu_seconds_per_1000_purchases=machine,
        watcher_behind_seconds=backlog.watcher_behind_seconds,
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


def _part_rows(
    figures: list[RunFigures], parts: Callable[[RunFigures], dict[str, float]], names: list[str]
) -> list[tuple[str, ...]]:
    """One indented row per name: each run's value, or "-" where a run has none."""
    return [
        (f"  {name}", *[f"{parts(f)[name]:,.3f}" if name in parts(f) else "-" for f in figures])
        for name in names
    ]


def _cost_rows(figures: list[RunFigures]) -> list[tuple[str, ...]]:
    """Records and CPU per purchase during the backlog, each part under its total."""

    def records(f: RunFigures) -> dict[str, float]:
        return f.kafka_records_per_purchase_by_topic

    def cpu(f: RunFigures) -> dict[str, float]:
        return f.cpu_seconds_per_1000_purchases

    # Kafka's own topics last: they are not in the total.
    topics_ = sorted(
        {t for f in figures for t in records(f)}, key=lambda t: (costs.is_internal(t), t)
    )
    processes = sorted({name for f in figures for name in cpu(f)})
    return [
        ("Kafka records per purchase (topics but __*)",
         *[f"{f.kafka_records_per_purchase:,.2f}" for f in figures]),
        *_part_rows(figures, records, topics_),
        ("CPU s per 1,000 purchases (these processes)",
         *[f"{sum(cpu(f).values()):,.3f}" for f in figures]),
        *_part_rows(figures, cpu, processes),
        ("CPU s per 1,000 purchases (whole machine, others' too)",
         *[f"{f.machine_cpu_seconds_per_1000_purchases:,.3f}" for f in figures]),
    ]  # fmt: skip


def report(figures: list[RunFigures]) -> str:
    rows: list[tuple[str, ...]] = [("", *[f"{f.workers} worker(s)" for f in figures])]

    def row(name: str, values: list[str]) -> None:
        rows.append((name, *values))

    row("accounts / purchases (backlog)", [f"{f.accounts:,} / {f.purchases:,}" for f in figures])
    row(
        "backlog sent / decided / in PostgreSQL / all done",
        [
            f"{f.backlog_send_seconds:,.1f} / {f.backlog_decided_seconds:,.1f} / "
            f"{f.backlog_projected_seconds:,.1f} / {f.backlog_seconds:,.1f} s"
            for f in figures
        ],
    )
    row("throughput (decided, balanced, in PostgreSQL)",
        [f"{f.throughput_events_per_second:,.0f} /s" for f in figures])  # fmt: skip
    row("decisions (facts on ledger.events)",
        [f"{f.decisions_per_second:,.0f} /s" for f in figures])  # fmt: skip
    row("purchases authorized", [f"{f.authorized_share:.1%}" for f in figures])
    rows.extend(_cost_rows(figures))
    row("bench's watcher behind the last fact",
        [f"{f.watcher_behind_seconds * 1000:,.0f} ms" for f in figures])  # fmt: skip
    row("paced at (half the throughput)", [f"{f.paced_rate_per_second:,.0f} /s" for f in figures])
    for name, attr in (("decision latency p50", "decision_latency_p50_seconds"),
                       ("decision latency p99", "decision_latency_p99_seconds"),
                       ("decision latency max", "decision_latency_max_seconds")):  # fmt: skip
        row(name, [f"{getattr(f, attr) * 1000:,.0f} ms" for f in figures])
    row(
        f"checkout prepare p50 / p99 ({API_CLIENTS} clients)",
        [
            f"{f.prepare_latency_p50_seconds * 1000:,.0f} / "
            f"{f.prepare_latency_p99_seconds * 1000:,.0f} ms"
            for f in figures
        ],
    )
    row(
        "checkout confirm p50 / p99 (page, ISP sign-in, decision)",
        [
            f"{f.api_latency_p50_seconds * 1000:,.0f} / {f.api_latency_p99_seconds * 1000:,.0f} ms"
            for f in figures
        ],
    )
    row(
        "checkout decisions shown",
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
        "kafka_records_per_purchase": first.kafka_records_per_purchase,
        "kafka_records_per_purchase_by_topic": first.kafka_records_per_purchase_by_topic,
        "cpu_seconds_per_1000_purchases": first.cpu_seconds_per_1000_purchases,
        "runs": [asdict(f) for f in figures],
    }
