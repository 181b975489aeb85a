"""The `ledger` command line."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

from ledger.cli_types import identifier, port
from ledger.errors import LedgerError
from ledger.settings import StackSettings, load_settings

EXIT_ERROR = 1
EXIT_NOT_RUNNING = 3


def _settings(args: argparse.Namespace) -> StackSettings:
    return load_settings().with_overrides(
        kafka_port=getattr(args, "kafka_port", None),
        kafka_controller_port=getattr(args, "kafka_controller_port", None),
        postgres_port=getattr(args, "postgres_port", None),
        topic_partitions=getattr(args, "partitions", None),
    )


@dataclass(frozen=True)
class Running:
    """The running stack as a command sees it."""

    settings: StackSettings
    bootstrap_servers: str
    partitions: int


def _running(args: argparse.Namespace) -> Running:
    from ledger.stack import manager

    settings = _settings(args)
    if settings.external_bootstrap is not None:
        return Running(settings, settings.external_bootstrap, settings.topic_partitions)
    state = manager.connection(settings)
    assert state.kafka is not None
    partitions = state.topic_partitions or settings.topic_partitions
    return Running(settings, state.kafka.bootstrap_servers, partitions)


def _cmd_stack_up(args: argparse.Namespace) -> int:
    from ledger.stack import manager

    report = manager.up(_settings(args))
    state = report.state
    assert state.kafka is not None and state.postgres is not None
    if report.stale_cleared:
        print("found the state of a stack that was not stopped cleanly: restarted what was down")
    kafka_word = (
        "reused" if report.reused_kafka else f"started in {report.kafka_ready_seconds:.1f} s"
    )
    kafka_pid, pg_pid = state.kafka.process.pid, state.postgres.process.pid
    print(f"kafka     {kafka_word:24} pid {kafka_pid:<8} {state.kafka.bootstrap_servers}")
    pg_word = "reused" if report.reused_postgres else "started"
    print(f"postgres  {pg_word:24} pid {pg_pid:<8} 127.0.0.1:{state.postgres.port}/ledger")
    if report.topics_created:
        print(f"topics created: {', '.join(report.topics_created)}")
    if report.migrations_applied:
        print(f"migrations applied: {', '.join(report.migrations_applied)}")
    print("stop it with: ledger stack down")
    return 0


def _cmd_stack_init(args: argparse.Namespace) -> int:
    from ledger.stack import manager

    if args.replication < 1:
        raise LedgerError("--replication must be at least 1")
    created, migrations = manager.init_external(_settings(args), args.replication)
    print(f"topics created: {', '.join(created) or 'none (all existed)'}")
    print(f"migrations applied: {', '.join(migrations) or 'none (up to date)'}")
    return 0


def _cmd_status(args: argparse.Namespace) -> int:
    from ledger import services, status
    from ledger.cli_projections import connected

    stack = connected(args)
    settings = _settings(args)
    found = status.gather(stack.bootstrap_servers, stack.dsn, services.running(settings.home))
    print(json.dumps(found.as_json(), indent=2) if args.json else status.render(found))
    return 0


def _cmd_stack_down(args: argparse.Namespace) -> int:
    from ledger.stack import manager

    stopped = manager.down(_settings(args), purge=args.purge)
    print("stopped: " + ", ".join(stopped) if stopped else "nothing of the stack was running")
    if args.purge:
        print("purged: the broker's log and the database cluster were deleted")
    return 0


def _cmd_stack_status(args: argparse.Namespace) -> int:
    from ledger.stack import manager

    rows = manager.status(_settings(args))
    if args.json:
        print(json.dumps([asdict(row) for row in rows], indent=2))
    else:
        for row in rows:
            word = "up" if row.running else "down"
            pid = str(row.pid) if row.pid else "-"
            print(f"{row.name:9} {word:5} pid {pid:<8} {row.address or '-':28} {row.detail}")
    return 0 if all(row.running for row in rows) else EXIT_NOT_RUNNING


def _cmd_demo(args: argparse.Namespace) -> int:
    from ledger import demo, simulate
    from ledger.stack import manager

    try:
        shape = simulate.Scale(months=args.months, scale=args.scale, seed=args.seed)
    except ValueError as error:
        raise LedgerError(str(error)) from error
    _cmd_stack_up(args)
    running = _running(args)
    state = manager.connection(running.settings)
    assert state.postgres is not None
    demo.run(
        running.bootstrap_servers, state.postgres.dsn, running.partitions,
        running.settings.home, shape,
    )  # fmt: skip
    return 0


def _cmd_simulate(args: argparse.Namespace) -> int:
    from ledger import demo, simulate

    try:
        shape = simulate.Scale(months=args.months, scale=args.scale, seed=args.seed)
    except ValueError as error:
        raise LedgerError(str(error)) from error
    workload = simulate.generate(shape)
    if args.output:
        from schemas import codec

        with open(args.output, "wb") as out:
            for item in [*workload.reference, *workload.setup,
                         *(x for month in workload.months for x in month)]:  # fmt: skip
                out.write((item if isinstance(item, bytes) else codec.encode(item)) + b"\n")
        print(f"wrote the workload to {args.output}")
        return 0
    running = _running(args)
    sent, malformed = demo._send(running.bootstrap_servers, running.partitions, workload)
    print(f"sent {sent:,} commands and {malformed} malformed messages")
    return 0


def _cmd_schemas_export(args: argparse.Namespace) -> int:
    from pathlib import Path

    from schemas.jsonschema import JSON_DIR, export

    written = export(Path(args.directory) if args.directory else JSON_DIR)
    print(f"wrote {len(written)} JSON Schema files to {written[0].parent}")
    return 0


def _write_json(path: str | None, figures: Any) -> None:
    if path:
        with open(path, "w") as out:
            json.dump(figures, out, indent=2)
        print(f"wrote {path}")


def _cmd_bench_core(args: argparse.Namespace) -> int:
    from ledger.bench import core

    if args.accounts < 1 or args.purchases < 1:
        raise LedgerError("--accounts and --purchases must be at least 1")
    figures = core.run(accounts=args.accounts, purchases=args.purchases, seed=args.seed)
    print(core.report(figures))
    _write_json(args.json, core.as_json(figures))
    return 0


def _cmd_worker(args: argparse.Namespace) -> int:
    from pathlib import Path

    from streams.config import WorkerConfig
    from streams.worker import supervise

    running = _running(args)
    settings = running.settings
    config = WorkerConfig(
        bootstrap_servers=running.bootstrap_servers,
        partitions=running.partitions,
        data_dir=Path(args.data_dir) if args.data_dir else settings.home / "workers" / args.name,
        store=args.store,
        metrics_port=args.metrics_port,
        name=args.name,
        static_membership=args.static,
    )
    return supervise(config, args.loglevel)


def _admin_key(settings: StackSettings) -> str:
    """The admin API key: LEDGER_ADMIN_KEY, else one made once and kept in the stack's home."""
    import os

    from ledger.api import keys

    given = os.environ.get("LEDGER_ADMIN_KEY")
    if given:
        return given
    path = settings.home / "admin.key"
    if not path.exists():
        settings.home.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as out:
            out.write(keys.new_key("admin") + "\n")
    return path.read_text().strip()


