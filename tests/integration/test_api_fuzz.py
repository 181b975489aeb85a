"""The checkout and admin API fuzzed from its own OpenAPI document (schemathesis), on the real
stack with a real worker: no answer is a 5xx, every answer conforms to the document (status,
content type, body schema), data the document forbids is refused, and a
request the API refuses before the stream (400, 401, 403, 404, 405, 413, 415) writes nothing to
ledger.commands, and what it accepts is decided (no 202 left pending while the worker runs).

Issue 14: a publisher alone cannot charge. With only a publisher's key, whatever it sends to any
route (the payments' pages and the old POST /v1/purchases included, fuzzed), no command reaches
ledger.commands."""

from __future__ import annotations

import random
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from ledger.kafka import topics
from ledger.stack.state import StackState
from tests.fuzz import fuzz
from tests.harness import ApiServer, Worker, end_offsets, wait_for

REFUSED_BEFORE_THE_STREAM = {400, 401, 403, 404, 405, 413, 415}
EXAMPLES_PER_OPERATION = 12


@pytest.fixture(scope="module")
def fuzzed_api(
    stack: StackState, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[ApiServer, str, str]]:
    tmp: Path = tmp_path_factory.mktemp("fuzz")
    worker = Worker("fuzz-worker", tmp / "worker").start()
    server = ApiServer(tmp, admin_key=f"admin_{uuid.uuid4().hex}")
    try:
        server.start()
        run = uuid.uuid4().hex[:8]
        status, registered = server.call("POST", "/v1/admin/publishers", {
            "publisher_id": f"fuzz-{run}", "name": "Fuzz", "category": "vod",
            "revenue_share_bp": 6000, "vat_category": "standard"}, server.admin_key)  # fmt: skip
        assert status == 201, registered
        # The worker is ready when an account opening comes back decided (not 202, pending).
        now = datetime.now(UTC).isoformat()
        opening = {"account_id": f"ready-{run}", "isp_id": f"none-{run}", "kind": "consumer",
                   "command_id": f"ready-{run}", "occurred_at": now}  # fmt: skip
        deadline = time.monotonic() + 180
        while server.call("POST", "/v1/admin/accounts", opening, server.admin_key)[0] == 202:
            assert time.monotonic() < deadline, "the worker never decided the first command"
        yield server, server.admin_key, str(registered["api_key"])
    finally:
        server.stop()
        worker.stop()


def test_no_5xx_and_a_refused_request_changes_nothing(
    fuzzed_api: tuple[ApiServer, str, str], stack: StackState
) -> None:
    server, admin_key, publisher_key = fuzzed_api
    assert stack.kafka is not None
    bootstrap = stack.kafka.bootstrap_servers
    pending: list[str] = []
    offsets: dict[int, dict[int, int]] = {}

    def before(case: Any) -> str:
        offsets[id(case)] = end_offsets(bootstrap, topics.COMMANDS)
        return admin_key if "/admin/" in case.path else publisher_key

    def after(case: Any, response: Any) -> None:
        ahead = offsets.pop(id(case))
        if response.status_code == 202:
            pending.append(f"{case.method} {case.path} {case.path_parameters} {case.body}")
        if response.status_code in REFUSED_BEFORE_THE_STREAM:
            now = end_offsets(bootstrap, topics.COMMANDS)
            assert now == ahead, f"{case.method} {case.path} {response.status_code} wrote"

    seen = fuzz(f"http://127.0.0.1:{server.port}", "/v1/openapi.json", EXAMPLES_PER_OPERATION,
                before, after)  # fmt: skip
    print(f"checkout and admin API fuzzed; answers by status: {dict(sorted(seen.items()))}")
    assert any(400 <= status < 500 for status in seen), seen
    # With the worker up, what the API accepts is decided within its timeout: a 202 here was a
    # command the workers could not read (found by this test: ids from the path went unchecked).
    assert not pending, pending


PUBLISHER_ALONE_EXAMPLES = 8


def test_a_publisher_alone_cannot_charge(
    fuzzed_api: tuple[ApiServer, str, str], stack: StackState
) -> None:
    """The publisher knows an open account at a real ISP with a signing secret, and has a prepared
    payment of its own whose id the fuzzer puts in the payment routes' paths half of the time: no
    request, however formed, with no more than the publisher's key, puts a command on the log."""
    server, admin_key, publisher_key = fuzzed_api
    assert stack.kafka is not None
    bootstrap = stack.kafka.bootstrap_servers
    run = uuid.uuid4().hex[:8]
    isp, account = f"isp-{run}", f"acct-{run}"
    body = {"isp_id": isp, "name": "Orange", "billing_day": 1, "commission_bp": 1500}
    assert server.call("POST", "/v1/admin/isps", body, admin_key)[0] == 201
    opening = {"account_id": account, "isp_id": isp, "kind": "consumer",
               "command_id": f"o-{run}", "occurred_at": datetime.now(UTC).isoformat()}  # fmt: skip
    wait_for(lambda: server.call("POST", "/v1/admin/accounts", opening, admin_key)[0] == 200, 60,
             "the account opened")  # fmt: skip
    server.credentials(isp, account, "u1")
    status, prepared = server.checkout.prepare(
        publisher_key, {"amount_cents": 299, "category": "vod", "description": "x"}, f"p-{run}"
    )
    assert status == 201, prepared
    publisher_id = server.checkout.payment(publisher_key, prepared["payment_id"])[1]
    before = end_offsets(bootstrap, topics.COMMANDS)

    # The old route, with a purchase of that account in due form.
    purchase = {"purchase_id": f"x-{run}", "account_id": account, "user_id": "u1",
                "publisher_id": str(publisher_id.get("publisher_id", "")), "amount_cents": 299,
                "category": "vod", "description": "x",
                "occurred_at": datetime.now(UTC).isoformat()}  # fmt: skip
    status, answer = server.call("POST", "/v1/purchases", purchase, publisher_key)
    assert status == 410 and "/v1/payments" in str(answer), answer
    rnd = random.Random(run)

    def before_case(case: Any) -> str:
        parameters = case.path_parameters or {}
        if "payment_id" in parameters and rnd.random() < 0.5:
            case.path_parameters = {**parameters, "payment_id": prepared["payment_id"]}
        if "account_id" in parameters and rnd.random() < 0.5:
            case.path_parameters = {**case.path_parameters, "account_id": account}
        return publisher_key  # and nothing else

    seen = fuzz(f"http://127.0.0.1:{server.port}", "/v1/openapi.json", PUBLISHER_ALONE_EXAMPLES,
                before_case)  # fmt: skip
    print(f"fuzzed with a publisher's key alone; answers by status: {dict(sorted(seen.items()))}")
    assert end_offsets(bootstrap, topics.COMMANDS) == before, "a publisher alone wrote a command"
    assert 410 in seen and 401 in seen, seen
