"""`ledger api` (checkout and admin), `ledger idp` (the ISPs' identity component, issue 14),
`ledger isp-secret` (an ISP's signing secret) and `ledger isp-api` (the ISPs' invoices)."""

from __future__ import annotations

import argparse
import logging
from typing import Any

from ledger.cli.argtypes import identifier, port
from ledger.cli.running import admin_key, connected
from ledger.errors import LedgerError


def _cmd_api(args: argparse.Namespace) -> int:
    from ledger import keys
    from ledger.api.server import run_api

    stack = connected(args)  # the broker, and PostgreSQL for purchases older than the start
    admin = admin_key(stack.settings)
    print(f"checkout and admin API on http://127.0.0.1:{args.port}/v1/ "
          f"(OpenAPI: /v1/openapi.json, metrics: /metrics)")  # fmt: skip
    print(f"admin key: in {stack.settings.home / 'admin.key'} or LEDGER_ADMIN_KEY", flush=True)
    print(f"confirmation pages at {_public_url(args)}/pay/<payment_id>; the ISPs' identity"
          f" component at {args.idp_url}", flush=True)  # fmt: skip
    run_api(
        stack.bootstrap_servers, stack.partitions, keys.key_hash(admin), stack.dsn, args.port,
        args.idp_url, _public_url(args), args.payment_ttl_seconds, args.holds_expiry_seconds,
        _limits(args),
    )  # fmt: skip
    return 0


def _public_url(args: argparse.Namespace) -> str:
    return str(args.public_url or f"http://127.0.0.1:{args.port}")


def _cmd_idp(args: argparse.Namespace) -> int:
    from ledger import keys
    from ledger.idp.server import run_idp

    stack = connected(args)
    print(f"the ISPs' identity component (isp-idp) on http://127.0.0.1:{args.port}/isp/<isp>/login,"
          f" back to {args.platform_url}", flush=True)  # fmt: skip
    run_idp(stack.dsn, keys.key_hash(admin_key(stack.settings)), args.platform_url, args.port,
            _limits(args))  # fmt: skip
    return 0


def _cmd_isp_secret(args: argparse.Namespace) -> int:
    from datetime import UTC, datetime

    from ledger.api import isp_secrets as secrets
    from projections.db import connect

    stack = connected(args)
    with connect(stack.dsn) as db:
        row = db.execute(secrets.ROTATE, secrets.rotate_params(args.isp, datetime.now(UTC)))
        names = [column.name for column in row.description or ()]
        view = secrets.view(dict(zip(names, row.fetchone() or (), strict=True)))
        db.commit()
    previous = view["previous_valid_until"]
    print(f"ISP {args.isp}: a new signing secret, kept in the ledger's database (never shown);"
          f" the identity component signs with it from now on"
          + (f"; the previous one verifies until {previous}" if previous else ""))  # fmt: skip
    return 0


def _positive_seconds(text: str) -> int:
    if not text.isascii() or not text.isdigit() or not 1 <= int(text) <= 7 * 24 * 3600:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number of seconds (1 to 604800)")
    return int(text)


def _non_negative_seconds(text: str) -> int:
    if not text.isascii() or not text.isdigit() or int(text) > 3600:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number of seconds (0 to 3600)")
    return int(text)


def _cmd_isp_api(args: argparse.Namespace) -> int:
    from ledger.api.isp import run_isp_api

    logging.basicConfig(level="WARNING", format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    run_isp_api(connected(args).dsn, args.port, _limits(args))
    return 0


def _limits(args: argparse.Namespace) -> Any:
    from ledger.api.admission import Limits

    try:
        return Limits(args.max_in_flight, args.queue_wait_ms / 1000, args.key_rate, args.key_burst)
    except ValueError as error:
        raise LedgerError(str(error)) from None


def _admission_arguments(parser: argparse.ArgumentParser, max_in_flight: int = 0) -> None:
    """Admission control (ledger.api.admission): beyond these, 503 or 429 with Retry-After."""
    from ledger.api import admission

    max_in_flight = max_in_flight or admission.MAX_IN_FLIGHT_DEFAULT
    parser.add_argument(
        "--max-in-flight", type=int, default=max_in_flight,
        help=f"requests handled at once (default {max_in_flight})",
    )  # fmt: skip
    parser.add_argument(
        "--queue-wait-ms", type=int, default=int(admission.QUEUE_WAIT_SECONDS_DEFAULT * 1000),
        help="a request waits this long for a place, then is a 503 (default"
        f" {int(admission.QUEUE_WAIT_SECONDS_DEFAULT * 1000)})",
    )  # fmt: skip
    parser.add_argument(
        "--key-rate", type=float, default=admission.KEY_RATE_DEFAULT,
        help="requests/s per API key, beyond: 429 (default"
        f" {admission.KEY_RATE_DEFAULT:g}; 0: none)",
    )  # fmt: skip
    parser.add_argument(
        "--key-burst", type=int, default=admission.KEY_BURST_DEFAULT,
        help=f"requests at once per API key (default {admission.KEY_BURST_DEFAULT})",
    )  # fmt: skip


def add_parsers(commands: Any) -> None:
    api = commands.add_parser("api", help="run the checkout and admin HTTP API")
    api.add_argument("--port", type=port, default=18080, help="on 127.0.0.1 (default 18080)")
    api.add_argument(
        "--idp-url",
        default="http://127.0.0.1:18082",
        help="the ISPs' identity component (default http://127.0.0.1:18082)",
    )
    api.add_argument(
        "--public-url",
        default=None,
        help="this API as browsers reach it (default http://127.0.0.1:PORT)",
    )
    api.add_argument(
        "--payment-ttl-seconds",
        type=_positive_seconds,
        default=15 * 60,
        help="a prepared payment expires after this long (default 900)",
    )
    api.add_argument(
        "--holds-expiry-seconds",
        type=_non_negative_seconds,
        default=60,
        help="send the held payments' expiry barrier this often (default 60; 0: never, when"
        " another process sends it, or `ledger expire-holds` from a scheduler)",
    )
    _admission_arguments(api)
    api.set_defaults(handler=_cmd_api)

    idp = commands.add_parser("idp", help="run the ISPs' identity component (isp-idp)")
    idp.add_argument("--port", type=port, default=18082, help="on 127.0.0.1 (default 18082)")
    idp.add_argument(
        "--platform-url",
        default="http://127.0.0.1:18080",
        help="the checkout API's pages, where subscribers go back to",
    )
    from ledger.api.admission import IDP_MAX_IN_FLIGHT_DEFAULT

    _admission_arguments(idp, IDP_MAX_IN_FLIGHT_DEFAULT)
    idp.set_defaults(handler=_cmd_idp)

    secret = commands.add_parser(
        "isp-secret", help="register or rotate an ISP's signing secret (checkout with consent)"
    )
    secret.add_argument("--isp", required=True, type=identifier, help="the ISP's id")
    secret.set_defaults(handler=_cmd_isp_secret)

    isp_api = commands.add_parser("isp-api", help="run the ISPs' invoice read API")
    isp_api.add_argument("--port", type=port, default=18081, help="on 127.0.0.1 (default 18081)")
    _admission_arguments(isp_api)
    isp_api.set_defaults(handler=_cmd_isp_api)
