"""The Kafka broker of the local stack: jars from Maven Central, KRaft storage, the broker process,
readiness by metadata, and the ledger's topics."""

from __future__ import annotations

import base64
import hashlib
import os
import shutil
import string
import subprocess
import tempfile
import time
import uuid
from pathlib import Path

from ledger.errors import StackError
from ledger.kafka.settings import admin_config
from ledger.kafka.topics import TOPICS
from ledger.settings import StackSettings
from ledger.stack import proc
from ledger.stack.state import KafkaState

KAFKA_MAIN_CLASS = "kafka.Kafka"
STORAGE_TOOL_CLASS = "kafka.tools.StorageTool"
MAVEN_FETCH_TIMEOUT_SECONDS = 900
FORMAT_TIMEOUT_SECONDS = 120
READY_DEADLINE_SECONDS = 90
READY_POLL_SECONDS = 0.5
ADMIN_REQUEST_TIMEOUT_MS = 5_000
TOPIC_CREATE_TIMEOUT_MS = 30_000
STOP_DEADLINE_SECONDS = 30  # a controlled shutdown of one node takes a few seconds
LOG_TAIL_LINES = 15


def _deploy_dir(settings: StackSettings) -> Path:
    return settings.project_root / "deploy" / "kafka"


def jar_dir(settings: StackSettings) -> Path:
    """One cache folder per pom content: a changed pom fetches again, an unchanged one never."""
    pom = (_deploy_dir(settings) / "pom.xml").read_bytes()
    digest = hashlib.sha256(pom).hexdigest()[:12]
    return settings.cache_dir / f"kafka-jars-{digest}"


def ensure_jars(settings: StackSettings) -> Path:
    """Fetch the broker's jars once. They are copied into a temporary folder and renamed into place
    only when complete, so an interrupted or failed fetch never leaves a cache that looks whole."""
    target = jar_dir(settings)
    if (target / ".complete").exists():
        return target
    if shutil.which("mvn") is None:
        raise StackError("Maven is required to fetch the Kafka jars: apt-get install maven")
    settings.cache_dir.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix="kafka-jars-", dir=settings.cache_dir))
    pom = _deploy_dir(settings) / "pom.xml"
    command = [
        "mvn",
        "-B",
        "-q",
        "-f",
        str(pom),
        "dependency:copy-dependencies",
        f"-DoutputDirectory={staging}",
    ]
    print(f"fetching the Kafka broker jars from Maven Central into {target} (once)", flush=True)
    try:
        result = subprocess.run(
            command,
            capture_output=True,
            text=True,
            timeout=MAVEN_FETCH_TIMEOUT_SECONDS,
            check=False,
        )
    except subprocess.TimeoutExpired:
        shutil.rmtree(staging, ignore_errors=True)
        raise StackError(
            f"fetching the Kafka jars took over {MAVEN_FETCH_TIMEOUT_SECONDS} s: check that "
            "Maven Central is reachable, then run the command again"
        ) from None
    if result.returncode != 0 or not any(staging.glob("kafka_2.13-*.jar")):
        shutil.rmtree(staging, ignore_errors=True)
        errors = [line for line in result.stdout.splitlines() if "ERROR" in line]
        first = errors[0].strip() if errors else (result.stderr.strip() or "no output")
        raise StackError(
            f"could not fetch the Kafka jars from Maven Central ({first[:200]}): check network "
            "access to Maven Central and ~/.m2/settings.xml, then run the command again"
        )
    (staging / ".complete").write_text("fetched by mvn dependency:copy-dependencies\n")
    try:
        staging.rename(target)
    except OSError:  # another process finished first: use its copy
        shutil.rmtree(staging, ignore_errors=True)
    return target


def _render(template: Path, values: dict[str, str]) -> str:
    return string.Template(template.read_text()).substitute(values)


def _new_cluster_id() -> str:
    """A Kafka cluster id: 16 random bytes in URL-safe base64, never starting with '-' (Kafka's
    own Uuid.randomUuid draws again in that case, since such ids read as command-line flags)."""
    while True:
        text = base64.urlsafe_b64encode(uuid.uuid4().bytes).rstrip(b"=").decode()
        if not text.startswith("-"):
            return text


