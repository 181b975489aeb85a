"""The `ledger` command line: one module per command family, each adding its parsers.

| module | commands |
|---|---|
| `stack` | `stack up / init / down / status` |
| `status` | `status` |
| `demo` | `demo`, `simulate` |
| `schema_files` | `schemas export` |
| `stream` | `produce`, `worker`, `balances` |
| `apis` | `api`, `isp-api` |
| `bench` | `bench` and its parts |
| `books` | `project`, `close-period`, `expire-holds`, `replay`, `reconcile`, `isp-access` |

What they share: the running stack (`running`), the argument types (`argtypes`) and the exit
statuses (`exits`). A command's heavy imports (faust, aiohttp, psycopg) are made in its handler,
so that `ledger --help` and a mistyped command answer at once.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from ledger.cli import apis, bench, books, demo, schema_files, stack, status, stream
from ledger.cli.exits import EXIT_ERROR, EXIT_INTERRUPTED
from ledger.errors import LedgerError

FAMILIES = (stack, status, demo, schema_files, stream, apis, bench, books)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ledger",
        description="The Internet Plus ledger: purchases on Kafka, invoices in PostgreSQL.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for family in FAMILIES:
        family.add_parsers(commands)
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
        return EXIT_INTERRUPTED
    return code
