"""`ledger status`: lag, throughput, the last decision, dead letters, billing periods."""

from __future__ import annotations

import argparse
import json
from typing import Any

from ledger.cli.running import connected


def _cmd_status(args: argparse.Namespace) -> int:
    from ledger import status
    from ledger.stack import services

    stack = connected(args)
    found = status.gather(stack.bootstrap_servers, stack.dsn, services.running(stack.settings.home))
    print(json.dumps(found.as_json(), indent=2) if args.json else status.render(found))
    return 0


def add_parsers(commands: Any) -> None:
    status = commands.add_parser(
        "status",
        help="lag per partition, throughput, the last decision, dead letters, billing periods",
    )
    status.add_argument("--json", action="store_true", help="machine-readable output")
    status.set_defaults(handler=_cmd_status)
