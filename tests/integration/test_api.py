"""The checkout and admin APIs on the real stack: decisions come back through the stream,
publishers are authenticated and isolated, and invalid requests change nothing."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator, Mapping
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from ledger import topics
from ledger.stack.state import StackState
from tests.harness import ApiServer, Worker, end_offsets


@pytest.fixture
def api(tmp_path: Path) -> Iterator[ApiServer]:
    worker = Worker("api-worker", tmp_path / "worker").start()
    server = ApiServer(tmp_path, admin_key=f"admin_{uuid.uuid4().hex}")
    try:
        yield server.start()
    finally:
        server.stop()
        worker.stop()


def _until_decided(
    api: ApiServer, path: str, body: Mapping[str, object], key: str, method: str = "POST"
) -> tuple[int, dict[str, object]]:
    """Send again while pending (202) or while the API has not yet read the new key (401)."""
    for _ in range(60):
        status, answer = api.call(method, path, body, key)
        if status not in (202, 401):
            return status, answer
        time.sleep(0.5)
    return status, answer


def _now(minutes: float = 0) -> str:
    return (datetime.now(UTC) - timedelta(minutes=minutes)).isoformat()


def test_checkout_through_the_stream(api: ApiServer, stack: StackState) -> None:
    assert stack.kafka is not None
    run = uuid.uuid4().hex[:8]
    admin = api.admin_key
    isp, pub, other, account = f"isp-{run}", f"pub-{run}", f"other-{run}", f"acct-{run}"
    status, _ = api.call(
        "POST",
        "/v1/admin/isps",
        {"isp_id": isp, "name": "Orange", "billing_day": 1, "commission_bp": 1500},
        admin,
    )
    assert status == 201
    status, registered = api.call("POST", "/v1/admin/publishers", {
        "publisher_id": pub, "name": "Canalplay", "category": "vod", "revenue_share_bp": 6000,
        "vat_category": "standard"}, admin)  # fmt: skip
    assert status == 201
    key = str(registered["api_key"])
    assert "api_key_sha256" in registered and key.startswith("pub_")
    _, other_registered = api.call("POST", "/v1/admin/publishers", {
        "publisher_id": other, "name": "Ina", "category": "video_archive", "revenue_share_bp": 5000,
        "vat_category": "standard"}, admin)  # fmt: skip
    other_key = str(other_registered["api_key"])
    # The same command id each time: a pending answer is resolved by sending it again.
    opening = {
        "account_id": account,
        "isp_id": isp,
        "kind": "consumer",
        "command_id": f"o-{run}",
        "occurred_at": _now(5),
    }
    status, opened = _until_decided(api, "/v1/admin/accounts", opening, admin)
    assert status == 200 and opened["type"] == "account.opened.v1", opened

    purchase = {"purchase_id": f"p-{run}", "account_id": account, "user_id": "u1",
                "publisher_id": pub, "amount_cents": 266, "category": "vod",
                "description": "La Haine", "occurred_at": _now(1)}  # fmt: skip
    status, decision = _until_decided(api, "/v1/purchases", purchase, key)
    assert status == 200, decision
    assert decision["status"] == "authorized" and decision["net_cents"] == 222
    again = api.call("POST", "/v1/purchases", purchase, key)
    assert again == (200, decision)  # the same request, the same answer
    status, conflict = api.call("POST", "/v1/purchases", {**purchase, "amount_cents": 267}, key)
    assert status == 409 and conflict["reason"] == "duplicate_with_different_body"

    status, rejected = api.call(
        "POST",
        "/v1/purchases",
        {**purchase, "purchase_id": f"big-{run}", "amount_cents": 1_501},
        key,
    )
    assert status == 402 and rejected["reason"] == "amount_above_maximum"

    status, fetched = api.call("GET", f"/v1/purchases/p-{run}", key=key)
    assert status == 200 and fetched["status"] == "authorized"
    assert api.call("GET", f"/v1/purchases/p-{run}", key=other_key)[0] == 404
    status, refunded = api.call("POST", f"/v1/purchases/p-{run}/refunds", {
        "refund_id": f"r-{run}", "amount_cents": 100, "reason": "stream broke",
        "occurred_at": _now()}, key)  # fmt: skip
    assert status == 200 and refunded["type"] == "purchase.refunded.v1", refunded
    status, over = api.call("POST", f"/v1/purchases/p-{run}/refunds", {
        "refund_id": f"r2-{run}", "amount_cents": 500, "reason": "again",
        "occurred_at": _now()}, key)  # fmt: skip
    assert status == 422 and over["reason"] == "refund_exceeds_purchase"


def test_bad_requests_change_nothing(api: ApiServer, stack: StackState) -> None:
    assert stack.kafka is not None
    before = end_offsets(stack.kafka.bootstrap_servers, topics.COMMANDS)
    purchase = {
        "purchase_id": "x1",
        "account_id": "a1",
        "user_id": "u1",
        "publisher_id": "p1",
        "amount_cents": 266,
        "category": "vod",
        "description": "x",
        "occurred_at": _now(),
    }
    assert api.call("POST", "/v1/purchases", purchase)[0] == 401
    status, error = api.call("POST", "/v1/purchases", purchase, "pub_not-a-key")
    assert status == 401 and error["error"]["code"] == "unauthenticated"  # type: ignore[index]
    status, error = api.call("POST", "/v1/admin/accounts", {"account_id": "a"}, "wrong")
    assert status == 401
    status, error = api.call(
        "POST", "/v1/admin/accounts", {"account_id": "a", "isp_id": "i"}, api.admin_key
    )
    assert status == 422 and "kind" in error["error"]["message"]  # type: ignore[index]
    status, error = api.call("POST", "/v1/admin/accounts", b"{not json", api.admin_key)
    assert status == 422
    status, _ = api.call(
        "POST",
        "/v1/admin/isps",
        {"isp_id": "i", "name": "n", "billing_day": 31, "commission_bp": 1},
        api.admin_key,
    )
    assert status == 422
    status, doc = api.call("GET", "/v1/openapi.json")
    assert status == 200 and "/v1/purchases" in doc["paths"]  # type: ignore[operator]
    assert end_offsets(stack.kafka.bootstrap_servers, topics.COMMANDS) == before


def _setup(
    api: ApiServer, run: str, kind: str = "consumer", opened_minutes: float = 120
) -> tuple[str, str, str]:
    """An ISP, a publisher (its key) and an open account of this kind: (isp, publisher key,
    account)."""
    admin = api.admin_key
    isp, pub, account = f"isp-{run}", f"pub-{run}", f"acct-{run}"
    body = {"isp_id": isp, "name": "Orange", "billing_day": 1, "commission_bp": 1500}
    assert api.call("POST", "/v1/admin/isps", body, admin)[0] == 201
    status, registered = api.call("POST", "/v1/admin/publishers", {
        "publisher_id": pub, "name": "Canalplay", "category": "vod", "revenue_share_bp": 6000,
        "vat_category": "standard"}, admin)  # fmt: skip
    assert status == 201, registered
    opening = {"account_id": account, "isp_id": isp, "kind": kind, "command_id": f"o-{run}",
               "occurred_at": _now(opened_minutes)}  # fmt: skip
    if kind == "enterprise":
        opening["company_name"] = "Probe SARL"
    status, opened = _until_decided(api, "/v1/admin/accounts", opening, admin)
    assert status == 200 and opened["type"] == "account.opened.v1", opened
    return isp, str(registered["api_key"]), account


def test_a_revocation_carries_its_time_and_command_id(api: ApiServer, stack: StackState) -> None:
    """Issue 12, part 4: DELETE .../employees/{user} took no body and stamped the wall clock."""
    assert stack.kafka is not None
    run = uuid.uuid4().hex[:8]
    _, key, account = _setup(api, run, kind="enterprise")
    employees = f"/v1/admin/accounts/{account}/employees"
    granted = {"user_id": "u1", "command_id": f"g-{run}", "occurred_at": _now(90)}
    status, fact = _until_decided(api, employees, granted, api.admin_key)
    assert status == 200 and fact["type"] == "employee.authorised.v1", fact

    took_effect = datetime.now(UTC) - timedelta(minutes=30)
    revocation = {"command_id": f"rv-{run}", "occurred_at": took_effect.isoformat()}
    status, revoked = _until_decided(api, f"{employees}/u1", revocation, api.admin_key, "DELETE")
    assert status == 200 and revoked["type"] == "employee.revoked.v1", revoked
    assert datetime.fromisoformat(str(revoked["occurred_at"])) == took_effect
    assert revoked["command_id"] == f"rv-{run}"
    # The same command again is the same fact (a safe resend after a timeout).
    assert _until_decided(api, f"{employees}/u1", revocation, api.admin_key, "DELETE") == (
        200, revoked)  # fmt: skip

    # Decided at their own time: before the revocation the employee could buy, after it not.
    purchase = {"account_id": account, "user_id": "u1", "publisher_id": f"pub-{run}",
                "amount_cents": 266, "category": "vod", "description": "La Haine"}  # fmt: skip
    before = {**purchase, "purchase_id": f"b-{run}", "occurred_at": _now(40)}
    status, decision = _until_decided(api, "/v1/purchases", before, key)
    assert status == 200, decision
    after = {**purchase, "purchase_id": f"a-{run}", "occurred_at": _now(10)}
    status, decision = _until_decided(api, "/v1/purchases", after, key)
    assert status == 402 and decision["reason"] == "employee_not_authorised", decision

    # Without a body it still works: now, under a new command id.
    status, again = _until_decided(api, f"{employees}/u1", {}, api.admin_key, "DELETE")
    assert status in (200, 422) and again["command_id"] != f"rv-{run}", again
    status, error = api.call("DELETE", f"{employees}/u1", {"occurred_at": "yesterday"},
                             api.admin_key)  # fmt: skip
    assert status == 422 and "occurred_at" in error["error"]["message"], error  # type: ignore[index]
