"""Stack settings: where the state lives, which ports, how many partitions.

Every setting has a default fit for one developer machine and an environment variable to
override it; command-line flags override both. Values are checked here, once, so that a bad
value gives a message that names the variable and says what is expected.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path

from ledger.errors import ConfigError

PORT_MIN = 1024
PORT_MAX = 65535
PARTITIONS_MAX = 256
KAFKA_HEAP_MB_MIN = 128
KAFKA_HEAP_MB_MAX = 8192
# A local cluster of combined KRaft nodes (issue 16): one, or three (replication 3, two in sync).
KAFKA_BROKERS_ALLOWED = (1, 3)
# Node i of a local cluster listens on the Kafka and controller ports plus i times this step, so
# node 1 (the default node) keeps its ports and the others fit between them and PostgreSQL's.
KAFKA_NODE_PORT_STEP = 3

# The checkout is found by this file; `deploy/` beside it holds the Kafka pom and configs.
_PROJECT_MARKER = Path("deploy") / "kafka" / "pom.xml"


@dataclass(frozen=True)
class StackSettings:
    project_root: Path
    home: Path
    cache_dir: Path
    kafka_port: int
    kafka_controller_port: int
    postgres_port: int
    topic_partitions: int
    kafka_heap_mb: int
    kafka_brokers: int = 1
    # A stack run elsewhere (a cluster: see deploy/cluster): when both are set, the ledger's
    # processes use them and do not look for a local stack.
    external_bootstrap: str | None = None
    external_dsn: str | None = None

    @property
    def bootstrap_servers(self) -> str:
        return ",".join(f"127.0.0.1:{port}" for port, _ in self.kafka_node_ports)

    @property
    def kafka_node_ports(self) -> list[tuple[int, int]]:
        """(client port, controller port) of each local Kafka node, node 1 first."""
        return [
            (
                self.kafka_port + KAFKA_NODE_PORT_STEP * i,
                self.kafka_controller_port + KAFKA_NODE_PORT_STEP * i,
            )
            for i in range(self.kafka_brokers)
        ]

    def with_overrides(self, **changes: object) -> StackSettings:
        given = {key: value for key, value in changes.items() if value is not None}
        updated = replace(self, **given)  # type: ignore[arg-type]
        _check_ports(updated)
        return updated


def find_project_root(start: Path | None = None) -> Path:
    """The checkout that holds deploy/kafka/pom.xml: the working directory or a parent of it,
    else the checkout this package was installed from (editable install)."""
    here = (start or Path.cwd()).resolve()
    for candidate in (here, *here.parents):
        if (candidate / _PROJECT_MARKER).is_file():
            return candidate
    source_root = Path(__file__).resolve().parents[1]
    if (source_root / _PROJECT_MARKER).is_file():
        return source_root
    raise ConfigError(
        "cannot find the project checkout (deploy/kafka/pom.xml): run ledger from inside it "
        "or set LEDGER_PROJECT_ROOT"
    )


def _int_setting(env: Mapping[str, str], name: str, default: int, low: int, high: int) -> int:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ConfigError(
            f"{name} must be a whole number from {low} to {high}, got {raw!r}"
        ) from None
    if not low <= value <= high:
        raise ConfigError(f"{name} must be from {low} to {high}, got {value}")
    return value


def _check_ports(settings: StackSettings) -> None:
    ports = {"PostgreSQL": settings.postgres_port}
    for i, (client, controller) in enumerate(settings.kafka_node_ports):
        node = f" (node {i + 1})" if i else ""
        ports[f"Kafka{node}"] = client
        ports[f"Kafka controller{node}"] = controller
    for name, port in ports.items():
        if not PORT_MIN <= port <= PORT_MAX:
            raise ConfigError(f"the {name} port must be from {PORT_MIN} to {PORT_MAX}, got {port}")
    if len(set(ports.values())) != len(ports):
        raise ConfigError(f"the stack's ports must differ from each other, got {ports}")


def load_settings(env: Mapping[str, str] | None = None) -> StackSettings:
    env = os.environ if env is None else env
    root_raw = env.get("LEDGER_PROJECT_ROOT")
    root = Path(root_raw).resolve() if root_raw else find_project_root()
    home = Path(env.get("LEDGER_HOME") or root / ".ledger").resolve()
    cache_default = (
        Path(env.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "internet-plus-ledger"
    )
    settings = StackSettings(
        project_root=root,
        home=home,
        cache_dir=Path(env.get("LEDGER_CACHE_DIR") or cache_default).resolve(),
        kafka_port=_int_setting(env, "LEDGER_KAFKA_PORT", 19092, PORT_MIN, PORT_MAX),
        kafka_controller_port=_int_setting(
            env, "LEDGER_KAFKA_CONTROLLER_PORT", 19093, PORT_MIN, PORT_MAX
        ),
        postgres_port=_int_setting(env, "LEDGER_POSTGRES_PORT", 15432, PORT_MIN, PORT_MAX),
        topic_partitions=_int_setting(env, "LEDGER_TOPIC_PARTITIONS", 4, 1, PARTITIONS_MAX),
        kafka_heap_mb=_int_setting(
            env, "LEDGER_KAFKA_HEAP_MB", 512, KAFKA_HEAP_MB_MIN, KAFKA_HEAP_MB_MAX
        ),
        kafka_brokers=_int_setting(env, "LEDGER_KAFKA_BROKERS", 1, 1, max(KAFKA_BROKERS_ALLOWED)),
    )
    if settings.kafka_brokers not in KAFKA_BROKERS_ALLOWED:
        raise ConfigError(
            f"LEDGER_KAFKA_BROKERS must be one of {KAFKA_BROKERS_ALLOWED}, "
            f"got {settings.kafka_brokers}"
        )
    _check_ports(settings)
    external_bootstrap = env.get("LEDGER_BOOTSTRAP_SERVERS") or None
    external_dsn = env.get("LEDGER_DATABASE_URL") or None
    if (external_bootstrap is None) != (external_dsn is None):
        raise ConfigError(
            "an external stack needs both LEDGER_BOOTSTRAP_SERVERS (host:port,...) and "
            "LEDGER_DATABASE_URL (postgresql://...); set both or neither"
        )
    if external_dsn is not None and not external_dsn.startswith(("postgresql://", "postgres://")):
        raise ConfigError(
            f"LEDGER_DATABASE_URL must be a postgresql:// URL, got {external_dsn.split('@')[-1]!r}"
        )
    return replace(settings, external_bootstrap=external_bootstrap, external_dsn=external_dsn)


def listen_host(env: Mapping[str, str] | None = None) -> str:
    """Where the metrics endpoints and the APIs listen: loopback on a developer machine, all
    interfaces in a pod (LEDGER_LISTEN_HOST=0.0.0.0)."""
    env = os.environ if env is None else env
    return env.get("LEDGER_LISTEN_HOST") or "127.0.0.1"