def _cmd_api(args: argparse.Namespace) -> int:
    from ledger.api import keys
    from ledger.api.server import run_api
    from ledger.cli_projections import connected

    stack = connected(args)  # the broker, and PostgreSQL for purchases older than the start
    settings = _settings(args)
    admin_key = _admin_key(settings)
    print(f"checkout and admin API on http://127.0.0.1:{args.port}/v1/ "
          f"(OpenAPI: /v1/openapi.json, metrics: /metrics)")  # fmt: skip
    print(f"admin key: in {settings.home / 'admin.key'} or LEDGER_ADMIN_KEY", flush=True)
    run_api(
        stack.bootstrap_servers, stack.partitions, keys.key_hash(admin_key), stack.dsn, args.port,
    )  # fmt: skip
    return 0


def _cmd_produce(args: argparse.Namespace) -> int:
    from pathlib import Path

    from ledger.produce import produce_file

    running = _running(args)
    partitions = running.partitions
    report = produce_file(Path(args.file), running.bootstrap_servers, partitions, args.send_invalid)
    for number, why in report.invalid[:20]:
        print(f"{args.file}:{number}: {why}", file=sys.stderr)
    if len(report.invalid) > 20:
        print(f"... and {len(report.invalid) - 20} more invalid lines", file=sys.stderr)
    verb = (
        "sent (invalid lines included, for the dead-letter topic)" if args.send_invalid else "sent"
    )
    print(f"{report.sent} messages {verb} in {report.seconds:.2f} s ({report.per_second:,.0f}/s)")
    if report.invalid and not args.send_invalid:
        print(f"{len(report.invalid)} invalid lines were not sent: fix them and produce them again")
        return EXIT_ERROR
    return 0


