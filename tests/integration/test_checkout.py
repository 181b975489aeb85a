"""The checkout with consent over HTTP on the real stack (issue 14): every refusal of a
confirmation (forged, expired, mismatch, wrong_isp, reused, a cancelled payment, wrong
credentials) is a 4xx page with its reason and puts nothing on ledger.commands; a rotation keeps
the previous secret valid; the refusals are counted by reason."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import quote, urlsplit

import psycopg
import pytest

from ledger.api import assertion
from ledger.api.client import browse, submit
from ledger.kafka import topics
from ledger.stack.state import StackState
from tests.harness import ApiServer, Worker, end_offsets, wait_for


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ApiServer]:
    tmp: Path = tmp_path_factory.mktemp("checkout")
    worker = Worker("checkout-worker", tmp / "worker").start()
    server = ApiServer(tmp, admin_key=f"admin_{uuid.uuid4().hex}")
    try:
        yield server.start()
    finally:
        server.stop()
        worker.stop()


def _open(api: ApiServer, account: str, isp: str) -> None:
    opening = {"account_id": account, "isp_id": isp, "kind": "consumer",
               "command_id": f"o-{account}",
               "occurred_at": (datetime.now(UTC) - timedelta(hours=1)).isoformat()}  # fmt: skip
    wait_for(lambda: api.call("POST", "/v1/admin/accounts", opening, api.admin_key)[0] == 200,
             60, f"{account} opened")  # fmt: skip


def _secret(dsn: str, isp: str) -> bytes:
    """The ISP's current secret, as its identity component reads it (the test forges with it)."""
    with psycopg.connect(dsn) as db:
        row = db.execute("SELECT secret FROM ledger.isp_secrets WHERE isp_id = %s", (isp,))
        found = row.fetchone()
    assert found is not None
    return bytes(found[0])


def _claims(prepared: dict[str, object], **changes: object) -> assertion.Claims:
    now = int(time.time())
    fields = {"isp_id": "", "account_id": "", "user_id": "u1",
              "payment_id": prepared["payment_id"], "publisher_id": "", "amount_cents": 299,
              "nonce": "", "issued_at": now, "expires_at": now + 60} | changes  # fmt: skip
    return assertion.Claims(**fields)  # type: ignore[arg-type]


def _nonce(api: ApiServer, confirm_url: str, isp: str) -> str:
    """The nonce the ledger's page sends the subscriber to their ISP with."""
    shown = browse(confirm_url)
    to_isp = submit(shown, "identify", isp_id=isp)
    return str(to_isp.form("sign-in").fields["nonce"])


@dataclass(frozen=True)
class World:
    """Two ISPs (a, b) with their secrets, a publisher, an account at each, credentials at a."""

    run: str
    isp_a: str
    isp_b: str
    pub: str
    key: str
    account_a: str
    account_b: str
    login: str
    password: str


@pytest.fixture(scope="module")
def world(api: ApiServer, stack: StackState) -> World:
    run = uuid.uuid4().hex[:8]
    admin = api.admin_key
    isp_a, isp_b, pub = f"a-{run}", f"b-{run}", f"pub-{run}"
    for isp, name in ((isp_a, "Orange"), (isp_b, "Club-Internet")):
        body = {"isp_id": isp, "name": name, "billing_day": 1, "commission_bp": 1500}
        assert api.call("POST", "/v1/admin/isps", body, admin)[0] == 201
    status, registered = api.call("POST", "/v1/admin/publishers", {
        "publisher_id": pub, "name": "Canalplay", "category": "vod", "revenue_share_bp": 6000,
        "vat_category": "standard"}, admin)  # fmt: skip
    assert status == 201
    key = str(registered["api_key"])
    account_a, account_b = f"acct-a-{run}", f"acct-b-{run}"
    _open(api, account_a, isp_a)
    _open(api, account_b, isp_b)
    login, password = api.credentials(isp_a, account_a, "u1")
    api.credentials(isp_b, account_b, "u1")
    checkout = api.checkout
    wait_for(lambda: checkout.prepare(key, PAYMENT, f"k0-{run}")[0] == 201, 30, "the key known")

    return World(run, isp_a, isp_b, pub, key, account_a, account_b, login, password)


PAYMENT = {"amount_cents": 299, "category": "vod", "description": "Le Bureau, épisode 1"}


