"""The `ledger` commands of the stream: `produce` (a file onto the log), `worker` (the
authorizer) and `balances` (read back from the workers' changelog)."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from ledger.cli.argtypes import identifier, port
from ledger.cli.exits import EXIT_ERROR, EXIT_NOT_RUNNING
from ledger.cli.running import running
from schemas.types import Party


def _cmd_produce(args: argparse.Namespace) -> int:
    from pathlib import Path

    from ledger.produce import produce_file

    stack = running(args)
    report = produce_file(
        Path(args.file), stack.bootstrap_servers, stack.partitions, args.send_invalid
    )
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


def _cmd_worker(args: argparse.Namespace) -> int:
    from pathlib import Path

    from streams.config import WorkerConfig
    from streams.worker import supervise

    stack = running(args)
    home = stack.settings.home
    config = WorkerConfig(
        bootstrap_servers=stack.bootstrap_servers,
        partitions=stack.partitions,
        data_dir=Path(args.data_dir) if args.data_dir else home / "workers" / args.name,
        store=args.store,
        metrics_port=args.metrics_port,
        name=args.name,
        static_membership=args.static,
    )
    return supervise(config, args.loglevel)


def _account_rows(bootstrap: str, account_id: str, partitions: int) -> dict[str, object] | None:
    from ledger.core.state import decode_account
    from ledger.kafka.groups import ACCOUNTS_TABLE
    from ledger.tables import read_key

    raw = read_key(bootstrap, ACCOUNTS_TABLE, account_id, partitions)
    if raw is None:
        return None
    account = decode_account(raw)
    return {
        "account": account.account_id,
        "isp": account.isp_id,
        "kind": account.kind,
        "owed_cents": account.owed_cents,
        "purchases_authorized": account.purchases_authorized,
        "refunds": account.refunds_applied,
        "spend_by_period_cents": dict(sorted(account.period_spend.items())),
    }


def _party_rows(
    bootstrap: str, kind: Party, party_id: str, partitions: int
) -> dict[str, object] | None:
    from ledger.kafka.groups import ACCOUNTS_TABLE
    from ledger.tables import read_balances

    balance = read_balances(bootstrap, ACCOUNTS_TABLE, kind, partitions).get(party_id)
    if balance is None:
        return None
    return {
        kind: party_id,
        "purchases": balance.purchases,
        "refunds": balance.refunds,
        "gross_cents": balance.gross_cents,
        "owed_cents": balance.owed_cents,
    }


def _cmd_balances(args: argparse.Namespace) -> int:
    stack = running(args)
    if args.kind == "account":
        rows = _account_rows(stack.bootstrap_servers, args.id, stack.partitions)
        missing = f"no account {args.id!r} in the balances yet"
    else:
        rows = _party_rows(stack.bootstrap_servers, args.kind, args.id, stack.partitions)
        missing = f"no {args.kind} {args.id!r} in the balances yet"
    if rows is None:
        print(missing, file=sys.stderr)
        return EXIT_NOT_RUNNING
    if args.json:
        print(json.dumps(rows, indent=2))
    else:
        for name, value in rows.items():
            print(f"{name:22} {value}")
    return 0


def add_parsers(commands: Any) -> None:
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

    balances = commands.add_parser(
        "balances", help="current balance of an account, publisher or ISP"
    )
    balances.add_argument("kind", choices=["account", "publisher", "isp"])
    balances.add_argument("id", type=identifier)
    balances.add_argument("--json", action="store_true")
    balances.set_defaults(handler=_cmd_balances)
