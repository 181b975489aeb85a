"""`ledger demo` and `ledger simulate`: a seeded month of Internet Plus, through the whole ledger
or onto the log (or into a file)."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING, Any

from ledger.cli.running import admin_key, connected, running
from ledger.cli.stack import add_port_flags, cmd_up
from ledger.errors import LedgerError

if TYPE_CHECKING:
    from ledger.simulate import Scale


def _shape(args: argparse.Namespace) -> Scale:
    from ledger import simulate

    try:
        return simulate.Scale(months=args.months, scale=args.scale, seed=args.seed)
    except ValueError as error:
        raise LedgerError(str(error)) from error


def _cmd_demo(args: argparse.Namespace) -> int:
    from ledger import demo

    shape = _shape(args)
    cmd_up(args)
    stack = connected(args)
    demo.run(stack.bootstrap_servers, stack.dsn, stack.partitions, stack.settings.home, shape,
             admin_key(stack.settings))  # fmt: skip
    return 0


def _cmd_simulate(args: argparse.Namespace) -> int:
    from ledger import demo, simulate

    workload = simulate.generate(_shape(args))
    if args.output:
        from schemas import codec

        with open(args.output, "wb") as out:
            for item in [*workload.reference, *workload.setup,
                         *(x for month in workload.months for x in month)]:  # fmt: skip
                out.write((item if isinstance(item, bytes) else codec.encode(item)) + b"\n")
        print(f"wrote the workload to {args.output}")
        return 0
    stack = running(args)
    sent, malformed = demo._send(stack.bootstrap_servers, stack.partitions, workload)
    print(f"sent {sent:,} commands and {malformed} malformed messages")
    return 0


def _add_shape_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--months", type=int, default=1, help="months of traffic (1 to 24)")
    parser.add_argument(
        "--scale", type=float, default=0.01,
        help="share of the real platform: 1 is 1.1 million subscribers, 550,000 purchases a month",
    )  # fmt: skip
    parser.add_argument("--seed", type=int, default=2006, help="the same seed, the same workload")


def add_parsers(commands: Any) -> None:
    demo = commands.add_parser(
        "demo", help="the main job: a simulated month through the whole ledger, then a summary"
    )
    add_port_flags(demo)
    _add_shape_flags(demo)
    demo.set_defaults(handler=_cmd_demo)

    simulate = commands.add_parser(
        "simulate", help="send a seeded Internet Plus workload (or write it with --output)"
    )
    _add_shape_flags(simulate)
    simulate.add_argument("--output", metavar="FILE", help="write JSON lines instead of sending")
    simulate.set_defaults(handler=_cmd_simulate)
