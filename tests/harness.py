"""Real processes and real topics for the integration and fault tests: workers started and killed
by pid, topics read back from given offsets, and the pure core as the oracle of what the stream
must have decided."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from ledger.api.client import Checkout
from ledger.core.balances import Balance
from ledger.core.reference import Reference
from ledger.core.runner import LocalAuthorizer
from ledger.kafka import topics
from ledger.kafka.settings import consumer_config
from ledger.produce import LedgerProducer
from schemas import codec
from schemas.commands import Command
from schemas.facts import Fact, PurchaseAuthorized, PurchaseRefunded
from schemas.reference import ReferenceRecord

PROJECT_ROOT = Path(__file__).resolve().parents[1]
WORKER_READY_SECONDS = 90
READ_POLL_MS = 500


# Below Linux's ephemeral range (32768-60999): a port the kernel handed us as free could
# otherwise be taken a moment later as the source port of a client connection (seen in CI).
_PORTS_LOW, _PORTS_HIGH = 20_000, 32_000


def free_port() -> int:
    import random

    for _ in range(200):
        port = random.randrange(_PORTS_LOW, _PORTS_HIGH)
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError("no free port below the ephemeral range")


class LedgerProcess:
    """A `ledger` process of our own, known by its pid, its output in a log file."""

    def __init__(self, name: str, log_dir: Path, env: dict[str, str] | None = None) -> None:
        self.name = name
        self.metrics_port = free_port()
        self.log_path = log_dir / f"{name}.log"
        self.env = {**os.environ, **(env or {})}
        self.process: subprocess.Popen[bytes] | None = None

    def arguments(self) -> list[str]:
        raise NotImplementedError

    def start(self) -> LedgerProcess:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        command = [sys.executable, "-m", "ledger.cli", *self.arguments()]
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                cwd=PROJECT_ROOT, env=self.env, start_new_session=True,
            )  # fmt: skip
        return self

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def kill(self, sig: int = signal.SIGKILL) -> None:
        if self.alive():
            os.kill(self.pid, sig)

    def stop(self, timeout: float = 60) -> int | None:
        """SIGTERM, a graceful stop; SIGKILL if it does not end in time."""
        if self.process is None:
            return None
        if self.alive():
            os.kill(self.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                os.kill(self.pid, signal.SIGKILL)
                self.process.wait(timeout=30)
        return self.process.returncode

    def wait_gone(self, timeout: float = 30) -> None:
        assert self.process is not None
        self.process.wait(timeout=timeout)

    def metrics(self, wait_seconds: float = 0.0) -> dict[str, float]:
        """Sample name with labels → value, e.g. 'ledger_decisions_total{outcome=...}'. A process
        just started may not serve them yet: refused connections are tried again for up to
        `wait_seconds` while it runs."""
        url = f"http://127.0.0.1:{self.metrics_port}/metrics"
        deadline = time.monotonic() + wait_seconds
        while True:
            try:
                with urllib.request.urlopen(url, timeout=5) as response:
                    text = response.read().decode()
                break
            except urllib.error.URLError:
                if time.monotonic() >= deadline or not self.alive():
                    raise
                time.sleep(0.2)
        samples: dict[str, float] = {}
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                labels = ",".join(f"{k}={v}" for k, v in sorted(sample.labels.items()))
                samples[f"{sample.name}{{{labels}}}"] = sample.value
        return samples

    def log_tail(self, lines: int = 40) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return "(no log)"
        return "\n".join(text.replace("\r", "\n").splitlines()[-lines:])


class Worker(LedgerProcess):
    """A `ledger worker`: the faust authorizer and balances."""

    def __init__(
        self, name: str, data_dir: Path, env: dict[str, str] | None = None, static: bool = False
    ) -> None:
        super().__init__(name, data_dir.parent, env)
        self.data_dir = data_dir
        self.static = static

    def arguments(self) -> list[str]:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        return [
            "worker", "--name", self.name, "--data-dir", str(self.data_dir),
            "--metrics-port", str(self.metrics_port), "--loglevel", "warning",
            *(["--static"] if self.static else []),
        ]  # fmt: skip


class Projector(LedgerProcess):
    """A `ledger project`: the projection writer, under a name of its own (static member)."""

    def __init__(
        self, name: str, log_dir: Path, batch_events_max: int = 5_000,
        reconcile_seconds: float = 0.0, env: dict[str, str] | None = None,
    ) -> None:  # fmt: skip
        super().__init__(name, log_dir, env)
        self.batch_events_max = batch_events_max
        self.reconcile_seconds = reconcile_seconds

    def arguments(self) -> list[str]:
        return [
            "project", "--name", self.name, "--metrics-port", str(self.metrics_port),
            "--batch-events-max", str(self.batch_events_max), "--loglevel", "info",
            "--reconcile-seconds", str(self.reconcile_seconds),
        ]  # fmt: skip


def end_offsets(bootstrap: str, topic: str) -> dict[int, int]:
    from kafka import KafkaConsumer, TopicPartition

    consumer = KafkaConsumer(**consumer_config(bootstrap, "ledger-tests", group_id=None))
    try:
        partitions = consumer.partitions_for_topic(topic) or set()
        ends = consumer.end_offsets([TopicPartition(topic, p) for p in partitions])
        return {tp.partition: offset for tp, offset in ends.items()}
    finally:
        consumer.close()


@dataclass(frozen=True)
class Record:
    partition: int
    offset: int
    key: bytes | None
    value: bytes


def read_until(
    bootstrap: str,
    topic: str,
    start: dict[int, int],
    done: Callable[[list[Record]], bool],
    deadline_seconds: float,
) -> list[Record]:
    """Read a topic from `start` offsets until `done(records)` or the deadline; returns all read."""
    from kafka import KafkaConsumer, TopicPartition

    consumer = KafkaConsumer(**consumer_config(bootstrap, "ledger-tests", group_id=None))
    records: list[Record] = []
    try:
        assigned = [TopicPartition(topic, p) for p in sorted(start)]
        consumer.assign(assigned)
        for tp in assigned:
            consumer.seek(tp, start[tp.partition])
        deadline = time.monotonic() + deadline_seconds
        while not done(records) and time.monotonic() < deadline:
            for tp, batch in consumer.poll(timeout_ms=READ_POLL_MS).items():
                records += [Record(tp.partition, r.offset, r.key, r.value) for r in batch]
    finally:
        consumer.close()
    return records


def distinct_facts(records: Iterable[Record]) -> dict[str, Fact]:
    """Facts by event id; a fact seen twice must be identical (same id, same content)."""
    seen: dict[str, Fact] = {}
    for record in records:
        fact = codec.decode_fact(record.value)
        earlier = seen.setdefault(fact.event_id, fact)
        assert earlier == fact, f"two different facts with the id {fact.event_id}"
    return seen


@dataclass
class Produced:
    commands: list[tuple[int, Command]]  # (offset, command), in the order sent
    poison: list[tuple[int, int]]  # (partition, offset)


def produce(
    bootstrap: str,
    partitions: int,
    reference: Iterable[ReferenceRecord],
    commands: Iterable[Command],
    poison: Iterable[tuple[bytes | None, bytes, int]] = (),
) -> Produced:
    with LedgerProducer(bootstrap, partitions, client_id="ledger-tests") as producer:
        for record in reference:
            producer.send_reference(record)
        producer.flush()
        sent = [(producer.send_command(command), command) for command in commands]
        bad = [producer.send_raw(topics.COMMANDS, k, v, p) for k, v, p in poison]
        producer.flush()
        return Produced(
            commands=[(future.get(timeout=30).offset, command) for future, command in sent],
            poison=[(f.get(timeout=30).partition, f.get(timeout=30).offset) for f in bad],
        )


def oracle(reference: Reference, produced: Produced) -> tuple[LocalAuthorizer, dict[str, Fact]]:
    """What the stream must decide: the pure core over the same commands, with their offsets."""
    ledger = LocalAuthorizer(reference)
    facts: dict[str, Fact] = {}
    for offset, command in produced.commands:
        for fact in ledger.handle(command, origin=offset):
            facts.setdefault(fact.event_id, fact)
    return ledger, facts


def fold_balances(facts: Iterable[Fact], party: str, partitions: int) -> dict[str, Balance]:
    from ledger.kafka.partitioning import partition_for

    balances: dict[str, Balance] = {}
    for fact in facts:
        if isinstance(fact, PurchaseAuthorized | PurchaseRefunded):
            key = fact.publisher_id if party == "publisher" else fact.isp_id
            balance = balances.setdefault(key, Balance())
            balance.apply(fact, party, partition_for(fact.account_id, partitions))  # type: ignore[arg-type]
    return balances


def wait_for(predicate: Callable[[], bool], seconds: float, what: str) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.25)
    raise AssertionError(f"timed out after {seconds:.0f} s waiting for {what}")


def metric(samples: dict[str, float], prefix: str) -> float:
    return sum(value for name, value in samples.items() if name.startswith(prefix))


class ApiServer:
    """A `ledger api` process of our own, with a known admin key, and the ISPs' identity component
    (`ledger idp`) beside it, as the stack starts them (issue 14)."""

    def __init__(
        self, log_dir: Path, admin_key: str, payment_ttl_seconds: int | None = None,
        holds_expiry_seconds: int = 0,
    ) -> None:  # fmt: skip
        self.port = free_port()
        self.idp_port = free_port()
        self.admin_key = admin_key
        self.log_path = log_dir / "api.log"
        self.idp_log_path = log_dir / "idp.log"
        self.payment_ttl_seconds = payment_ttl_seconds
        self.holds_expiry_seconds = holds_expiry_seconds
        self.process: subprocess.Popen[bytes] | None = None
        self.idp: subprocess.Popen[bytes] | None = None
        self._secrets: set[str] = set()

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def checkout(self) -> Checkout:
        return Checkout(self.base)

    def _spawn(self, arguments: list[str], log_path: Path) -> subprocess.Popen[bytes]:
        env = {**os.environ, "LEDGER_ADMIN_KEY": self.admin_key}
        with log_path.open("ab") as log:
            return subprocess.Popen(
                [sys.executable, "-m", "ledger.cli", *arguments], stdout=log,
                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=PROJECT_ROOT, env=env,
                start_new_session=True,
            )  # fmt: skip

    def start(self) -> ApiServer:
        self.idp = self._spawn(
            ["idp", "--port", str(self.idp_port), "--platform-url", self.base], self.idp_log_path
        )
        ttl = [] if self.payment_ttl_seconds is None else [
            "--payment-ttl-seconds", str(self.payment_ttl_seconds)]  # fmt: skip
        # No expiry barrier unless asked for: tests count the commands on the log.
        ttl += ["--holds-expiry-seconds", str(self.holds_expiry_seconds)]
        self.process = self._spawn(
            ["api", "--port", str(self.port), "--idp-url", f"http://127.0.0.1:{self.idp_port}",
             *ttl], self.log_path,
        )  # fmt: skip
        wait_for(self._answers, 90, "the API to answer")
        return self

    def _answers(self) -> bool:
        assert self.process is not None and self.idp is not None
        if self.process.poll() is not None:
            raise AssertionError(f"the API exited: {self.log_path.read_text()[-2000:]}")
        if self.idp.poll() is not None:
            raise AssertionError(f"the idp exited: {self.idp_log_path.read_text()[-2000:]}")
        try:
            answering = self.call("GET", "/v1/openapi.json")[0] == 200
            with urllib.request.urlopen(f"http://127.0.0.1:{self.idp_port}/", timeout=5):
                return answering
        except OSError:
            return False

    def call(
        self, method: str, path: str, body: object = None, key: str | None = None
    ) -> tuple[int, dict[str, object]]:
        import json

        data = (
            None
            if body is None
            else (body if isinstance(body, bytes) else json.dumps(body).encode())
        )
        request = urllib.request.Request(
            f"http://127.0.0.1:{self.port}{path}", data=data, method=method,
            headers={"Content-Type": "application/json",
                     **({"Authorization": f"Bearer {key}"} if key else {})},
        )  # fmt: skip
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                return response.status, json.loads(response.read() or b"{}")
        except urllib.error.HTTPError as error:
            return error.code, json.loads(error.read() or b"{}")

    def credentials(self, isp_id: str, account_id: str, user_id: str) -> tuple[str, str]:
        """The ISP's signing secret (once per ISP) and a subscriber's login and password, issued
        as an operator does: through the admin API (404 until the API has read the ISP or the
        account from the stream)."""
        if isp_id not in self._secrets:
            path = f"/v1/admin/isps/{isp_id}/secret"
            wait_for(lambda: self.call("POST", path, {}, self.admin_key)[0] == 201, 60,
                     f"{isp_id}'s secret registered")  # fmt: skip
            self._secrets.add(isp_id)
        issued: dict[str, object] = {}

        def issue() -> bool:
            status, answer = self.call("POST", f"/v1/admin/accounts/{account_id}/credentials",
                                       {"user_id": user_id}, self.admin_key)  # fmt: skip
            issued.update(answer)
            assert status in (201, 404), (status, answer)
            return status == 201

        wait_for(issue, 60, f"credentials of {user_id}@{account_id}")
        return str(issued["login"]), str(issued["password"])

    def buy(
        self, key: str, body: dict[str, object], isp_id: str, account_id: str, user_id: str
    ) -> dict[str, object]:
        """A purchase through the checkout with consent (ledger.api.client): the payment's view
        with its decision."""
        login, password = self.credentials(isp_id, account_id, user_id)
        idempotency = f"k-{os.urandom(8).hex()}"
        return self.checkout.buy(key, dict(body), isp_id, login, password, idempotency)

    def stop(self) -> None:
        for process in (self.process, self.idp):
            if process is not None and process.poll() is None:
                process.terminate()
                try:
                    process.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait(timeout=30)