def _cmd_balances(args: argparse.Namespace) -> int:
    from ledger.core.balances import Balance
    from ledger.core.state import decode_account
    from ledger.tables import read_balances, read_key
    from streams.app import ACCOUNTS_TABLE

    running = _running(args)
    partitions = running.partitions
    rows: dict[str, object]
    if args.kind == "account":
        raw = read_key(running.bootstrap_servers, ACCOUNTS_TABLE, args.id, partitions)
        if raw is None:
            print(f"no account {args.id!r} in the balances yet", file=sys.stderr)
            return EXIT_NOT_RUNNING
        account = decode_account(raw)
        rows = {
            "account": account.account_id,
            "isp": account.isp_id,
            "kind": account.kind,
            "owed_cents": account.owed_cents,
            "purchases_authorized": account.purchases_authorized,
            "refunds": account.refunds_applied,
            "spend_by_period_cents": dict(sorted(account.period_spend.items())),
        }
    else:
        balances = read_balances(running.bootstrap_servers, ACCOUNTS_TABLE, args.kind, partitions)
        balance: Balance | None = balances.get(args.id)
        if balance is None:
            print(f"no {args.kind} {args.id!r} in the balances yet", file=sys.stderr)
            return EXIT_NOT_RUNNING
        rows = {
            args.kind: args.id,
            "purchases": balance.purchases,
            "refunds": balance.refunds,
            "gross_cents": balance.gross_cents,
            "owed_cents": balance.owed_cents,
        }
    if args.json:
        print(json.dumps(rows, indent=2))
    else:
        for name, value in rows.items():
            print(f"{name:22} {value}")
    return 0


def _child_pids(pid: int) -> list[int]:
    from pathlib import Path

    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except OSError:
        return []
    return [int(child) for child in text.split()]


def _peak_rss_mib(pid: int) -> float:
    """VmHWM, the peak resident set, of a process and its children (the supervised worker)."""
    from pathlib import Path

    total = 0.0
    for each in (pid, *_child_pids(pid)):
        try:
            for line in Path(f"/proc/{each}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    total += int(line.split()[1]) / 1024
        except OSError:
            continue
    return total


def _cmd_bench(args: argparse.Namespace) -> int:
    from ledger.bench import e2e

    try:
        counts = [int(n) for n in args.workers.split(",")]
    except ValueError:
        raise LedgerError(
            f"--workers is a list of worker counts like 1,2; got {args.workers!r}"
        ) from None
    if not counts or min(counts) < 1 or max(counts) > 8:
        raise LedgerError(f"--workers counts must be from 1 to 8, got {args.workers!r}")
    if args.accounts < 1 or args.purchases < 100:
        raise LedgerError("--accounts must be at least 1 and --purchases at least 100")
    figures = e2e.run(counts, args.accounts, args.purchases, args.seed, args.port_base)
    print()
    print(e2e.report(figures))
    _write_json(args.json, e2e.as_json(figures))
    return 0


def _cmd_bench_stream(args: argparse.Namespace) -> int:
    import subprocess
    import tempfile

    from ledger.bench import stream

    running = _running(args)
    partitions = running.partitions
    with tempfile.TemporaryDirectory(prefix="ledger-bench-") as data_dir:
        worker = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "ledger.cli",
                "worker",
                "--name",
                "bench",
                "--data-dir",
                data_dir,
            ],
            stdin=subprocess.DEVNULL,
        )
        try:
            figures = stream.run(
                running.bootstrap_servers, partitions, accounts=args.accounts,
                commands=args.commands, seed=args.seed,
            )  # fmt: skip
            rss = _peak_rss_mib(worker.pid)
        finally:
            worker.terminate()
            worker.wait(timeout=120)
    print(stream.report(figures))
    print(f"{'worker peak resident memory':<41}  {rss:>11,.0f} MiB")
    _write_json(args.json, stream.as_json(figures) | {"worker_peak_rss_mib": rss})
    return 0


def _cmd_bench_projections(args: argparse.Namespace) -> int:
    from ledger.bench import projections
    from ledger.stack import manager

    if args.accounts < 1 or args.purchases < 1:
        raise LedgerError("--accounts and --purchases must be at least 1")
    running = _running(args)
    state = manager.connection(running.settings)
    assert state.postgres is not None
    figures = projections.run(
        running.bootstrap_servers, state.postgres.dsn, running.partitions, args.accounts,
        args.purchases, args.seed,
    )  # fmt: skip
    print(projections.report(figures))
    _write_json(args.json, projections.as_json(figures))
    return 0


