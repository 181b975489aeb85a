"""Request values checked before they reach PostgreSQL or Kafka (issue 12, part 2), on the real
stack: the ISP API answered 500 to a NUL in an invoice id or a query value (psycopg refused it);
every path and query value of both APIs, and every id on the command line, is now checked first.
An id nothing can have is a 404, a malformed query value a 400 saying what is expected, a bad
command line a usage message; none is a 5xx or a traceback, and none writes to ledger.commands."""

from __future__ import annotations

import json
import re
import socket
import subprocess
import sys
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from ledger.kafka import topics
from ledger.stack.state import StackState
from projections.access import grant, role_name
from tests.fuzz import HOSTILE, fuzz
from tests.harness import PROJECT_ROOT, ApiServer, LedgerProcess, end_offsets, free_port, wait_for

pytestmark = pytest.mark.integration
ID = r"[A-Za-z0-9][A-Za-z0-9._:@-]{0,63}"  # schemas.types.Id
# Beyond aiohttp's request line of 8190 bytes: refused by its HTTP parser, before any handler.
LINE_TOO_LONG_CHARS = 20_000


class IspApiProcess(LedgerProcess):
    def __init__(self, log_dir: Path) -> None:
        super().__init__("isp-api", log_dir)
        self.port = free_port()

    def arguments(self) -> list[str]:
        return ["isp-api", "--port", str(self.port)]


def _get(port: int, path: str, key: str | None) -> tuple[int, bytes, str]:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, response.read(), response.headers.get("Content-Type", "")
    except urllib.error.HTTPError as error:
        return error.code, error.read(), error.headers.get("Content-Type", "")


def _raw(port: int, request: bytes) -> bytes:
    """One request as raw bytes (headers urllib would refuse to send); the status line back."""
    with socket.create_connection(("127.0.0.1", port), timeout=30) as conn:
        conn.sendall(request)
        answer = b""
        while b"\r\n" not in answer:
            chunk = conn.recv(4096)
            if not chunk:
                break
            answer += chunk
    return answer.split(b"\r\n", 1)[0]


def _q(value: str) -> str:
    return urllib.parse.quote(value, safe="")


@pytest.fixture(scope="module")
def isp_api(
    stack: StackState, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[int, str, str]]:
    """An ISP API process and a new ISP's key: (port, isp_id, key)."""
    assert stack.postgres is not None
    isp = f"isp-{uuid.uuid4().hex[:8]}"
    with psycopg.connect(stack.postgres.dsn) as db:
        key = grant(db, isp).api_key
    api = IspApiProcess(tmp_path_factory.mktemp("isp-api"))
    api.start()

    def answers() -> bool:
        assert api.alive(), api.log_tail()
        try:
            return _get(api.port, "/v1/isps/openapi.json", None)[0] == 200
        except OSError:
            return False

    try:
        wait_for(answers, 60, "the ISP API")
        yield api.port, isp, key
    finally:
        api.stop()
        with psycopg.connect(stack.postgres.dsn) as db:
            db.execute("DELETE FROM ledger.isp_api_keys WHERE isp_id = %s", (isp,))
            db.execute("DELETE FROM ledger.isp_logins WHERE isp_id = %s", (isp,))
            db.execute(f'DROP ROLE IF EXISTS "{role_name(isp)}"')