def _java() -> str:
    java = shutil.which("java")
    if java is None:
        raise StackError(
            "Java 17 is required to run the Kafka broker: apt-get install openjdk-17-jre-headless"
        )
    return java


def _classpath(jars: Path) -> str:
    return str(jars / "*")


def _log_tail(path: Path) -> str:
    try:
        lines = path.read_text(errors="replace").splitlines()
    except FileNotFoundError:
        return "(no log)"
    return "\n".join(lines[-LOG_TAIL_LINES:])


def start(settings: StackSettings) -> list[KafkaState]:
    """Start every node of the local cluster (one by default), node 1 first."""
    return [start_node(settings, node_id) for node_id in range(1, settings.kafka_brokers + 1)]


def _node_dir(settings: StackSettings, node_id: int) -> Path:
    # Node 1 keeps the single broker's folders, so a one-broker stack is laid out as it always was.
    base = settings.home / "kafka"
    return base if node_id == 1 else base / f"node-{node_id}"


def _cluster_id(settings: StackSettings) -> str:
    """One id for every node of a cluster: drawn once and kept beside node 1's storage."""
    path = settings.home / "kafka" / "cluster-id"
    if path.exists():
        return path.read_text().strip()
    path.parent.mkdir(parents=True, exist_ok=True)
    cluster_id = _new_cluster_id()
    path.write_text(cluster_id + "\n")
    return cluster_id


