"""Held payments through the checkout API on the real stack (issue 14): a publisher prepares a
payment with `capture: "hold"`, the subscriber confirms it with their ISP, and the publisher
captures part of it, voids it, or lets it expire; the API's own timer sends the expiry barrier.
Every refusal is a 4xx with the ledger's reason; a retried capture is the same fact."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from ledger.api.client import browse
from ledger.stack.state import StackState
from tests.harness import ApiServer, Projector, Worker, wait_for

pytestmark = pytest.mark.integration
HOLD_SECONDS = 60  # the shortest hold: the one left alone expires within the test
EXPIRY_TICK_SECONDS = 2


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory, stack: StackState) -> Iterator[ApiServer]:
    tmp: Path = tmp_path_factory.mktemp("checkout-holds")
    worker = Worker("holds-api-worker", tmp / "worker").start()
    projector = Projector("holds-api-projector", tmp).start()
    server = ApiServer(tmp, admin_key=f"admin_{uuid.uuid4().hex}",
                       holds_expiry_seconds=EXPIRY_TICK_SECONDS)  # fmt: skip
    try:
        yield server.start()
    finally:
        server.stop()
        projector.stop()
        worker.stop()


def _publisher(api: ApiServer, publisher_id: str) -> str:
    status, registered = api.call("POST", "/v1/admin/publishers", {
        "publisher_id": publisher_id, "name": "Canalplay", "category": "vod",
        "revenue_share_bp": 6000, "vat_category": "standard"}, api.admin_key)  # fmt: skip
    assert status == 201, registered
    return str(registered["api_key"])


def _decision(api: ApiServer, key: str, payment_id: str, status: str) -> dict[str, Any]:
    """The payment's view once its decision (as projected) has the status wanted."""
    seen: dict[str, Any] = {}

    def decided() -> bool:
        answer, view = api.checkout.payment(key, payment_id)
        seen.update(view)
        return answer == 200 and (view.get("decision") or {}).get("status") == status

    wait_for(decided, 90, f"{payment_id} {status} (last seen: {seen.get('decision')})")
    return seen


@dataclass
class World:
    """An ISP, a subscriber with credentials, a publisher and another; and a hold left alone from
    the start (confirmed at `alone_at`, monotonic), which the API's timer expires."""

    api: ApiServer
    run: str
    isp: str
    key: str
    other_key: str
    login: str
    password: str
    alone: dict[str, Any] | None = None
    alone_at: float = 0.0

    def held(self, amount: int, name: str) -> dict[str, Any]:
        """A payment prepared as a hold and confirmed by the subscriber: reserved."""
        checkout = self.api.checkout
        payment = {"amount_cents": amount, "category": "vod", "description": f"Location {name}",
                   "capture": "hold", "hold_seconds": HOLD_SECONDS}  # fmt: skip
        deadline = time.monotonic() + 30
        while True:  # a publisher just registered is known to the API a moment later
            status, prepared = checkout.prepare(self.key, payment, f"{name}-{self.run}")
            if status != 401 or time.monotonic() > deadline:
                break
            time.sleep(0.25)
        assert status == 201 and prepared["capture"] == "hold", prepared
        assert prepared["hold_seconds"] == HOLD_SECONDS
        confirmed = checkout.confirm(str(prepared["confirm_url"]), self.isp, self.login,
                                     self.password)  # fmt: skip
        assert confirmed.page.status == 200, confirmed.page.body[:500]
        assert confirmed.outcome["status"] == "reserved", confirmed.outcome
        assert "reserved until the publisher charges it" in confirmed.page.body.decode()
        return prepared


@pytest.fixture(scope="module")
def world(api: ApiServer) -> World:
    run = uuid.uuid4().hex[:8]
    isp, account = f"h-{run}", f"acct-h-{run}"
    body = {"isp_id": isp, "name": "Free", "billing_day": 1, "commission_bp": 1500}
    assert api.call("POST", "/v1/admin/isps", body, api.admin_key)[0] == 201
    key, other_key = _publisher(api, f"pub-{run}"), _publisher(api, f"other-{run}")
    opening = {"account_id": account, "isp_id": isp, "kind": "consumer",
               "command_id": f"o-{account}",
               "occurred_at": (datetime.now(UTC) - timedelta(hours=1)).isoformat()}  # fmt: skip
    wait_for(lambda: api.call("POST", "/v1/admin/accounts", opening, api.admin_key)[0] == 200,
             60, f"{account} opened")  # fmt: skip
    login, password = api.credentials(isp, account, "u1")
    found = World(api, run, isp, key, other_key, login, password)
    # Left alone from the start: the API's timer expires it about a minute later (last test).
    found.alone, found.alone_at = found.held(400, "alone"), time.monotonic()
    return found