def test_every_refusal_is_a_page_with_its_reason_and_nothing_on_the_log(
    api: ApiServer, stack: StackState, world: World
) -> None:
    assert stack.kafka is not None and stack.postgres is not None
    bootstrap, dsn = stack.kafka.bootstrap_servers, stack.postgres.dsn
    w = world
    run, isp_a, isp_b, pub, key = w.run, w.isp_a, w.isp_b, w.pub, w.key
    account_a, login, password = w.account_a, w.login, w.password
    checkout, payment = api.checkout, PAYMENT
    # One good confirmation, whose assertion is kept.
    _, first = checkout.prepare(key, payment, f"k1-{run}")
    confirmed = checkout.confirm(str(first["confirm_url"]), isp_a, login, password)
    assert confirmed.page.status == 200 and confirmed.outcome["status"] == "authorized"
    decided = end_offsets(bootstrap, topics.COMMANDS)

    def refused(url: str, reason: str, status: int) -> None:
        answer = browse(url)
        assert answer.status == status, (reason, answer.status, answer.body[:500])
        assert answer.page.outcome == {"status": "refused", "reason": reason}, answer.page.outcome
        assert end_offsets(bootstrap, topics.COMMANDS) == decided, f"{reason} wrote a command"

    # reused: the same assertion again.
    refused(confirmed.return_url, "reused", 409)

    _, second = checkout.prepare(key, payment, f"k2-{run}")
    url = str(second["confirm_url"])
    nonce = _nonce(api, url, isp_a)
    base = f"{url}/return?assertion="
    secret_a, secret_b = _secret(dsn, isp_a), _secret(dsn, isp_b)
    good = _claims(second, nonce=nonce, isp_id=isp_a, account_id=account_a, publisher_id=pub)
    # forged: another key, a changed amount under the ISP's signature, junk.
    refused(base + quote(assertion.sign(good, b"x" * 32)), "forged", 403)
    token = assertion.sign(good, secret_a)
    changed = assertion.sign(_claims(second, nonce=nonce, isp_id=isp_a, account_id=account_a,
                                     publisher_id=pub, amount_cents=1), b"y" * 32)  # fmt: skip
    refused(base + quote(changed.split(".")[0] + "." + token.split(".")[1]), "forged", 403)
    refused(base + "not-an-assertion", "forged", 403)
    refused(f"{url}/return", "forged", 403)
    # expired.
    past = int(time.time()) - 300
    stale = _claims(second, nonce=nonce, isp_id=isp_a, account_id=account_a, publisher_id=pub,
                    issued_at=past, expires_at=past + 60)  # fmt: skip
    refused(base + quote(assertion.sign(stale, secret_a)), "expired", 410)
    # mismatch: another amount, publisher, nonce, or payment, signed by the right ISP.
    for name, value in (("amount_cents", 300), ("publisher_id", f"other-{run}"),
                        ("nonce", "n0"), ("payment_id", str(first["payment_id"]))):  # fmt: skip
        bound = {"isp_id": isp_a, "account_id": account_a, "publisher_id": pub, "nonce": nonce}
        other = _claims(second, **(bound | {name: value}))
        refused(base + quote(assertion.sign(other, secret_a)), "mismatch", 409)
    # wrong_isp: ISP b vouches for an account of ISP a, or for an account the ledger never saw.
    for account in (account_a, f"nobody-{run}"):
        foreign = _claims(second, nonce=nonce, isp_id=isp_b, account_id=account, publisher_id=pub)
        refused(base + quote(assertion.sign(foreign, secret_b)), "wrong_isp", 403)
    # A rotation: an assertion signed a moment before it still verifies (the previous secret).
    assert api.call("POST", f"/v1/admin/isps/{isp_a}/secret", {}, api.admin_key)[0] == 201
    assert _secret(dsn, isp_a) != secret_a
    answer = browse(base + quote(token))
    assert answer.status == 200 and answer.page.outcome["status"] == "authorized", answer.body
    _, view = checkout.payment(key, str(second["payment_id"]))
    assert view["status"] == "confirmed" and view["decision"]["status"] == "authorized", view
    decided = end_offsets(bootstrap, topics.COMMANDS)


def test_wrong_credentials_and_another_isp_s_sign_in_are_refused(
    api: ApiServer, world: World
) -> None:
    _, prepared = api.checkout.prepare(world.key, PAYMENT, f"c-{world.run}")
    url = str(prepared["confirm_url"])
    to_isp = submit(browse(url), "identify", isp_id=world.isp_a)
    wrong = submit(to_isp, "sign-in", login=world.login, password="not-the-password")
    assert wrong.status == 401 and wrong.page.outcome["reason"] == "wrong_credentials"
    assert wrong.form("sign-in")  # the form again
    other_isp = submit(submit(browse(url), "identify", isp_id=world.isp_b), "sign-in",
                       login=world.login, password=world.password)  # fmt: skip
    assert other_isp.status == 401  # a's subscriber at b's sign-in page
    assert api.checkout.payment(world.key, str(prepared["payment_id"]))[1]["status"] == "prepared"