def start_node(settings: StackSettings, node_id: int) -> KafkaState:
    """Start node `node_id` (1..LEDGER_KAFKA_BROKERS), formatting its storage the first time."""
    java = _java()
    jars = ensure_jars(settings)
    base = _node_dir(settings, node_id)
    log_dir = base / "data"
    logs = base / "logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    logs.mkdir(parents=True, exist_ok=True)
    ports = settings.kafka_node_ports
    kafka_port, controller_port = ports[node_id - 1]
    replication = 3 if settings.kafka_brokers >= 3 else 1
    values = {
        "node_id": str(node_id),
        "voters": ",".join(f"{n}@127.0.0.1:{c}" for n, (_, c) in enumerate(ports, start=1)),
        "kafka_port": str(kafka_port),
        "controller_port": str(controller_port),
        "log_dir": str(log_dir),
        "partitions": str(settings.topic_partitions),
        "replication": str(replication),
        "min_insync": str(min_insync_replicas(replication)),
    }
    config = base / "server.properties"
    config.write_text(_render(_deploy_dir(settings) / "server.properties", values))
    log4j = [
        f"-Dlog4j.configuration=file:{_deploy_dir(settings) / 'log4j.properties'}",
        f"-Dkafka.logs.dir={logs}",
    ]
    if not (log_dir / "meta.properties").exists():
        _format_storage(java, jars, config, log4j, logs, _cluster_id(settings))
        if node_id == 1:
            # A new cluster: the workers' local table state (RocksDB) belongs to the old one,
            # whose changelogs are gone; faust refuses to start on it (ConsistencyError). It is a
            # cache of those changelogs, so it goes with them.
            shutil.rmtree(settings.home / "workers", ignore_errors=True)
    for port in (kafka_port, controller_port):
        if not proc.port_is_free(port):
            raise StackError(
                f"port {port} is already in use: stop what listens there or choose other ports "
                "(LEDGER_KAFKA_PORT, LEDGER_KAFKA_CONTROLLER_PORT or --kafka-port)"
            )
    console = logs / "console.log"
    heap = f"{settings.kafka_heap_mb}m"
    command = [
        java,
        f"-Xms{min(settings.kafka_heap_mb, 256)}m",
        f"-Xmx{heap}",
        "-XX:+UseG1GC",
        "-XX:MaxGCPauseMillis=20",
        "-Djava.awt.headless=true",
        *log4j,
        "-cp",
        _classpath(jars),
        KAFKA_MAIN_CLASS,
        str(config),
    ]
    with console.open("ab") as out:
        child = subprocess.Popen(
            command,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    return KafkaState(
        process=proc.record(child.pid),
        port=kafka_port,
        controller_port=controller_port,
        log_dir=str(log_dir),
        log_file=str(logs / "server.log"),
        bootstrap_servers=settings.bootstrap_servers,
        node_id=node_id,
    )


def min_insync_replicas(replication: int) -> int:
    """Two of three replicas in sync (deploy/cluster): one broker may go and acks=all still
    succeeds; a single replica is its own quorum."""
    return 2 if replication >= 3 else 1


def _format_storage(
    java: str, jars: Path, config: Path, log4j: list[str], logs: Path, cluster_id: str
) -> None:
    command = [
        java,
        *log4j,
        "-cp",
        _classpath(jars),
        STORAGE_TOOL_CLASS,
        "format",
        "-t",
        cluster_id,
        "-c",
        str(config),
    ]
    result = subprocess.run(
        command, capture_output=True, text=True, timeout=FORMAT_TIMEOUT_SECONDS, check=False
    )
    (logs / "format.log").write_text(result.stdout + result.stderr)
    if result.returncode != 0:
        raise StackError(f"formatting the Kafka storage failed: see {logs / 'format.log'}")


def wait_ready(
    state: KafkaState, deadline_seconds: float = READY_DEADLINE_SECONDS, brokers: int = 1
) -> float:
    """Ready means an admin client got cluster metadata back naming `brokers` brokers, not that
    the port opened. Returns the seconds waited."""
    from kafka.admin import KafkaAdminClient

    started = time.monotonic()
    last_error = "no answer"
    while time.monotonic() - started < deadline_seconds:
        if not proc.is_running(state.process):
            raise StackError(
                f"the Kafka broker exited during start-up; the end of {state.log_file}:\n"
                + _log_tail(Path(state.log_file))
            )
        try:
            admin = KafkaAdminClient(
                **admin_config(state.bootstrap_servers, "ledger-stack", ADMIN_REQUEST_TIMEOUT_MS)
            )
            try:
                cluster = admin.describe_cluster()
            finally:
                admin.close()
            if len(cluster.get("brokers") or ()) >= brokers:
                return time.monotonic() - started
        except Exception as exc:  # any client error means "not ready yet"
            last_error = f"{type(exc).__name__}: {exc}"
        time.sleep(READY_POLL_SECONDS)
    raise StackError(
        f"the Kafka broker gave no metadata within {deadline_seconds:.0f} s ({last_error}); "
        f"see {state.log_file}"
    )


def ensure_topics(bootstrap_servers: str, partitions: int, replication: int = 1) -> list[str]:
    """Create the ledger's topics that do not exist yet. Returns the names created."""
    from kafka.admin import KafkaAdminClient

    admin = KafkaAdminClient(
        **admin_config(bootstrap_servers, "ledger-stack", TOPIC_CREATE_TIMEOUT_MS)
    )
    try:
        existing = set(admin.list_topics())
        wanted = {
            spec.name: {
                "num_partitions": spec.partitions(partitions),
                "replication_factor": replication,
                "configs": {
                    **spec.configs,
                    "min.insync.replicas": str(min_insync_replicas(replication)),
                },
            }
            for spec in TOPICS
            if spec.name not in existing
        }
        if wanted:
            admin.create_topics(wanted, timeout_ms=TOPIC_CREATE_TIMEOUT_MS, wait_for_metadata=True)
        return sorted(wanted)
    finally:
        admin.close()


def stop(state: KafkaState) -> bool:
    import signal

    return proc.stop(state.process, signal.SIGTERM, STOP_DEADLINE_SECONDS)


def stop_all(nodes: list[KafkaState]) -> list[tuple[KafkaState, bool]]:
    """Stop the nodes of a cluster together: one by one, the last would wait for a controller
    quorum that its peers took away (measured: it never finished its controlled shutdown and
    was killed after 30 s). Returns each node that ran and whether it had to be killed."""
    import contextlib
    import signal

    running = [node for node in nodes if proc.is_running(node.process)]
    for node in running:
        with contextlib.suppress(ProcessLookupError):
            os.kill(node.process.pid, signal.SIGTERM)
    return [(node, stop(node)) for node in running]