def _add_shape_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--months", type=int, default=1, help="months of traffic (1 to 24)")
    parser.add_argument(
        "--scale", type=float, default=0.01,
        help="share of the real platform: 1 is 1.1 million subscribers, 550,000 purchases a month",
    )  # fmt: skip
    parser.add_argument("--seed", type=int, default=2006, help="the same seed, the same workload")


def _add_port_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--kafka-port",
        type=int,
        metavar="PORT",
        help="broker port (LEDGER_KAFKA_PORT, default 19092)",
    )
    parser.add_argument(
        "--kafka-controller-port",
        type=int,
        metavar="PORT",
        help="KRaft controller port (default 19093)",
    )
    parser.add_argument(
        "--postgres-port",
        type=int,
        metavar="PORT",
        help="PostgreSQL port (LEDGER_POSTGRES_PORT, default 15432)",
    )
    parser.add_argument(
        "--partitions",
        type=int,
        metavar="N",
        help="partitions of ledger.commands and ledger.events (default 4)",
    )


def _add_bench_parsers(commands: Any) -> None:
    bench = commands.add_parser(
        "bench",
        help="benchmarks that report figures: the whole ledger end to end (no WHAT), or a part",
        description="Without WHAT: commands → decisions → PostgreSQL on stacks of its own, with "
        "1 and 2 workers (throughput, Kafka records and CPU per purchase, decision latency at "
        "half load, replay, peak memory).",
    )
    bench.add_argument("--workers", default="1,2", help="worker counts to run, e.g. 1,2 or 2")
    # A backlog that keeps the ledger busy for at least 30 s at its target rate (issue 13).
    bench.add_argument("--accounts", type=int, default=100_000)
    bench.add_argument("--purchases", type=int, default=300_000, help="the backlog per run")
    bench.add_argument("--seed", type=int, default=2006)
    bench.add_argument(
        "--port-base", type=int, default=29092,
        help="its stacks' ports: broker PORT, controller PORT+1, PostgreSQL PORT+2",
    )  # fmt: skip
    bench.add_argument("--json", metavar="FILE", help="also write the figures as JSON")
    bench.set_defaults(handler=_cmd_bench)
    bench_commands = bench.add_subparsers(dest="bench_command", required=False, metavar="WHAT")
    bench_core = bench_commands.add_parser(
        "core", help="decisions/s of the pure authorizer and encode/decode rates, on one core"
    )
    bench_core.add_argument("--accounts", type=int, default=100_000)
    bench_core.add_argument("--purchases", type=int, default=300_000)
    bench_core.add_argument("--seed", type=int, default=2006)
    bench_core.add_argument("--json", metavar="FILE", help="also write the figures as JSON")
    bench_core.set_defaults(handler=_cmd_bench_core)
    bench_stream = bench_commands.add_parser(
        "stream", help="decisions/s through the real broker and latency at half that rate"
    )
    bench_stream.add_argument("--accounts", type=int, default=20_000)
    bench_stream.add_argument("--commands", type=int, default=60_000)
    bench_stream.add_argument("--seed", type=int, default=2006)
    bench_stream.add_argument("--json", metavar="FILE", help="also write the figures as JSON")
    bench_stream.set_defaults(handler=_cmd_bench_stream)
    bench_proj = bench_commands.add_parser(
        "projections", help="events/s into PostgreSQL: the live writer and replay"
    )
    bench_proj.add_argument("--accounts", type=int, default=20_000)
    bench_proj.add_argument("--purchases", type=int, default=200_000)
    bench_proj.add_argument("--seed", type=int, default=2006)
    bench_proj.add_argument("--json", metavar="FILE", help="also write the figures as JSON")
    bench_proj.set_defaults(handler=_cmd_bench_projections)


