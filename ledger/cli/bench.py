"""`ledger bench` and its parts (`core`, `stream`, `projections`): the benchmarks, which report
figures (ledger/bench/ measures; this only parses, checks and prints)."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from ledger.cli.running import connected, running
from ledger.errors import LedgerError


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


def _cmd_bench_stream(args: argparse.Namespace) -> int:
    import subprocess
    import tempfile

    from ledger.bench import stream

    stack = running(args)
    partitions = stack.partitions
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
                stack.bootstrap_servers, partitions, accounts=args.accounts,
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

    if args.accounts < 1 or args.purchases < 1:
        raise LedgerError("--accounts and --purchases must be at least 1")
    stack = connected(args)
    figures = projections.run(
        stack.bootstrap_servers, stack.dsn, stack.partitions, args.accounts,
        args.purchases, args.seed,
    )  # fmt: skip
    print(projections.report(figures))
    _write_json(args.json, projections.as_json(figures))
    return 0


def _cmd_bench_load(args: argparse.Namespace) -> int:
    from ledger.api.admission import Limits
    from ledger.bench import load

    if args.clients < 1 or args.seconds <= 0 or args.accounts < 1:
        raise LedgerError("--clients, --seconds and --accounts must be positive")
    try:
        limits = Limits(
            args.max_in_flight, args.queue_wait_ms / 1000, args.key_rate, args.key_burst
        )
    except ValueError as error:
        raise LedgerError(str(error)) from None
    stack = connected(args)
    figures = load.run(stack.settings, stack.bootstrap_servers, stack.dsn, args.clients,
                       args.seconds, limits, args.accounts)  # fmt: skip
    print(load.report(figures))
    _write_json(args.json, load.as_json(figures))
    lost = figures.accepted - min(figures.commands_found, figures.facts_found)
    if lost or figures.shed_without_retry_after or figures.shed_without_json:
        print(f"FAILED: {lost} accepted payment(s) not found on the log, or a shed answer"
              " without Retry-After or JSON", file=sys.stderr)  # fmt: skip
        return 1
    return 0


def add_parsers(commands: Any) -> None:
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
    _add_load_parser(bench_commands)


def _add_load_parser(bench_commands: Any) -> None:
    from ledger.api import admission
    from ledger.bench import load

    bench_load = bench_commands.add_parser(
        "load", help="the checkout and ISP APIs under concurrent clients, on the running stack:"
        " requests/s, p50/p99/max and statuses per route, sheds, accepted payments found",
    )  # fmt: skip
    bench_load.add_argument("--clients", type=int, default=load.CLIENTS_DEFAULT)
    bench_load.add_argument("--seconds", type=float, default=load.SECONDS_DEFAULT)
    bench_load.add_argument("--accounts", type=int, default=load.ACCOUNTS_DEFAULT,
                            help="subscribers with credentials the clients sign in as")  # fmt: skip
    bench_load.add_argument("--max-in-flight", type=int, default=admission.MAX_IN_FLIGHT_DEFAULT)
    bench_load.add_argument("--queue-wait-ms", type=int,
                            default=int(admission.QUEUE_WAIT_SECONDS_DEFAULT * 1000))  # fmt: skip
    bench_load.add_argument("--key-rate", type=float, default=admission.KEY_RATE_DEFAULT)
    bench_load.add_argument("--key-burst", type=int, default=admission.KEY_BURST_DEFAULT)
    bench_load.add_argument("--json", metavar="FILE", help="also write the figures as JSON")
    bench_load.set_defaults(handler=_cmd_bench_load)
