"""`ledger stack up | init | down | status`: the local Kafka broker and PostgreSQL."""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict
from typing import Any

from ledger.cli.exits import EXIT_NOT_RUNNING
from ledger.cli.running import settings
from ledger.errors import LedgerError


def cmd_up(args: argparse.Namespace) -> int:
    from ledger.stack import manager

    report = manager.up(settings(args))
    state = report.state
    if state.kafka is None or state.postgres is None:
        raise LedgerError("the stack did not come up: see `ledger stack status`")
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


def _cmd_init(args: argparse.Namespace) -> int:
    from ledger.stack import manager

    if args.replication < 1:
        raise LedgerError("--replication must be at least 1")
    created, migrations = manager.init_external(settings(args), args.replication)
    print(f"topics created: {', '.join(created) or 'none (all existed)'}")
    print(f"migrations applied: {', '.join(migrations) or 'none (up to date)'}")
    return 0


def _cmd_down(args: argparse.Namespace) -> int:
    from ledger.stack import manager

    stopped = manager.down(settings(args), purge=args.purge)
    print("stopped: " + ", ".join(stopped) if stopped else "nothing of the stack was running")
    if args.purge:
        print("purged: the broker's log and the database cluster were deleted")
    return 0


def _cmd_status(args: argparse.Namespace) -> int:
    from ledger.stack import manager

    rows = manager.status(settings(args))
    if args.json:
        print(json.dumps([asdict(row) for row in rows], indent=2))
    else:
        for row in rows:
            word = "up" if row.running else "down"
            pid = str(row.pid) if row.pid else "-"
            print(f"{row.name:9} {word:5} pid {pid:<8} {row.address or '-':28} {row.detail}")
    return 0 if all(row.running for row in rows) else EXIT_NOT_RUNNING


def add_port_flags(parser: argparse.ArgumentParser) -> None:
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


def add_parsers(commands: Any) -> None:
    stack = commands.add_parser("stack", help="the local Kafka broker and PostgreSQL")
    stack_commands = stack.add_subparsers(dest="stack_command", required=True, metavar="ACTION")
    up = stack_commands.add_parser("up", help="start the stack (reuses what already runs)")
    add_port_flags(up)
    up.set_defaults(handler=cmd_up)
    init = stack_commands.add_parser(
        "init",
        help="create the topics and apply the migrations on a stack run elsewhere "
        "(LEDGER_BOOTSTRAP_SERVERS, LEDGER_DATABASE_URL)",
    )
    init.add_argument(
        "--replication", type=int, default=3, help="replicas of each topic (default 3)"
    )
    init.set_defaults(handler=_cmd_init)
    down = stack_commands.add_parser("down", help="stop the processes the stack started")
    down.add_argument(
        "--purge", action="store_true", help="also delete the broker's log and the database"
    )
    down.set_defaults(handler=_cmd_down)
    status = stack_commands.add_parser("status", help="what runs, with pids and addresses")
    status.add_argument("--json", action="store_true", help="machine-readable output")
    status.set_defaults(handler=_cmd_status)
