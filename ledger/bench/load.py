"""`ledger bench load`: the checkout and ISP APIs under load (issue 16 part 9), on the real stack.

1. A worker, the projection writer, the ISPs' identity component (`ledger idp`), the checkout
   API (`ledger api`, with the admission limits asked for) and the ISP API (`ledger isp-api`)
   are started as processes; an ISP, a publisher, `accounts` subscribers with their
   credentials and an ISP API key are set up through the admin API.
2. The load client (ledger.bench.load_client), a process of its own, runs `clients` concurrent
   clients for `seconds`: checkouts as a browser does them, and ISP reads. CPU seconds of the
   client and of the servers are read from /proc over the same clock.
3. The check: every confirm accepted (a 200 with the decision, or a 202 pending) must have its
   purchase command on ledger.commands and its fact on ledger.events, read back from the log
   once the worker is done: `accepted` against `found`.

Reported per route: requests/s, p50/p99/max latency, counts by status (429 and 503 are the
sheds), and the sheds without a Retry-After or a JSON body (0 is the only right answer).
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from ledger import keys
from ledger.api.admission import Limits
from ledger.bench import costs
from ledger.bench.e2e import _free_port, _Process, _start, call_until
from ledger.errors import LedgerError
from ledger.kafka import topics
from ledger.settings import StackSettings

CLIENTS_DEFAULT = 200
SECONDS_DEFAULT = 60.0
ACCOUNTS_DEFAULT = 100  # credentials cost a scrypt hash each at the identity component
ISP_EVERY = 5  # one flow in 5 is an ISP's reads
REQUEST_TIMEOUT_SECONDS = 30.0
CHECK_SECONDS = 120.0


@dataclass
class RouteFigures:
    requests: int
    per_second: float
    p50_seconds: float
    p99_seconds: float
    max_seconds: float
    statuses: dict[str, int]


@dataclass
class LoadFigures:
    clients: int
    seconds: float
    limits: dict[str, float]
    flows: int
    requests: int
    requests_per_second: float
    routes: dict[str, RouteFigures]
    shed: dict[str, int]  # by status: 429, 503
    shed_without_retry_after: int
    shed_without_json: int
    client_errors: dict[str, int]
    accepted: int
    accepted_pending: int
    commands_found: int
    facts_found: int
    cpu_seconds: dict[str, float] = field(default_factory=dict)  # client, servers, machine


def _percentile(ordered: list[float], fraction: float) -> float:
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))] if ordered else 0.0


def _env(settings: StackSettings) -> dict[str, str]:
    env = {**os.environ, "LEDGER_HOME": str(settings.home),
           "LEDGER_KAFKA_PORT": str(settings.kafka_port),
           "LEDGER_POSTGRES_PORT": str(settings.postgres_port)}  # fmt: skip
    env.pop("LEDGER_BOOTSTRAP_SERVERS", None)
    env.pop("LEDGER_DATABASE_URL", None)
    return env


def _until(base: str, method: str, path: str, body: Any, key: str, wanted: tuple[int, ...],
           processes: list[_Process], headers: dict[str, str] | None = None) -> Any:  # fmt: skip
    from ledger.api.client import Checkout

    return call_until(Checkout(base), method, path, body, key, wanted, processes, headers)


def _setup(api: str, admin: str, dsn: str, run: str, accounts: int,
           processes: list[_Process]) -> dict[str, Any]:  # fmt: skip
    import psycopg

    isp, publisher = f"isp-load-{run}", f"pub-load-{run}"
    _until(api, "POST", "/v1/admin/isps", {"isp_id": isp, "name": "Load", "billing_day": 1,
           "commission_bp": 1500}, admin, (201,), processes)  # fmt: skip
    key = _until(api, "POST", "/v1/admin/publishers", {
        "publisher_id": publisher, "name": "Load", "category": "vod", "revenue_share_bp": 6000,
        "vat_category": "standard"}, admin, (201,), processes)["api_key"]  # fmt: skip
    _until(api, "POST", f"/v1/admin/isps/{isp}/secret", {}, admin, (201,), processes)
    opened_at = (datetime.now(UTC) - timedelta(hours=1)).isoformat()
    logins = []
    for n in range(accounts):
        account = f"acct-load-{n}-{run}"
        _until(api, "POST", "/v1/admin/accounts", {
            "account_id": account, "isp_id": isp, "kind": "consumer", "command_id": f"o-{account}",
            "occurred_at": opened_at}, admin, (200,), processes)  # fmt: skip
        issued = _until(api, "POST", f"/v1/admin/accounts/{account}/credentials",
                        {"user_id": "u"}, admin, (201,), processes)  # fmt: skip
        logins.append({"login": issued["login"], "password": issued["password"]})
    isp_key = keys.new_key("isp")
    with psycopg.connect(dsn, autocommit=True) as db:
        db.execute("INSERT INTO ledger.isp_api_keys (key_sha256, isp_id) VALUES (%s, %s)",
                   (keys.key_hash(isp_key), isp))  # fmt: skip
    body = {"amount_cents": 99, "category": "vod", "description": "warm"}
    _until(api, "POST", "/v1/payments", body, key, (201,), processes,
           {"Idempotency-Key": f"warm-{run}"})  # fmt: skip
    return {"isp_id": isp, "publisher_key": key, "isp_key": isp_key, "logins": logins}


def _read_ids(bootstrap: str, topic: str, decode: Any) -> set[str]:
    """The purchase ids of every record of `topic` (the commands, or the facts)."""
    from kafka import KafkaConsumer, TopicPartition

    consumer = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False,
                             group_id=None, consumer_timeout_ms=5_000)  # fmt: skip
    try:
        parts = [TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic) or ()]
        consumer.assign(parts)
        consumer.seek_to_beginning(*parts)
        ends = consumer.end_offsets(parts)
        found: set[str] = set()
        while any(consumer.position(p) < ends[p] for p in parts):
            for records in consumer.poll(timeout_ms=1_000, max_records=10_000).values():
                for record in records:
                    try:
                        message = decode(record.value)
                    except Exception:  # a poison record of another test: not ours
                        continue
                    purchase = getattr(message, "purchase_id", None)
                    if purchase is not None:
                        found.add(purchase)
        return found
    finally:
        consumer.close()


def _check(bootstrap: str, accepted: set[str],
           processes: list[_Process]) -> tuple[int, int]:  # fmt: skip
    """(commands found, facts found) of the accepted payments, waiting for the facts of those
    accepted as pending at most CHECK_SECONDS."""
    from schemas import codec

    commands = _read_ids(bootstrap, topics.COMMANDS, codec.decode_command) & accepted
    deadline = time.monotonic() + CHECK_SECONDS
    while True:
        facts = _read_ids(bootstrap, topics.EVENTS, codec.decode_fact) & accepted
        if len(facts) == len(accepted) or time.monotonic() > deadline:
            return len(commands), len(facts)
        for process in processes:
            process.check()
        time.sleep(2)


def _route_figures(result: dict[str, Any], elapsed: float) -> dict[str, RouteFigures]:
    routes = {}
    for route, values in sorted(result["latencies"].items()):
        ordered = sorted(values)
        routes[route] = RouteFigures(
            len(ordered), len(ordered) / elapsed, _percentile(ordered, 0.5),
            _percentile(ordered, 0.99), ordered[-1], result["statuses"][route],
        )  # fmt: skip
    return routes


def run(settings: StackSettings, bootstrap: str, dsn: str, clients: int = CLIENTS_DEFAULT,
        seconds: float = SECONDS_DEFAULT, limits: Limits | None = None,
        accounts: int = ACCOUNTS_DEFAULT, say: Any = print) -> LoadFigures:  # fmt: skip
    limits = limits or Limits()
    run_id = secrets.token_hex(4)
    admin = f"admin_{secrets.token_hex(16)}"
    env = _env(settings) | {"LEDGER_ADMIN_KEY": admin}
    logs = settings.home / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    api_port, idp_port, isp_port = _free_port(), _free_port(), _free_port()
    api, isp_api = f"http://127.0.0.1:{api_port}", f"http://127.0.0.1:{isp_port}"
    processes = _start(settings, 1)
    admission = ["--max-in-flight", str(limits.max_in_flight), "--queue-wait-ms",
                 str(int(limits.queue_wait_seconds * 1000)), "--key-rate", str(limits.key_rate),
                 "--key-burst", str(limits.key_burst)]  # fmt: skip
    try:
        processes.append(_Process("load-idp", ["idp", "--port", str(idp_port), "--platform-url",
                                               api], env, logs))  # fmt: skip
        processes.append(_Process("load-api", ["api", "--port", str(api_port), "--idp-url",
                         f"http://127.0.0.1:{idp_port}", "--holds-expiry-seconds", "0",
                         *admission], env, logs))  # fmt: skip
        processes.append(_Process("load-isp-api", ["isp-api", "--port", str(isp_port),
                                                   *admission], env, logs))  # fmt: skip
        say(f"load: setting up {accounts} subscribers with their credentials")
        world = _setup(api, admin, dsn, run_id, accounts, processes)
        _until(isp_api, "GET", f"/v1/isps/{world['isp_id']}/periods", None, world["isp_key"],
               (200,), processes)  # fmt: skip
        config = world | {
            "api": api, "isp_api": isp_api, "run": run_id, "clients": clients,
            "seconds": seconds, "isp_every": ISP_EVERY, "period": "2026-11",
            "request_timeout_seconds": REQUEST_TIMEOUT_SECONDS,
        }  # fmt: skip
        say(f"load: {clients} clients for {seconds:g} s against {api} and {isp_api}")
        result, cpu = _drive(config, processes, seconds)
        accepted = set(result["accepted"])
        say(f"load: checking the {len(accepted):,} accepted payments on the log")
        commands, facts = _check(bootstrap, accepted, processes)
    finally:
        for process in reversed(processes):
            process.stop()
    elapsed = float(result["elapsed_seconds"])
    routes = _route_figures(result, elapsed)
    shed: dict[str, int] = {}
    for figures in routes.values():
        for status in ("429", "503"):
            shed[status] = shed.get(status, 0) + figures.statuses.get(status, 0)
    requests = sum(r.requests for r in routes.values())
    return LoadFigures(
        clients, elapsed, asdict(limits), result["flows"], requests, requests / elapsed, routes,
        shed, result["shed_without_retry_after"], result["shed_without_json"], result["errors"],
        len(accepted), sum(1 for o in result["accepted"].values() if o == "pending"),
        commands, facts, cpu,
    )  # fmt: skip


def _drive(config: dict[str, Any], processes: list[_Process],
           seconds: float) -> tuple[dict[str, Any], dict[str, float]]:  # fmt: skip
    """The load client's run (a process of its own) and the CPU seconds it and the servers
    spent meanwhile."""
    with tempfile.TemporaryDirectory(prefix="ledger-load-") as tmp:
        config_path, result_path = Path(tmp) / "config.json", Path(tmp) / "result.json"
        config_path.write_text(json.dumps(config))
        reaped_before = _reaped_child_cpu()
        client = subprocess.Popen(
            [sys.executable, "-m", "ledger.bench.load_client", str(config_path),
             str(result_path)], stdin=subprocess.DEVNULL,
        )  # fmt: skip
        roots = {"client": [client.pid]} | {p.name: [p.popen.pid] for p in processes}
        before = costs.sample_cpu(roots)
        client_ticks = 0.0
        try:
            code = client.wait(timeout=seconds + REQUEST_TIMEOUT_SECONDS + 120)
            # the client has exited: its CPU is its parent's reaped time, read from its
            # own accounting (resource) instead of /proc.
            client_ticks = _reaped_child_cpu() - reaped_before
        finally:
            if client.poll() is None:
                client.kill()
                client.wait()
        after = costs.sample_cpu(roots)
        if code != 0:
            raise LedgerError(f"the load client exited with {code}")
        result = json.loads(result_path.read_text())
    cpu = {name: after[name] - before[name] for name in after if name != "client"}
    cpu["client"] = client_ticks
    return result, cpu


def _reaped_child_cpu() -> float:
    """CPU seconds (user + system) of this process's waited-for children so far."""
    import resource

    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def report(f: LoadFigures) -> str:
    lines = [
        f"load: {f.clients} clients for {f.seconds:.1f} s, {f.requests:,} requests"
        f" ({f.requests_per_second:,.0f}/s), {f.flows:,} flows; limits {f.limits}",
        f"{'route':<32} {'req/s':>8} {'p50 ms':>8} {'p99 ms':>8} {'max ms':>8}  statuses",
    ]
    for route, r in f.routes.items():
        statuses = " ".join(f"{k}:{v}" for k, v in sorted(r.statuses.items()))
        lines.append(
            f"{route:<32} {r.per_second:>8.1f} {r.p50_seconds * 1000:>8.1f}"
            f" {r.p99_seconds * 1000:>8.1f} {r.max_seconds * 1000:>8.1f}  {statuses}"
        )
    lines += [
        f"shed: {f.shed} (without Retry-After: {f.shed_without_retry_after}, without a JSON"
        f" body: {f.shed_without_json}); client errors: {f.client_errors or 'none'}",
        f"accepted confirms: {f.accepted:,} ({f.accepted_pending:,} pending); on ledger.commands:"
        f" {f.commands_found:,}; decided on ledger.events: {f.facts_found:,}",
        "CPU seconds: " + ", ".join(f"{k} {v:.1f}" for k, v in sorted(f.cpu_seconds.items())),
    ]
    return "\n".join(lines)


def as_json(f: LoadFigures) -> dict[str, Any]:
    return asdict(f)