def test_the_isp_api_answers_no_5xx_to_a_nul_or_any_odd_value(
    isp_api: tuple[int, str, str],
) -> None:
    port, isp, key = isp_api
    invoices = f"/v1/isps/{isp}/invoices"
    # The three requests of the issue: 500 (psycopg.DataError) before.
    for path in (f"{invoices}/x%00y", f"{invoices}/x%00y.csv"):
        status, body, content_type = _get(port, path, key)
        assert (status, json.loads(body)["error"]["code"]) == (404, "not_found"), path
        assert content_type.startswith("application/json")
    status, body, _ = _get(port, f"{invoices}?period=2013-12&after=%00", key)
    assert status == 400 and "after" in json.loads(body)["error"]["message"], body

    for value in HOSTILE:
        for path in (f"{invoices}/{_q(value)}", f"{invoices}/{_q(value)}.csv"):
            status, body, _ = _get(port, path, key)
            assert status == 404, (value, status, body)
        for query in ("period", "after", "limit"):
            page = {"period": "2013-12", query: value}
            status, body, _ = _get(port, f"{invoices}?{urllib.parse.urlencode(page)}", key)
            assert status in (200, 400), (query, value, status, body)
            assert status == 200 or json.loads(body)["error"]["code"] == "bad_request"
    # Python's `$` matched before a final newline, and int() reads other scripts' digits.
    assert _get(port, f"{invoices}?period=2013-12%0A", key)[0] == 400
    assert _get(port, f"{invoices}?period=2013-12&limit=%D9%A1%D9%A2", key)[0] == 400
    assert _get(port, f"{invoices}?period=2013-12&limit=%2012%20", key)[0] == 400
    status, body, _ = _get(port, f"{invoices}?period=2013-12&limit=2&after={isp}.2013-12.a", key)
    assert status == 200 and json.loads(body)["invoices"] == []

    # A key of bytes that are not ASCII: 500 before (hashing the header failed), now a 401.
    request = f"GET /v1/isps/{isp}/periods HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
    assert _raw(port, request.encode() + b"Authorization: Bearer \xff\xfe\r\n\r\n").startswith(
        b"HTTP/1.1 401"
    )
    # A request line beyond aiohttp's limit: its HTTP parser's plain 400, not a handler's 5xx.
    line = f"GET {invoices}/{'x' * LINE_TOO_LONG_CHARS} HTTP/1.1\r\nHost: x\r\n\r\n"
    assert _raw(port, line.encode()).split(b" ")[1] == b"400"


def test_the_isp_api_fuzzed_with_hostile_values_answers_as_documented(
    isp_api: tuple[int, str, str],
) -> None:
    port, isp, key = isp_api

    def before(case: Any) -> str:
        if case.path_parameters and "isp_id" in case.path_parameters:
            case.path_parameters["isp_id"] = isp  # past the 404 of others' paths
        return key

    seen = fuzz(f"http://127.0.0.1:{port}", "/v1/isps/openapi.json", 10, before)
    print(f"ISP API fuzzed with hostile values; answers by status: {dict(sorted(seen.items()))}")
    assert 200 in seen and 404 in seen and 400 in seen, seen


@pytest.fixture(scope="module")
def checkout_api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ApiServer]:
    server = ApiServer(tmp_path_factory.mktemp("api"), admin_key=f"admin_{uuid.uuid4().hex}")
    try:
        yield server.start()
    finally:
        server.stop()


def test_the_checkout_api_refuses_odd_path_values_before_the_stream(
    checkout_api: ApiServer, stack: StackState
) -> None:
    assert stack.kafka is not None
    api, admin = checkout_api, checkout_api.admin_key
    run = uuid.uuid4().hex[:8]
    status, registered = api.call("POST", "/v1/admin/publishers", {
        "publisher_id": f"pub-{run}", "name": "Probe", "category": "vod",
        "revenue_share_bp": 6000, "vat_category": "standard"}, admin)  # fmt: skip
    assert status == 201, registered
    key = str(registered["api_key"])
    before = end_offsets(stack.kafka.bootstrap_servers, topics.COMMANDS)
    refund = {"refund_id": f"r-{run}", "amount_cents": 1, "reason": "x",
              "occurred_at": "2026-01-01T00:00:00Z"}  # fmt: skip
    for value in (v for v in HOSTILE if not re.fullmatch(ID, v)):  # "1_0" is an id
        odd = _q(value)
        # 401 until the API has read the new publisher from the reference topic.
        wait_for(lambda odd=odd: api.call("GET", f"/v1/purchases/{odd}", key=key)[0] != 401,
                 30, "the publisher's key")  # fmt: skip
        for method, path, body, who in (
            ("GET", f"/v1/purchases/{odd}", None, key),
            ("GET", f"/v1/payments/{odd}", None, key),
            ("POST", f"/v1/purchases/{odd}/refunds", refund, key),
            ("POST", f"/v1/admin/accounts/{odd}/block", {"reason": "fraud"}, admin),
            ("POST", f"/v1/admin/accounts/{odd}/unblock", {}, admin),
            ("PUT", f"/v1/admin/accounts/{odd}/limits", {"limits": {}}, admin),
            ("POST", f"/v1/admin/accounts/{odd}/employees", {"user_id": "u1"}, admin),
            ("DELETE", f"/v1/admin/accounts/{odd}/employees/u1", None, admin),
            ("DELETE", f"/v1/admin/accounts/a1/employees/{odd}", None, admin),
        ):
            status, answer = api.call(method, path, body, who)
            # "not_found" from the handler, or aiohttp's own when no route matches ("" or "/").
            code = answer["error"]["code"]  # type: ignore[index]
            assert status == 404 and code in ("not_found", "http_error"), (
                method, path, status, answer)  # fmt: skip
    # In a body: msgspec searches an id's pattern, whose `$` matched before a final newline,
    # so "acct\n" reached the log (and the database) before.
    payment = {"amount_cents": 266, "category": "vod", "description": "x",
               "content_id": f"film-{run}\n"}  # fmt: skip
    status, answer = api.checkout.prepare(key, payment, f"k-{run}")
    assert status == 422 and "content_id" in str(answer), answer
    status, answer = api.checkout.prepare(key, {**payment, "content_id": "film"}, f"k {run}")
    assert status == 400 and "Idempotency-Key" in str(answer), answer
    opening = {"account_id": f"a-{run}\n", "isp_id": "i1", "kind": "consumer"}
    status, answer = api.call("POST", "/v1/admin/accounts", opening, admin)
    assert status == 422 and "account_id" in str(answer), answer
    assert end_offsets(stack.kafka.bootstrap_servers, topics.COMMANDS) == before
    request = "GET /v1/purchases/p1 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
    assert _raw(api.port, request.encode() + b"Authorization: Bearer \xc3\x28\r\n\r\n").startswith(
        b"HTTP/1.1 401"
    )