def _add_stack_parsers(commands: Any) -> None:
    stack = commands.add_parser("stack", help="the local Kafka broker and PostgreSQL")
    stack_commands = stack.add_subparsers(dest="stack_command", required=True, metavar="ACTION")
    up = stack_commands.add_parser("up", help="start the stack (reuses what already runs)")
    _add_port_flags(up)
    up.set_defaults(handler=_cmd_stack_up)
    init = stack_commands.add_parser(
        "init",
        help="create the topics and apply the migrations on a stack run elsewhere "
        "(LEDGER_BOOTSTRAP_SERVERS, LEDGER_DATABASE_URL)",
    )
    init.add_argument(
        "--replication", type=int, default=3, help="replicas of each topic (default 3)"
    )
    init.set_defaults(handler=_cmd_stack_init)
    down = stack_commands.add_parser("down", help="stop the processes the stack started")
    down.add_argument(
        "--purge", action="store_true", help="also delete the broker's log and the database"
    )
    down.set_defaults(handler=_cmd_stack_down)
    status = stack_commands.add_parser("status", help="what runs, with pids and addresses")
    status.add_argument("--json", action="store_true", help="machine-readable output")
    status.set_defaults(handler=_cmd_stack_status)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ledger",
        description="The Internet Plus ledger: purchases on Kafka, invoices in PostgreSQL.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    _add_stack_parsers(commands)
    status = commands.add_parser(
        "status",
        help="lag per partition, throughput, the last decision, dead letters, billing periods",
    )
    status.add_argument("--json", action="store_true", help="machine-readable output")
    status.set_defaults(handler=_cmd_status)

    demo = commands.add_parser(
        "demo", help="the main job: a simulated month through the whole ledger, then a summary"
    )
    _add_port_flags(demo)
    _add_shape_flags(demo)
    demo.set_defaults(handler=_cmd_demo)

    simulate = commands.add_parser(
        "simulate", help="send a seeded Internet Plus workload (or write it with --output)"
    )
    _add_shape_flags(simulate)
    simulate.add_argument("--output", metavar="FILE", help="write JSON lines instead of sending")
    simulate.set_defaults(handler=_cmd_simulate)

    schemas = commands.add_parser("schemas", help="the message types' JSON Schema files")
    schema_commands = schemas.add_subparsers(
        dest="schemas_command", required=True, metavar="ACTION"
    )
    export = schema_commands.add_parser("export", help="write schemas/json/<type>.json")
    export.add_argument("--directory", help="write there instead of schemas/json")
    export.set_defaults(handler=_cmd_schemas_export)

    produce = commands.add_parser(
        "produce", help="put a file of JSON lines (commands, ISPs, publishers) on the log"
    )
    produce.add_argument("file", help='one JSON message a line, with its "type" tag')
    produce.add_argument(
        "--send-invalid",
        action="store_true",
        help="send invalid lines too, as poison for the dead-letter topic (tests)",
    )
    produce.set_defaults(handler=_cmd_produce)

    worker = commands.add_parser("worker", help="run a stream worker (authorizer and balances)")
    worker.add_argument(
        "--name", default="w1", type=identifier,
        help="unique per worker: its state folder and group membership",
    )  # fmt: skip
    worker.add_argument("--data-dir", help="its table state (default .ledger/workers/NAME)")
    worker.add_argument("--store", choices=["rocksdb", "memory"], default="rocksdb")
    worker.add_argument(
        "--static",
        action="store_true",
        help="static group membership: a restart keeps the partitions (see README)",
    )
    worker.add_argument("--metrics-port", type=port, help="serve /metrics on 127.0.0.1:PORT")
    worker.add_argument(
        "--loglevel", default="warning", choices=["debug", "info", "warning", "error"]
    )
    worker.set_defaults(handler=_cmd_worker)

    api = commands.add_parser("api", help="run the checkout and admin HTTP API")
    api.add_argument("--port", type=port, default=18080, help="on 127.0.0.1 (default 18080)")
    api.set_defaults(handler=_cmd_api)

    balances = commands.add_parser(
        "balances", help="current balance of an account, publisher or ISP"
    )
    balances.add_argument("kind", choices=["account", "publisher", "isp"])
    balances.add_argument("id", type=identifier)
    balances.add_argument("--json", action="store_true")
    balances.set_defaults(handler=_cmd_balances)

    _add_bench_parsers(commands)
    from ledger import cli_projections

    cli_projections.add_parsers(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        code: int = args.handler(args)
    except LedgerError as error:
        print(f"ledger: error: {error}", file=sys.stderr)
        return EXIT_ERROR
    except OSError as error:
        if error.filename is None:  # not a file named on the command line: a real failure
            raise
        print(f"ledger: error: {error.filename}: {error.strerror}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        print("ledger: interrupted", file=sys.stderr)
        return 130
    return code


if __name__ == "__main__":
    sys.exit(main())
