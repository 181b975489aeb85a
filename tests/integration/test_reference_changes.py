"""Reference data in the command order (issue 15), on the real stack: a publisher's share changed
and the publisher blocked mid-stream through the admin API's PUT routes, effective at given
times; the workers decide every later command with the values in force at its time, the change
is a fact of each partition, and the publisher's key is kept."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from ledger.kafka import topics
from ledger.stack.state import StackState
from schemas import codec
from schemas.facts import PurchaseAuthorized, PurchaseRejected, ReferenceChanged
from tests import builders as b
from tests.harness import ApiServer, Record, Worker, end_offsets, produce, read_until


@pytest.fixture
def api(tmp_path: Path) -> Iterator[ApiServer]:
    worker = Worker("reference-worker", tmp_path / "worker").start()
    server = ApiServer(tmp_path, admin_key=f"admin_{uuid.uuid4().hex}")
    try:
        yield server.start()
    finally:
        server.stop()
        worker.stop()


def _until_decided(api: ApiServer, path: str, body: dict[str, object]) -> dict[str, object]:
    for _ in range(120):
        status, answer = api.call("POST", path, body, api.admin_key)
        if status not in (202, 401):
            assert status == 200, answer
            return answer
        time.sleep(0.5)
    raise AssertionError(f"{path} never decided")


def _refused_changes_write_nothing(
    api: ApiServer, bootstrap: str, pub: str, key: str, now: datetime
) -> None:
    """What the API refuses changes nothing on the log."""
    admin, run = api.admin_key, pub.removeprefix("pub-")
    before = end_offsets(bootstrap, topics.COMMANDS)
    path = f"/v1/admin/publishers/{pub}"
    past = {"revenue_share_bp": 5000, "effective_at": (now - timedelta(hours=1)).isoformat()}
    status, refused = api.call("PUT", path, past, admin)
    assert status == 422 and "past" in str(refused), refused
    assert api.call("PUT", path, {"effective_at": "tomorrow"}, admin)[0] == 422
    assert api.call("PUT", path, {"revenue_share_bp": 9000}, admin)[0] == 422  # above 70 %
    assert api.call("PUT", f"/v1/admin/publishers/none-{run}", {"blocked": True}, admin)[0] == 404
    assert api.call("PUT", path, {"blocked": True}, key)[0] == 401  # the admin's key only
    assert end_offsets(bootstrap, topics.COMMANDS) == before


def _outcomes(
    bootstrap: str, start: dict[int, int], wanted: set[str]
) -> tuple[dict[int, int | str], dict[int, int]]:
    """Each purchase's share (or rejection) and commission, by the minute in its id."""

    def decided(records: list[Record]) -> bool:
        found = {getattr(codec.decode_fact(r.value), "purchase_id", None) for r in records}
        return wanted <= found

    records = read_until(bootstrap, topics.EVENTS, start, decided, 120)
    outcome: dict[int, int | str] = {}
    commissions: dict[int, int] = {}
    for fact in (codec.decode_fact(r.value) for r in records):
        if isinstance(fact, PurchaseAuthorized) and fact.purchase_id in wanted:
            minute = int(fact.purchase_id[1:].split("-")[0])
            outcome[minute] = fact.revenue_share_bp
            commissions[minute] = fact.commission_bp
        elif isinstance(fact, PurchaseRejected) and fact.purchase_id in wanted:
            outcome[int(fact.purchase_id[1:].split("-")[0])] = fact.reason
    return outcome, commissions


