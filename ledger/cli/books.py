"""The `ledger` commands of the PostgreSQL side: the projection writer, the billing close, the
holds' expiry barrier, replay, reconcile and the ISPs' access. Their SQL is in projections/."""

from __future__ import annotations

import argparse
import json
import logging
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, get_args

from ledger.cli.argtypes import (
    identifier,
    niceness,
    period,
    port,
    scratch_schema,
    seconds,
    timestamp,
)
from ledger.cli.exits import EXIT_MISMATCH
from ledger.cli.running import Connected, connected
from ledger.errors import LedgerError
from schemas.commands import Feature
from schemas.types import Party

CLOSE_WAIT_SECONDS = 120.0
VERIFY_PROCESSES = 2  # projections.verify.VERIFY_PROCESSES (not imported: the CLI starts fast)


def positive_seconds(text: str) -> float:
    value = seconds(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"a number of seconds above 0; got {text!r}")
    return value


def _cmd_project(args: argparse.Namespace) -> int:
    from projections.writer import run_writer

    if args.batch_events_max < 1:
        raise LedgerError("--batch-events-max must be at least 1")
    logging.basicConfig(
        level=args.loglevel.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    stack = connected(args)
    name = None if args.dynamic else args.name
    return run_writer(
        stack.bootstrap_servers, stack.dsn, "ledger", args.batch_events_max, args.metrics_port,
        name, args.reconcile_seconds, args.nice,
    )  # fmt: skip


def _print_summary(isp_id: str, period: str, row: Any) -> None:
    print(f"period {period} of {isp_id} is sealed: {row[1]} invoices")
    for label, cents in (("excluding VAT", row[2]), ("VAT", row[3]), ("including VAT", row[4]),
                         ("ISP commission", row[5]), ("owed to the platform", row[6])):  # fmt: skip
        print(f"  {label:22} {cents / 100:>16,.2f} EUR")
    if row[9]:
        print(f"  and {row[9]} credit notes, {row[10] / 100:,.2f} EUR including VAT")
    print(f"  seal {row[7]}")
    if row[8] is not None:
        print(f"  over the previous seal {row[8]}")


def _cmd_close_period(args: argparse.Namespace) -> int:
    from ledger.produce import LedgerProducer, close_commands
    from projections.close import close_outcome

    stack = connected(args)
    before = close_outcome(stack.dsn, args.isp, args.period, "")
    if before is not None and before[0] == "closed":
        print(f"period {args.period} of {args.isp} is already sealed: nothing was sent")
        _print_summary(args.isp, args.period, before[1])
        return 0
    command_id = f"close-{args.isp}-{args.period}-{uuid.uuid4().hex[:12]}"
    commands = close_commands(
        args.isp, args.period, stack.partitions, command_id, datetime.now(UTC)
    )
    with LedgerProducer(stack.bootstrap_servers, stack.partitions, "ledger-close") as producer:
        for command in commands:
            producer.send_command(command).get(timeout=30)
    print(f"close of {args.isp} {args.period} sent to {stack.partitions} partitions ({command_id})")
    if args.no_wait:
        return 0
    deadline = time.monotonic() + args.wait_seconds
    while time.monotonic() < deadline:
        outcome = close_outcome(stack.dsn, args.isp, args.period, command_id)
        if outcome is not None and outcome[0] == "closed":
            _print_summary(args.isp, args.period, outcome[1])
            return 0
        if outcome is not None and outcome[0] == "rejected":
            raise LedgerError(f"the close was refused: {', '.join(outcome[1])}")
        time.sleep(0.25)
    from projections.close import waits_for

    before_it = waits_for(stack.dsn, args.isp, args.period)
    if before_it is not None:
        raise LedgerError(
            f"no seal after {args.wait_seconds:.0f} s: {args.period} waits for {before_it}, the"
            f" period before it in {args.isp}'s chain of seals, to be sealed; close {before_it}"
            " (docs/design/seals.md)"
        )
    raise LedgerError(
        f"no seal after {args.wait_seconds:.0f} s: are the workers and `ledger project` running?"
    )


def _cmd_expire_holds(args: argparse.Namespace) -> int:
    from ledger.produce import send_holds_expiry

    stack = connected(args)
    commands = send_holds_expiry(stack.bootstrap_servers, stack.partitions, args.as_of)
    as_of = commands[0].as_of.isoformat()
    print(f"holds expiring at or before {as_of} expire: barrier sent to {len(commands)}"
          f" partitions ({commands[0].command_id})")  # fmt: skip
    return 0


def _cmd_activate(args: argparse.Namespace) -> int:
    from ledger.produce import LedgerProducer, upgrade_commands

    stack = connected(args)
    commands = upgrade_commands(args.feature, stack.partitions, datetime.now(UTC))
    with LedgerProducer(stack.bootstrap_servers, stack.partitions, "ledger-upgrade") as producer:
        for command in commands:
            producer.send_command(command).get(timeout=30)
    print(f"{args.feature} activated: barrier sent to {len(commands)} partitions"
          f" ({commands[0].command_id}); every worker must run a build that knows it")  # fmt: skip
    return 0


def _cmd_replay(args: argparse.Namespace) -> int:
    from projections.diffreport import to_json
    from projections.progress import progress_bar
    from projections.replay import drop_schema, replay
    from projections.writer import tune_gc

    stack = connected(args)
    tune_gc()
    result = replay(
        stack.bootstrap_servers, stack.dsn, args.schema, stack.partitions,
        progress=progress_bar("replay", "events"), keep=args.keep,
    )  # fmt: skip
    if not args.keep:
        drop_schema(stack.dsn, args.schema)
    if args.json:
        document = {
            "records": result.records, "applied": result.applied,
            "duplicates": result.duplicates, "seconds": round(result.seconds, 3),
            "events_per_second": round(result.events_per_second, 1),
            # Sealed before invoices showed their VAT per rate (compare.sealed_before_vat_by_rate)
            "periods_not_compared": [
                {"isp_id": i, "period": p} for i, p in result.not_compared
            ],
            **to_json(result.comparison),
        }  # fmt: skip
        print(json.dumps(document, indent=2, ensure_ascii=False))
        return 0 if result.equal else EXIT_MISMATCH
    print(
        f"replayed {result.records:,} records ({result.applied:,} applied, {result.duplicates:,}"
        f" duplicates) into schema {result.schema} in {result.seconds:.1f} s:"
        f" {result.events_per_second:,.0f} events/s"
    )
    for table, summary in result.summaries.items():
        print(f"  {table:20} {summary.rows:>12,} rows")
    if result.not_compared:
        shown = ", ".join(f"{isp} {period}" for isp, period in result.not_compared[:5])
        more = ", ..." if len(result.not_compared) > 5 else ""
        print(f"  not compared: {len(result.not_compared)} ISP period(s) sealed before invoices"
              f" showed their VAT per rate ({shown}{more})")  # fmt: skip
    for column, why in result.comparison.columns_not_compared.items():
        print(f"  not compared: {column} ({why})")
    if result.equal:
        print("replay equals live: same columns, and same rows in every column of every table")
        return 0
    print("replay DIFFERS from live:")
    for line in result.differences:
        print(f"  {line}")
    return EXIT_MISMATCH


def _verify_once(args: argparse.Namespace, stack: Connected, progress: bool) -> Any:
    from ledger.kafka.groups import ACCOUNTS_TABLE
    from ledger.tables import read_summaries
    from projections import verify
    from projections.progress import progress_bar

    def workers() -> dict[int, Any]:
        return read_summaries(stack.bootstrap_servers, ACCOUNTS_TABLE, stack.partitions)

    result = verify.verify(
        stack.bootstrap_servers, None if args.skip_postgres else stack.dsn, stack.partitions,
        workers, progress=progress_bar("verify", "commands") if progress else None,
        processes=args.processes,
    )  # fmt: skip
    verify.report(result)
    if args.json is not None:
        args.json.write_text(json.dumps(result.as_json(), indent=2) + "\n")
    return result


def _cmd_verify(args: argparse.Namespace) -> int:
    from projections.writer import tune_gc

    stack = connected(args)
    tune_gc()
    if args.every is None:
        result = _verify_once(args, stack, progress=not args.quiet)
        return 0 if result.equal else EXIT_MISMATCH
    return _verify_every(args, stack)


def _verify_every(args: argparse.Namespace, stack: Connected) -> int:
    """A run every `--every` seconds (from the start of one to the start of the next, or at once
    when a run took longer), its figures served as metrics; a run that fails is logged, counted
    and tried again at the next turn. Runs until stopped."""
    from prometheus_client import start_http_server

    from ledger.settings import listen_host
    from projections import verify

    logging.basicConfig(level="INFO", format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    log = logging.getLogger("ledger.verify")
    if args.metrics_port is not None:
        start_http_server(args.metrics_port, addr=listen_host())
    while True:
        started = time.monotonic()
        try:
            result = _verify_once(args, stack, progress=False)
        except Exception:  # the broker or the database away: the next turn tries again
            log.exception("verify failed; trying again in %.0f s", args.every)
            verify.observe_failure(time.time())
        else:
            verify.observe(result, time.time())
        time.sleep(max(0.0, args.every - (time.monotonic() - started)))


def _stream_balances(stack: Connected) -> Any:
    from ledger.kafka.groups import ACCOUNTS_TABLE
    from ledger.tables import read_balances

    def read(party: Party) -> dict[str, Any]:
        return read_balances(stack.bootstrap_servers, ACCOUNTS_TABLE, party, stack.partitions)

    return read


def _cmd_reconcile(args: argparse.Namespace) -> int:
    from projections.reconcile import reconcile_snapshot, refused_money

    stack = connected(args)
    stream = None if args.skip_stream else _stream_balances(stack)
    deadline = time.monotonic() + args.wait_seconds
    while True:
        # The money facts PostgreSQL refused (ledger.dlq) are in the stream's balances only.
        refused = None if args.skip_stream else refused_money(stack.bootstrap_servers)
        checks = reconcile_snapshot(stack.dsn, stream, refused)
        failed = [check for check in checks if check.mismatches]
        # The stream and the projections catch up with the log at their own pace: a difference
        # between them is looked at again until --wait-seconds have passed.
        if not failed or time.monotonic() >= deadline:
            break
        time.sleep(1.0)
    if not args.skip_facts:
        # The database against ledger.events, fact by fact, with no code of the writer's (issue
        # 12); in one snapshot of the database, up to the offsets stored with it: no waiting.
        from projections.factcheck import check_facts

        checks.append(check_facts(stack.bootstrap_servers, stack.dsn))
        failed = [check for check in checks if check.mismatches]
    for check in checks:
        print(f"{'ok      ' if not check.mismatches else 'MISMATCH'} {check.name}")
        for line in check.mismatches[:50]:
            print(f"         {line}")
    print("the books reconcile" if not failed else f"{len(failed)} check(s) failed")
    return 0 if not failed else EXIT_MISMATCH


def _cmd_verify_seals(args: argparse.Namespace) -> int:
    """Issue 15: every sealed row and the chain of seals recomputed from the money facts."""
    from projections.db import connect
    from projections.seals import verify_seals

    stack = connected(args)
    with connect(stack.dsn) as db:
        checks = verify_seals(db, args.isp)
    if args.isp is not None and not checks[args.isp].periods and not checks[args.isp].not_compared:
        print(f"ISP {args.isp} has no sealed period")
    differences = 0
    for isp_id, check in checks.items():
        state = "ok      " if not check.differences else "MISMATCH"
        print(f"{state} {isp_id}: {check.periods} sealed period(s), {check.rows:,} rows"
              " recomputed from the facts and compared")  # fmt: skip
        if check.not_compared:
            shown = ", ".join(period for _, period in check.not_compared)
            print(f"         not compared (sealed before migration 0006): {shown}")
        for line in check.differences[:100]:
            print(f"         {line}")
        if len(check.differences) > 100:
            print(f"         ... and {len(check.differences) - 100} more")
        differences += len(check.differences)
    if differences:
        print(f"{differences} difference(s): the sealed rows do not match their facts")
        return EXIT_MISMATCH
    print("every seal matches its facts, and every chain holds")
    return 0


def _add_verify_seals_parser(commands: Any) -> None:
    verify = commands.add_parser(
        "verify-seals",
        help="recompute every sealed invoice, credit note, statement and period seal and each"
        " ISP's chain from the facts in PostgreSQL, and name every difference",
    )
    verify.add_argument("--isp", type=identifier, default=None, help="only this ISP")
    verify.set_defaults(handler=_cmd_verify_seals)


def _cmd_isp_access(args: argparse.Namespace) -> int:
    from projections.access import grant
    from projections.db import connect

    stack = connected(args)
    with connect(stack.dsn, schema=None) as db:
        creds = grant(db, args.isp)
    host_port = stack.dsn.rsplit("@", 1)[1]
    print(f"credentials of ISP {creds.isp_id} (shown once; earlier API keys are revoked):")
    print(f"  SQL login     postgresql://{creds.sql_login}:{creds.sql_password}@{host_port}")
    views = (
        "ledger.isp_periods, ledger.isp_invoices, ledger.isp_invoice_lines,"
        " ledger.isp_credit_notes, ledger.isp_credit_note_lines, ledger.isp_statement_seals"
    )
    print(f"                reads {views}")
    print(f"  API key       {creds.api_key}")
    return 0


def _add_access_parsers(commands: Any) -> None:
    access = commands.add_parser(
        "isp-access", help="issue an ISP's SQL login and API key (its own invoices only)"
    )
    access.add_argument("--isp", required=True, type=identifier, help="the ISP's id")
    access.set_defaults(handler=_cmd_isp_access)


def _add_check_parsers(commands: Any) -> None:
    replay = commands.add_parser(
        "replay", help="rebuild every projection from offset 0 and compare it with live"
    )
    replay.add_argument(
        "--schema", default="ledger_replay", type=scratch_schema, help="the fresh schema to build"
    )
    replay.add_argument(
        "--keep", action="store_true",
        help="keep the rebuilt schema (made logged at the end of the load, like the live one)",
    )  # fmt: skip
    replay.add_argument(
        "--json", action="store_true",
        help="print the result and the differing rows as one JSON document",
    )  # fmt: skip
    replay.set_defaults(handler=_cmd_replay)

    reconcile = commands.add_parser(
        "reconcile", help="check that invoices, shares, postings and balances agree"
    )
    reconcile.add_argument("--skip-stream", action="store_true",
                           help="do not compare with the faust balances")  # fmt: skip
    reconcile.add_argument(
        "--skip-facts", action="store_true",
        help="do not compare the database with ledger.events fact by fact",
    )  # fmt: skip
    reconcile.add_argument(
        "--wait-seconds", type=seconds, default=30.0,
        help="how long to wait for the stream and projections to agree",
    )  # fmt: skip
    reconcile.set_defaults(handler=_cmd_reconcile)


def _add_verify_parser(commands: Any) -> None:
    verify = commands.add_parser(
        "verify",
        help="re-decide every command from offset 0 and compare the facts with ledger.events byte"
        " for byte, and the balances with the workers' tables and PostgreSQL",
    )  # fmt: skip
    verify.add_argument("--json", type=Path, metavar="FILE", help="write the result as JSON")
    verify.add_argument(
        "--every", type=positive_seconds, metavar="SECONDS",
        help="run again every SECONDS, until stopped, serving the figures as metrics",
    )  # fmt: skip
    verify.add_argument("--metrics-port", type=port, help="serve /metrics on PORT (with --every)")
    verify.add_argument("--skip-postgres", action="store_true",
                        help="do not compare the balances with PostgreSQL")  # fmt: skip
    verify.add_argument(
        "--processes", type=int, choices=range(1, 17), default=VERIFY_PROCESSES, metavar="N",
        help=f"processes sharing the partitions (1 to 16, default {VERIFY_PROCESSES})",
    )  # fmt: skip
    verify.add_argument("--quiet", action="store_true", help="no progress bar")
    verify.set_defaults(handler=_cmd_verify)


def _add_writer_parsers(commands: Any) -> None:
    project = commands.add_parser(
        "project", help="run the projection writer: ledger.events into PostgreSQL"
    )
    project.add_argument(
        "--name", default="p1", type=identifier,
        help="unique per writer: a restart under the same name resumes its partitions at once",
    )  # fmt: skip
    project.add_argument(
        "--dynamic", action="store_true", help="dynamic group membership instead of static"
    )
    project.add_argument("--metrics-port", type=port, help="serve /metrics on 127.0.0.1:PORT")
    project.add_argument("--batch-events-max", type=int, default=5_000, metavar="N")
    project.add_argument(
        "--reconcile-seconds", type=seconds, default=300.0, metavar="S",
        help="check the books in PostgreSQL every S seconds, for the metrics (0: never)",
    )  # fmt: skip
    project.add_argument(
        "--nice", type=niceness, default=10, metavar="N",  # projections.writer.NICENESS_DEFAULT
        help="run at niceness N (default 10; never raised back), below the stream workers when"
        " they share the cores: the writer's bursts otherwise decide the authorizer's p99 latency"
        " (PERF.md). On a host or CPU share of its own it changes nothing",
    )  # fmt: skip
    project.add_argument(
        "--loglevel", default="info", choices=["debug", "info", "warning", "error"]
    )
    project.set_defaults(handler=_cmd_project)

    close = commands.add_parser(
        "close-period", help="close and seal an ISP's billing period (a command on the stream)"
    )
    close.add_argument("--isp", required=True, type=identifier, help="the ISP's id")
    close.add_argument("--period", required=True, type=period, help="YYYY-MM")
    close.add_argument("--no-wait", action="store_true", help="send the close and return")
    close.add_argument("--wait-seconds", type=seconds, default=CLOSE_WAIT_SECONDS)
    close.set_defaults(handler=_cmd_close_period)

    expire = commands.add_parser(
        "expire-holds",
        help="expire the held payments due (a barrier on every partition, like a close)",
    )
    expire.add_argument(
        "--as-of", type=timestamp, default=None, metavar="TIMESTAMP",
        help="expire the holds due at this time (RFC 3339 with its offset; default: now)",
    )  # fmt: skip
    expire.set_defaults(handler=_cmd_expire_holds)

    activate = commands.add_parser(
        "activate",
        help="activate a feature of the running build on every partition (issue 16; only once"
        " every worker runs it: an older one dead-letters the command)",
    )
    activate.add_argument("feature", choices=get_args(Feature), help="the feature")
    activate.set_defaults(handler=_cmd_activate)


def add_parsers(commands: Any) -> None:
    _add_access_parsers(commands)
    _add_check_parsers(commands)
    _add_verify_seals_parser(commands)
    _add_verify_parser(commands)
    _add_writer_parsers(commands)