def test_a_partial_capture_is_billed_and_a_retry_is_the_same_fact(world: World) -> None:
    checkout, key, api = world.api.checkout, world.key, world.api
    first = world.held(500, "first")
    first_id = str(first["payment_id"])
    reserved = _decision(api, key, first_id, "reserved")["decision"]
    assert (reserved["amount_held_cents"], reserved["amount_captured_cents"]) == (500, None)
    status, captured = checkout.capture(key, first_id, 300)
    assert status == 200 and captured["status"] == "captured", captured
    purchase = captured["purchase"]
    assert (purchase["purchase_id"], purchase["amount_cents"]) == (first_id, 300)
    assert purchase["status"] == "authorized"
    assert checkout.capture(key, first_id, 300) == (200, captured)  # a retry: the same fact
    # Another capture, or a void after it, refused with the ledger's reason.
    status, again = checkout.capture(key, first_id, 200)
    assert (status, again["reason"]) == (409, "reservation_captured"), again
    status, late_void = checkout.void(key, first_id)
    assert (status, late_void["reason"]) == (409, "reservation_captured"), late_void
    done = _decision(api, key, first_id, "captured")["decision"]
    assert (done["amount_held_cents"], done["amount_captured_cents"]) == (500, 300)
    assert browse(str(first["confirm_url"])).page.outcome["status"] == "captured"


def test_a_void_releases_the_hold_and_a_capture_after_it_is_refused(world: World) -> None:
    checkout, key = world.api.checkout, world.key
    second_id = str(world.held(250, "second")["payment_id"])
    assert checkout.void(key, second_id) == (200, {"status": "voided", "released_cents": 250})
    status, refused = checkout.capture(key, second_id)
    assert (status, refused["reason"]) == (409, "reservation_voided"), refused
    _decision(world.api, key, second_id, "voided")


def test_what_cannot_be_captured_or_voided_is_a_4xx(world: World) -> None:
    checkout, key, run = world.api.checkout, world.key, world.run
    third_id = str(world.held(100, "third")["payment_id"])
    status, above = checkout.capture(key, third_id, 101)
    assert (status, above["reason"]) == (422, "capture_exceeds_hold"), above
    assert checkout.capture(world.other_key, third_id)[0] == 404
    assert checkout.void(world.other_key, third_id)[0] == 404
    assert checkout.capture(key, f"nope-{run}")[0] == 404
    status, bad = checkout.call("POST", f"/v1/payments/{third_id}/capture", {"amount_cents": 0},
                                key)  # fmt: skip
    assert status == 422 and bad["error"]["code"] == "invalid_body", bad
    immediate = {"amount_cents": 100, "category": "vod", "description": "Film"}
    _, now_paid = checkout.prepare(key, immediate, f"immediate-{run}")
    status, not_held = checkout.capture(key, str(now_paid["payment_id"]))
    assert (status, not_held["error"]["code"]) == (409, "not_held"), not_held
    status, unconfirmed = checkout.prepare(key, {**immediate, "capture": "hold"}, f"u-{run}")
    assert status == 201
    status, not_confirmed = checkout.void(key, str(unconfirmed["payment_id"]))
    assert (status, not_confirmed["error"]["code"]) == (409, "payment_prepared"), not_confirmed
    status, mixed = checkout.prepare(key, {**immediate, "hold_seconds": 60}, f"m-{run}")
    assert status == 422 and "hold_seconds" in mixed["error"]["message"], mixed


def test_a_hold_left_alone_expires_by_the_apis_timer(world: World) -> None:
    """Last: the hold confirmed when the module started expires by the API's own barrier, in its
    time; a capture after it is refused."""
    assert world.alone is not None
    time.sleep(max(0.0, HOLD_SECONDS + 5 - (time.monotonic() - world.alone_at)))
    alone_id = str(world.alone["payment_id"])
    expired = _decision(world.api, world.key, alone_id, "expired")["decision"]
    assert expired["finished_at"] is not None and expired["amount_captured_cents"] is None
    status, too_late = world.api.checkout.capture(world.key, alone_id)
    assert (status, too_late["reason"]) == (409, "reservation_expired"), too_late