def test_a_share_change_and_a_block_mid_stream_through_the_api(
    api: ApiServer, stack: StackState
) -> None:
    assert stack.kafka is not None
    bootstrap, partitions = stack.kafka.bootstrap_servers, stack.topic_partitions or 4
    run = uuid.uuid4().hex[:8]
    isp, pub, account = f"isp-{run}", f"pub-{run}", f"acct-{run}"
    admin = api.admin_key
    body = {"isp_id": isp, "name": "Orange", "billing_day": 1, "commission_bp": 1500}
    assert api.call("POST", "/v1/admin/isps", body, admin)[0] == 201
    status, registered = api.call("POST", "/v1/admin/publishers", {
        "publisher_id": pub, "name": "Canalplay", "category": "vod", "revenue_share_bp": 6000,
        "vat_category": "standard"}, admin)  # fmt: skip
    assert status == 201, registered
    key = str(registered["api_key"])
    now = datetime.now(UTC)
    _until_decided(api, "/v1/admin/accounts", {
        "account_id": account, "isp_id": isp, "kind": "consumer", "command_id": f"o-{run}",
        "occurred_at": now.isoformat()})  # fmt: skip

    _refused_changes_write_nothing(api, bootstrap, pub, key, now)
    path = f"/v1/admin/publishers/{pub}"

    # 60 % until now + 10 min, then 50 %; blocked from now + 30 min.
    changes_start = end_offsets(bootstrap, topics.EVENTS)
    share_at, block_at = now + timedelta(minutes=10), now + timedelta(minutes=30)
    status, changed = api.call(
        "PUT", path, {"revenue_share_bp": 5000, "effective_at": share_at.isoformat()}, admin
    )
    assert status == 200, changed
    assert changed["api_key_sha256"] == registered["api_key_sha256"]  # the key is kept
    assert changed["name"] == "Canalplay" and changed["revenue_share_bp"] == 5000
    status, blocked = api.call(
        "PUT", path, {"blocked": True, "effective_at": block_at.isoformat()}, admin
    )
    assert status == 200 and blocked["revenue_share_bp"] == 5000, blocked  # the share kept
    # The ISP's commission: 15 % until now + 20 min, then 10 %.
    commission_at = now + timedelta(minutes=20)
    status, isp_changed = api.call("PUT", f"/v1/admin/isps/{isp}", {
        "commission_bp": 1000, "effective_at": commission_at.isoformat()}, admin)  # fmt: skip
    assert status == 200 and isp_changed["billing_day"] == 1, isp_changed

    # Purchases of a trusted feed, sent after the changes, dated around them; the last but one
    # is dated before the first change but comes after every other purchase.
    dated = [5, 15, 25, 40, 7]
    purchases = [
        b.purchase(account, 266, now + timedelta(minutes=m), purchase_id=f"p{m}-{run}",
                   publisher_id=pub)
        for m in dated
    ]  # fmt: skip
    start = end_offsets(bootstrap, topics.EVENTS)
    produce(bootstrap, partitions, [], purchases)
    wanted = {p.purchase_id for p in purchases}

    outcome, commissions = _outcomes(bootstrap, start, wanted)
    assert outcome == {5: 6000, 15: 5000, 25: 5000, 40: "publisher_blocked", 7: 6000}, outcome
    assert commissions == {5: 1500, 15: 1500, 25: 1000, 7: 1500}, commissions

    # Each change is a fact of every partition, effective when the API said.
    def mine(records: list[Record]) -> list[ReferenceChanged]:
        facts = (codec.decode_fact(r.value) for r in records if b"reference.changed" in r.value)
        return [f for f in facts if isinstance(f, ReferenceChanged)
                and getattr(f.record, "effective_at", None) is not None
                and getattr(f.record, "publisher_id", "") == pub]  # fmt: skip

    changes = read_until(bootstrap, topics.EVENTS, changes_start,
                         lambda rs: len(mine(rs)) >= 2 * partitions, 60)  # fmt: skip
    effective = {(f.effective_at, f.partition) for f in mine(changes)}
    for when in (share_at, block_at):
        assert {p for at, p in effective if at == when} == set(range(partitions)), effective

    # The publisher's key still works after the change (a payment prepared, a purchase read).
    assert api.call("GET", f"/v1/purchases/p5-{run}", key=key)[0] == 200
    status, prepared = api.checkout.prepare(
        key, {"amount_cents": 266, "category": "vod", "description": "x"}, f"k-{run}"
    )
    assert status == 201, prepared
