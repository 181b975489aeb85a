"""`ledger api` (checkout and admin) and `ledger isp-api` (the ISPs' invoices), over HTTP."""

from __future__ import annotations

import argparse
import logging
from typing import Any

from ledger.cli.argtypes import port
from ledger.cli.running import connected
from ledger.settings import StackSettings


def _admin_key(settings: StackSettings) -> str:
    """The admin API key: LEDGER_ADMIN_KEY, else one made once and kept in the stack's home."""
    import os

    from ledger import keys

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
    from ledger import keys
    from ledger.api.server import run_api

    stack = connected(args)  # the broker, and PostgreSQL for purchases older than the start
    admin_key = _admin_key(stack.settings)
    print(f"checkout and admin API on http://127.0.0.1:{args.port}/v1/ "
          f"(OpenAPI: /v1/openapi.json, metrics: /metrics)")  # fmt: skip
    print(f"admin key: in {stack.settings.home / 'admin.key'} or LEDGER_ADMIN_KEY", flush=True)
    run_api(
        stack.bootstrap_servers, stack.partitions, keys.key_hash(admin_key), stack.dsn, args.port,
    )  # fmt: skip
    return 0


def _cmd_isp_api(args: argparse.Namespace) -> int:
    from ledger.api.isp import run_isp_api

    logging.basicConfig(level="WARNING", format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    run_isp_api(connected(args).dsn, args.port)
    return 0


def add_parsers(commands: Any) -> None:
    api = commands.add_parser("api", help="run the checkout and admin HTTP API")
    api.add_argument("--port", type=port, default=18080, help="on 127.0.0.1 (default 18080)")
    api.set_defaults(handler=_cmd_api)

    isp_api = commands.add_parser("isp-api", help="run the ISPs' invoice read API")
    isp_api.add_argument("--port", type=port, default=18081, help="on 127.0.0.1 (default 18081)")
    isp_api.set_defaults(handler=_cmd_isp_api)