def test_cancel_the_language_and_the_metrics(
    api: ApiServer, stack: StackState, world: World
) -> None:
    assert stack.kafka is not None and stack.postgres is not None
    bootstrap, dsn = stack.kafka.bootstrap_servers, stack.postgres.dsn
    w = world
    run, isp_a, pub, key, account_a = w.run, w.isp_a, w.pub, w.key, w.account_a
    checkout, payment = api.checkout, PAYMENT
    decided = end_offsets(bootstrap, topics.COMMANDS)

    def refused(url: str, reason: str, status: int) -> None:
        answer = browse(url)
        assert answer.status == status, (reason, answer.status, answer.body[:500])
        assert answer.page.outcome == {"status": "refused", "reason": reason}, answer.page.outcome
        assert end_offsets(bootstrap, topics.COMMANDS) == decided, f"{reason} wrote a command"

    # Cancel: the page says so, the payment is cancelled, nothing is sent; confirming it after
    # is refused.
    _, third = checkout.prepare(key, payment, f"k3-{run}")
    url = str(third["confirm_url"])
    nonce = _nonce(api, url, isp_a)
    cancelled = checkout.cancel(url)
    assert cancelled.status == 200 and cancelled.page.outcome["status"] == "cancelled"
    assert checkout.payment(key, str(third["payment_id"]))[1]["status"] == "cancelled"
    late = _claims(third, nonce=nonce, isp_id=isp_a, account_id=account_a, publisher_id=pub)
    refused(f"{url}/return?assertion={quote(assertion.sign(late, _secret(dsn, isp_a)))}",
            "payment_cancelled", 409)  # fmt: skip
    assert browse(url).page.outcome["status"] == "cancelled"
    # Unknown payments, and the language of the page.
    assert browse(f"{urlsplit(url).scheme}://{urlsplit(url).netloc}/pay/nope").status == 404
    _, fourth = checkout.prepare(key, payment, f"k4-{run}")
    french = browse(f"{fourth['confirm_url']}?lang=fr").body.decode()
    assert "2,99\u00a0€" in french and 'lang="fr"' in french and "Canalplay" in french
    english = browse(str(fourth["confirm_url"]) + "?lang=en").body.decode()
    assert "€2.99" in english and "Identify and confirm" in english and "Orange" in english
    assert end_offsets(bootstrap, topics.COMMANDS) == decided

    samples = _metrics(api)
    for reason in ("forged", "expired", "mismatch", "wrong_isp", "reused", "payment_cancelled"):
        assert samples.get(f'ledger_api_confirmations_refused_total{{reason="{reason}"}}', 0) > 0
    assert samples["ledger_api_payments_prepared_total"] >= 5
    assert samples["ledger_api_payments_confirmed_total"] >= 2
    assert samples["ledger_api_payments_cancelled_total"] >= 1


def _metrics(api: ApiServer) -> dict[str, float]:
    from prometheus_client.parser import text_string_to_metric_families

    text = browse(f"{api.base}/metrics").body.decode()
    samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = ",".join(f'{k}="{v}"' for k, v in sorted(sample.labels.items()))
            samples[f"{sample.name}{{{labels}}}" if labels else sample.name] = sample.value
    return samples


def test_an_operator_rotates_a_secret_from_the_command_line(
    api: ApiServer, stack: StackState, world: World
) -> None:
    """`ledger isp-secret --isp ID`: a new secret in the database, never printed; the previous
    one still verifies for 10 minutes."""
    import subprocess
    import sys

    from tests.harness import PROJECT_ROOT

    assert stack.postgres is not None
    before = _secret(stack.postgres.dsn, world.isp_b)
    done = subprocess.run(
        [sys.executable, "-m", "ledger.cli", "isp-secret", "--isp", world.isp_b],
        cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    after = _secret(stack.postgres.dsn, world.isp_b)
    assert after != before and len(after) >= 32
    assert after.hex() not in done.stdout and "previous one verifies until" in done.stdout
    with psycopg.connect(stack.postgres.dsn) as db:
        row = db.execute(
            "SELECT previous_secret, previous_valid_until - rotated_at FROM ledger.isp_secrets"
            " WHERE isp_id = %s",
            (world.isp_b,),
        ).fetchone()
    assert row is not None and bytes(row[0]) == before and row[1] == timedelta(minutes=10)