def _ledger(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "ledger.cli", *args], cwd=PROJECT_ROOT, capture_output=True,
        text=True, timeout=120, check=False,
    )  # fmt: skip


@pytest.mark.parametrize(
    ("args", "fix"),
    [
        pytest.param(
            ("close-period", "--isp", "bad\x01isp", "--period", "2006-03", "--no-wait"),
            "--isp",
            id="close-control-char",
        ),
        pytest.param(
            ("close-period", "--isp", "i" * 300, "--period", "2006-03", "--no-wait"),
            "--isp",
            id="close-huge-id",
        ),
        pytest.param(
            ("close-period", "--isp", "no-such-isp", "--period", "2006-03\n", "--no-wait"),
            "--period",
            id="close-period-newline",
        ),
        pytest.param(
            ("close-period", "--isp", "no-such-isp", "--period", "\uff12006-03", "--no-wait"),
            "--period",
            id="close-period-fullwidth",
        ),
        pytest.param(("isp-access", "--isp", "bad isp\x1b[31m"), "--isp", id="access-escape"),
        pytest.param(("balances", "account", "a\x01"), "id", id="balances-control-char"),
        pytest.param(("api", "--port", "70000"), "--port", id="api-port"),
        pytest.param(("isp-api", "--port", "-1"), "--port", id="isp-api-port"),
        pytest.param(
            ("api", "--payment-ttl-seconds", "0"), "--payment-ttl-seconds", id="api-payment-ttl"
        ),
        pytest.param(("idp", "--port", "99999"), "--port", id="idp-port"),
        pytest.param(("isp-secret", "--isp", "bad\x01isp"), "--isp", id="secret-control-char"),
        pytest.param(("project", "--name", "../p1"), "--name", id="project-name"),
        pytest.param(("reconcile", "--wait-seconds", "nan"), "--wait-seconds", id="reconcile-nan"),
        pytest.param(("replay", "--schema", "Ledger; DROP"), "--schema", id="replay-schema"),
    ],
)
def test_a_bad_command_line_is_told_what_to_fix_and_sends_nothing(
    stack: StackState, args: tuple[str, ...], fix: str
) -> None:
    assert stack.kafka is not None and stack.postgres is not None
    before = end_offsets(stack.kafka.bootstrap_servers, topics.COMMANDS)
    done = _ledger(*args)
    assert done.returncode == 2, (done.returncode, done.stdout, done.stderr)
    assert "Traceback" not in done.stderr and fix in done.stderr, done.stderr
    assert end_offsets(stack.kafka.bootstrap_servers, topics.COMMANDS) == before
    if args[0] == "isp-access":
        with psycopg.connect(stack.postgres.dsn) as db:
            found = db.execute(
                "SELECT 1 FROM ledger.isp_logins WHERE isp_id = %s", (args[2],)
            ).fetchone()
        assert found is None
