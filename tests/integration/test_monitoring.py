"""deploy/: the Prometheus configuration and alert rules pass the real tools from Debian's
packages (promtool), the alerts' own unit tests pass, and a real Prometheus, run with the shipped
configuration, scrapes a real worker, projection writer and checkout API, evaluates every rule
without error, fires the dead-letter alert on a real poison message, and answers every query of
the Grafana dashboard, whose metric names all exist on the real endpoints."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from ledger.stack import prometheus
from ledger.stack.state import StackState
from tests import builders as b
from tests.harness import (
    PROJECT_ROOT,
    ApiServer,
    LedgerProcess,
    Projector,
    Worker,
    free_port,
    produce,
    wait_for,
)
from tests.world import T0, World

DEPLOY = PROJECT_ROOT / "deploy"
SCRAPE_SECONDS = 1  # the shipped 15 s, shortened for the test only
NAME = re.compile(r"\b(ledger_[a-z_]+|up)\b")


@pytest.fixture(scope="module")
def tools() -> tuple[Path, Path]:
    return prometheus.ensure_installed()


def _promtool(promtool: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(promtool), *args], cwd=DEPLOY / "prometheus", capture_output=True, text=True,
        timeout=120, check=False,
    )  # fmt: skip


def test_promtool_accepts_the_config_and_the_rules_and_the_alert_tests_pass(
    tools: tuple[Path, Path],
) -> None:
    _, promtool = tools
    for args in (("check", "config", "prometheus.yml"),
                 ("check", "config", "prometheus-cluster.yml"), ("check", "rules", "alerts.yml"),
                 ("test", "rules", "alerts_test.yml")):  # fmt: skip
        done = _promtool(promtool, *args)
        assert done.returncode == 0, f"promtool {' '.join(args)}: {done.stdout}{done.stderr}"
    assert "SUCCESS: 13 rules found" in _promtool(promtool, "check", "rules", "alerts.yml").stdout


def _dashboard_queries() -> list[str]:
    dashboard = json.loads((DEPLOY / "grafana" / "ledger-dashboard.json").read_text())
    return [target["expr"] for panel in dashboard["panels"] for target in panel["targets"]]


class PrometheusServer:
    def __init__(self, binary: Path, home: Path, targets: dict[str, list[int]]) -> None:
        self.binary, self.home, self.port = binary, home, free_port()
        shutil.copytree(DEPLOY / "prometheus", home / "config")
        config = home / "config" / "prometheus.yml"
        text = config.read_text().replace("15s", f"{SCRAPE_SECONDS}s")
        assert text.count(f"{SCRAPE_SECONDS}s") == 2  # scrape and evaluation intervals
        config.write_text(text)
        for job, ports in targets.items():
            (home / "config" / "targets" / f"{job}.json").write_text(
                json.dumps([{"targets": [f"127.0.0.1:{port}" for port in ports]}])
            )
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> PrometheusServer:
        with (self.home / "prometheus.log").open("ab") as log:
            self.process = subprocess.Popen(
                [str(self.binary), f"--config.file={self.home / 'config' / 'prometheus.yml'}",
                 f"--storage.tsdb.path={self.home / 'data'}",
                 f"--web.listen-address=127.0.0.1:{self.port}"],
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                start_new_session=True,
            )  # fmt: skip
        wait_for(self._ready, 60, "Prometheus to be ready")
        return self

    def _ready(self) -> bool:
        assert self.process is not None
        if self.process.poll() is not None:
            raise AssertionError((self.home / "prometheus.log").read_text()[-2000:])
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/-/ready", timeout=2) as r:
                return bool(r.status == 200)
        except OSError:
            return False

    def api(self, path: str, **params: str) -> Any:
        query = f"?{urllib.parse.urlencode(params)}" if params else ""
        url = f"http://127.0.0.1:{self.port}/api/v1/{path}{query}"
        try:
            with urllib.request.urlopen(url, timeout=10) as response:
                answer = json.loads(response.read())
        except urllib.error.HTTPError as error:
            answer = json.loads(error.read())
        assert answer["status"] == "success", f"{path} {params}: {answer}"
        return answer["data"]

    def value(self, query: str) -> float | None:
        result = self.api("query", query=query)["result"]
        return float(result[0]["value"][1]) if result else None

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=30)


class Verifier(LedgerProcess):
    """A `ledger verify --every`: its metrics, served while it runs."""

    def arguments(self) -> list[str]:
        return ["verify", "--every", "3600", "--metrics-port", str(self.metrics_port), "--quiet",
                "--processes", "1", "--skip-postgres"]  # fmt: skip


def _exposed_names(ports: list[int]) -> set[str]:
    names = {"up"}
    for port in ports:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
            for line in response.read().decode().splitlines():
                if line.startswith("# TYPE "):
                    name, kind = line.split()[2:4]
                    names.add(name)
                    if kind == "counter":
                        names.add(f"{name}_total")
                    if kind == "histogram":
                        names |= {f"{name}_bucket", f"{name}_sum", f"{name}_count"}
    return names


def _wait_scraped(server: PrometheusServer) -> None:
    def seen(query: str, low: float) -> bool:
        value = server.value(query)
        return value is not None and value >= low

    wait_for(lambda: seen('sum(ledger_decisions_total{outcome="accepted"})', 2), 180,
             "the decisions of the scenario in Prometheus")  # fmt: skip
    wait_for(lambda: seen('sum(ledger_projection_records_total{outcome="applied"})', 2), 180,
             "the projection writer's applied events in Prometheus")  # fmt: skip
    wait_for(lambda: seen("max(ledger_reconcile_last_run_timestamp_seconds)", time.time() - 120),
             60, "a reconciliation in Prometheus")  # fmt: skip
    time.sleep(3 * SCRAPE_SECONDS)  # a rate needs two samples


@pytest.fixture(scope="module")
def scraped(
    stack: StackState, tools: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[PrometheusServer, list[int], World]]:
    assert stack.kafka is not None
    tmp = tmp_path_factory.mktemp("monitoring")
    worker = Worker("mon-worker", tmp / "worker")
    writer = Projector("mon-writer", tmp, reconcile_seconds=2)
    api = ApiServer(tmp, admin_key="mon-admin-key-0123456789abcdef")
    # `ledger verify --every`, for its metrics: one run now (of every test's log on the shared
    # stack: what it finds does not matter here), the next in an hour.
    verifier = Verifier("mon-verify", tmp)
    processes: list[LedgerProcess] = [worker.start(), writer.start(), verifier.start()]
    server: PrometheusServer | None = None
    try:
        api.start()
        ports = [worker.metrics_port, writer.metrics_port, api.port, verifier.metrics_port]
        server = PrometheusServer(tools[0], tmp / "prometheus", {
            "workers": [worker.metrics_port], "projections": [writer.metrics_port],
            "apis": [api.port], "verify": [verifier.metrics_port],
        }).start()  # fmt: skip

        def all_up() -> bool:
            assert server is not None
            targets = server.api("targets")["activeTargets"]
            return len(targets) == 4 and all(t["health"] == "up" for t in targets)

        wait_for(all_up, 120, "Prometheus to scrape the worker, the writer and the API")
        world = World()
        account = world.account("m1")
        produce(
            stack.kafka.bootstrap_servers, stack.topic_partitions or 4, world.records,
            [b.open_account(account, world.isp.isp_id),
             b.purchase(account, 299, T0, publisher_id=world.vod.publisher_id)],
            poison=[(b"poison", b"{not json", 0)],
        )  # fmt: skip
        _wait_scraped(server)
        yield server, ports, world
    finally:
        if server is not None:
            server.stop()
        api.stop()
        for process in processes:
            process.stop()


def test_a_real_prometheus_scrapes_the_processes_and_fires_the_dead_letter_alert(
    scraped: tuple[PrometheusServer, list[int], World],
) -> None:
    server, _, _ = scraped
    for job in ("ledger-workers", "ledger-projections", "ledger-apis", "ledger-verify"):
        assert server.value(f'up{{job="{job}"}}') == 1.0, job

    assert server.value("max(ledger_reconcile_failed_checks)") == 0.0

    def firing(name: str) -> bool:
        return any(
            alert["labels"]["alertname"] == name and alert["state"] == "firing"
            for alert in server.api("alerts")["alerts"]
        )

    wait_for(lambda: firing("LedgerDeadLetters"), 120, "the dead-letter alert to fire")
    rules = [rule for group in server.api("rules")["groups"] for rule in group["rules"]]
    assert len(rules) == 13
    assert all(rule["health"] == "ok" for rule in rules), [
        (rule["name"], rule.get("lastError")) for rule in rules if rule["health"] != "ok"
    ]
    quiet = {"LedgerReconcileMismatch", "LedgerWorkerDown", "LedgerProjectionWriterDown"}
    assert not [name for name in quiet if firing(name)]


def test_every_dashboard_and_alert_query_is_answered_and_names_real_metrics(
    scraped: tuple[PrometheusServer, list[int], World],
) -> None:
    server, ports, _ = scraped
    exposed = _exposed_names(ports)
    alerts = [rule["query"] for group in server.api("rules")["groups"] for rule in group["rules"]]
    queries = _dashboard_queries() + alerts
    assert len(_dashboard_queries()) >= 12 and len(alerts) == 13
    for query in queries:
        server.api("query", query=query)  # asserts Prometheus parsed and ran it
        unknown = {name for name in NAME.findall(query)} - exposed
        assert not unknown, f"{query!r} names metrics no process exposes: {unknown}"
    answered = [q for q in _dashboard_queries() if server.api("query", query=q)["result"]]
    # Rejections by reason and the API's latency have no sample until they happen.
    unanswered = [q for q in _dashboard_queries() if q not in answered]
    assert len(answered) >= len(_dashboard_queries()) - 3, unanswered
