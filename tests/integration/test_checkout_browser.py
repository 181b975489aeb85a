"""The checkout with consent in a real browser (issue 14): headless Chromium from Debian's
packages driven by Selenium through chromedriver, on the real stack. A subscriber identifies with
their ISP, sees the price, confirms, and the purchase is authorised on ledger.events; cancels;
types a wrong password; finds an expired page; and an assertion used twice is refused.

Chromium and chromium-driver are installed with apt-get when missing (as root, as the stack
installs PostgreSQL: ledger.stack.apt), so a fresh machine runs these tests too."""

from __future__ import annotations

import shutil
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from ledger.kafka import topics
from ledger.stack import apt
from ledger.stack.state import StackState
from schemas import codec
from schemas.facts import PurchaseAuthorized
from tests.harness import ApiServer, Worker, end_offsets, read_until, wait_for

PAGE_SECONDS = 30
SHORT_TTL_SECONDS = 3  # the expired page's API: its payments expire after 3 s, not 15 min


def _browser_binaries() -> tuple[str, str]:
    for package, binary in (("chromium", "chromium"), ("chromium-driver", "chromedriver")):
        if shutil.which(binary) is None:
            apt.install(package, f"{binary} (the browser tests)")
    chromium, driver = shutil.which("chromium"), shutil.which("chromedriver")
    assert chromium is not None and driver is not None
    return chromium, driver


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    chromium, driver_path = _browser_binaries()
    options = Options()
    options.binary_location = chromium
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage",
                     "--disable-gpu", "--window-size=412,915"):  # a phone's screen  # fmt: skip
        options.add_argument(argument)
    options.add_experimental_option("prefs", {"intl.accept_languages": "fr-FR,fr"})
    driver = webdriver.Chrome(service=Service(driver_path), options=options)
    driver.set_page_load_timeout(PAGE_SECONDS)
    driver.implicitly_wait(5)  # an element of a page still loading after a click
    try:
        yield driver
    finally:
        driver.quit()


@pytest.fixture(scope="module")
def servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ApiServer, ApiServer]]:
    """The checkout API (and its idp), and a second one whose payments expire after 3 s."""
    tmp: Path = tmp_path_factory.mktemp("browser")
    worker = Worker("browser-worker", tmp / "worker").start()
    admin = f"admin_{uuid.uuid4().hex}"
    (tmp / "short").mkdir()
    api = ApiServer(tmp, admin_key=admin)
    short = ApiServer(tmp / "short", admin_key=admin, payment_ttl_seconds=SHORT_TTL_SECONDS)
    try:
        yield api.start(), short.start()
    finally:
        short.stop()
        api.stop()
        worker.stop()


@dataclass(frozen=True)
class Shop:
    isp: str
    key: str
    consumer: str
    company: str
    login: str
    password: str
    employee_login: str
    employee_password: str


@pytest.fixture(scope="module")
def shop(servers: tuple[ApiServer, ApiServer]) -> Shop:
    api, _ = servers
    run, admin = uuid.uuid4().hex[:8], api.admin_key
    isp = f"orange-{run}"
    body = {"isp_id": isp, "name": "Orange", "billing_day": 1, "commission_bp": 1500}
    assert api.call("POST", "/v1/admin/isps", body, admin)[0] == 201
    status, registered = api.call("POST", "/v1/admin/publishers", {
        "publisher_id": f"canal-{run}", "name": "Canalplay", "category": "vod",
        "revenue_share_bp": 6000, "vat_category": "standard"}, admin)  # fmt: skip
    assert status == 201
    earlier = (datetime.now(UTC) - timedelta(hours=1)).isoformat()
    consumer, company = f"acct-{run}", f"corp-{run}"
    for account, kind in ((consumer, "consumer"), (company, "enterprise")):
        opening = {"account_id": account, "isp_id": isp, "kind": kind, "command_id": f"o-{account}",
                   "occurred_at": earlier, "company_name": "Probe SARL" if kind == "enterprise"
                   else None}  # fmt: skip

        def opened(body: Any = opening) -> bool:
            return api.call("POST", "/v1/admin/accounts", body, admin)[0] == 200

        wait_for(opened, 60, f"{account} opened")
    grant = {"user_id": "alice", "command_id": f"g-{run}", "occurred_at": earlier}
    path = f"/v1/admin/accounts/{company}/employees"
    wait_for(lambda: api.call("POST", path, grant, admin)[0] == 200, 60, "alice authorised")
    login, password = api.credentials(isp, consumer, "u1")
    employee_login, employee_password = api.credentials(isp, company, "alice")
    key = str(registered["api_key"])
    wait_for(lambda: api.checkout.prepare(key, PAYMENT, f"warm-{run}")[0] == 201, 30, "the key")
    return Shop(isp, key, consumer, company, login, password, employee_login, employee_password)


PAYMENT = {"amount_cents": 299, "category": "vod", "description": "La Haine (1995)"}


def _prepare(api: ApiServer, shop: Shop, amount_cents: int = 299) -> dict[str, Any]:
    status, prepared = api.checkout.prepare(
        shop.key, {**PAYMENT, "amount_cents": amount_cents}, f"k-{uuid.uuid4().hex}"
    )
    assert status == 201, prepared
    return prepared


def _text(driver: Any, element_id: str) -> str:
    from selenium.webdriver.common.by import By

    return str(driver.find_element(By.ID, element_id).text)


def _outcome(driver: Any) -> dict[str, str]:
    from selenium.webdriver.common.by import By

    element = driver.find_element(By.ID, "outcome")
    return {"status": element.get_attribute("data-status"),
            "reason": element.get_attribute("data-reason")}  # fmt: skip


def _settled(driver: Any, *statuses: str) -> dict[str, str]:
    """The outcome of the page once it is one of `statuses`: after a click the browser may still
    show the page before (or none, while it loads), whose elements go stale."""
    from selenium.common.exceptions import WebDriverException

    seen: dict[str, str] = {}

    def probe() -> bool:
        try:
            seen.update(_outcome(driver))
        except WebDriverException:
            return False
        return seen.get("status") in statuses

    wait_for(probe, PAGE_SECONDS, f"a page whose outcome is {statuses}")
    return dict(seen)


def _click(driver: Any, element_id: str) -> None:
    from selenium.webdriver.common.by import By

    driver.find_element(By.ID, element_id).click()


def _identify(driver: Any, shop: Shop, login: str, password: str) -> None:
    """On the ledger's page: pick the ISP, go there, sign in."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    Select(driver.find_element(By.ID, "isp_id")).select_by_value(shop.isp)
    _click(driver, "identify")
    driver.find_element(By.ID, "login").send_keys(login)
    driver.find_element(By.ID, "password").send_keys(password)
    _click(driver, "sign-in")


def _facts_of(stack: StackState, start: dict[int, int], purchase_id: str) -> PurchaseAuthorized:
    assert stack.kafka is not None

    def found(records: list[Any]) -> bool:
        return any(r.key is not None and purchase_id.encode() in r.value for r in records)

    records = read_until(stack.kafka.bootstrap_servers, topics.EVENTS, start, found, 60)
    for record in records:
        if purchase_id.encode() in record.value:
            fact = codec.decode_fact(record.value)
            assert isinstance(fact, PurchaseAuthorized), fact
            return fact
    raise AssertionError(f"no fact of {purchase_id} on {topics.EVENTS}")


def test_identify_see_the_price_confirm_and_the_purchase_is_on_the_stream(
    browser: Any, servers: tuple[ApiServer, ApiServer], shop: Shop, stack: StackState
) -> None:
    assert stack.kafka is not None
    api, _ = servers
    events = end_offsets(stack.kafka.bootstrap_servers, topics.EVENTS)
    prepared = _prepare(api, shop)
    browser.get(prepared["confirm_url"])  # the browser asks for French
    assert browser.find_element("css selector", "html").get_attribute("lang") == "fr"
    assert _text(browser, "price") == "2,99 €" and _text(browser, "publisher") == "Canalplay"
    assert _text(browser, "description") == "La Haine (1995)"
    source = browser.page_source
    assert "<script" not in source and 'name="viewport"' in source
    _identify(browser, shop, shop.login, shop.password)
    _settled(browser, "signed_in")
    assert _text(browser, "price") == "2,99 €"  # the ISP shows the payment again
    _click(browser, "confirm")
    assert _settled(browser, "authorized", "rejected", "refused") == {
        "status": "authorized", "reason": ""}  # fmt: skip
    assert "Paiement accepté" in browser.title and _text(browser, "isp") == "Orange"
    fact = _facts_of(stack, events, prepared["payment_id"])
    assert fact.account_id == shop.consumer and fact.user_id == "u1"
    assert fact.amount_cents == 299 and fact.publisher_id.startswith("canal-")
    # The platform's time: the confirmation's, a moment ago.
    assert abs((datetime.now(UTC) - fact.occurred_at).total_seconds()) < 60

    # Internet Plus Pro, in English: the company and the employee once identified.
    prepared = _prepare(api, shop, 1_000)
    browser.get(f"{prepared['confirm_url']}?lang=en")
    assert _text(browser, "price") == "€10.00"
    _identify(browser, shop, shop.employee_login, shop.employee_password)
    _settled(browser, "signed_in")
    _click(browser, "confirm")
    assert _settled(browser, "authorized", "rejected", "refused")["status"] == "authorized"
    assert _text(browser, "company") == "Probe SARL" and _text(browser, "employee") == "alice"
    assert "Payment authorised" in browser.title


def test_cancel(
    browser: Any, servers: tuple[ApiServer, ApiServer], shop: Shop, stack: StackState
) -> None:
    assert stack.kafka is not None
    api, _ = servers
    before = end_offsets(stack.kafka.bootstrap_servers, topics.COMMANDS)
    prepared = _prepare(api, shop)
    browser.get(f"{prepared['confirm_url']}?lang=en")
    _click(browser, "cancel")
    _settled(browser, "cancelled")
    assert "cancelled" in browser.title
    status, view = api.checkout.payment(shop.key, prepared["payment_id"])
    assert status == 200 and view["status"] == "cancelled" and view["decision"] is None
    browser.get(prepared["confirm_url"])
    assert _outcome(browser)["status"] == "cancelled"  # and it stays so
    assert end_offsets(stack.kafka.bootstrap_servers, topics.COMMANDS) == before


def test_wrong_credentials(
    browser: Any, servers: tuple[ApiServer, ApiServer], shop: Shop, stack: StackState
) -> None:
    assert stack.kafka is not None
    api, _ = servers
    before = end_offsets(stack.kafka.bootstrap_servers, topics.COMMANDS)
    prepared = _prepare(api, shop)
    browser.get(f"{prepared['confirm_url']}?lang=en")
    _identify(browser, shop, shop.login, "not-my-password")
    assert _settled(browser, "refused") == {"status": "refused", "reason": "wrong_credentials"}
    assert _text(browser, "error") == "Wrong login or password."
    # The form again: the right password then works.
    from selenium.webdriver.common.by import By

    browser.find_element(By.ID, "login").send_keys(shop.login)
    browser.find_element(By.ID, "password").send_keys(shop.password)
    _click(browser, "sign-in")
    _settled(browser, "signed_in")
    assert end_offsets(stack.kafka.bootstrap_servers, topics.COMMANDS) == before
    assert api.checkout.payment(shop.key, prepared["payment_id"])[1]["status"] == "prepared"


def test_an_expired_page(
    browser: Any, servers: tuple[ApiServer, ApiServer], shop: Shop, stack: StackState
) -> None:
    assert stack.kafka is not None
    _, short = servers
    before = end_offsets(stack.kafka.bootstrap_servers, topics.COMMANDS)
    prepared = _prepare(short, shop)
    browser.get(f"{prepared['confirm_url']}?lang=en")
    assert _outcome(browser)["status"] == "prepared"
    time.sleep(SHORT_TTL_SECONDS + 1)  # the subscriber leaves the page open
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    Select(browser.find_element(By.ID, "isp_id")).select_by_value(shop.isp)
    _click(browser, "identify")
    assert _settled(browser, "refused") == {"status": "refused", "reason": "payment_expired"}
    assert _text(browser, "reason") == "payment expired"
    browser.get(prepared["confirm_url"])
    assert _outcome(browser) == {"status": "refused", "reason": "payment_expired"}
    assert "expiré" in browser.title
    assert short.checkout.payment(shop.key, prepared["payment_id"])[1]["status"] == "expired"
    assert end_offsets(stack.kafka.bootstrap_servers, topics.COMMANDS) == before


def test_a_reused_assertion(
    browser: Any, servers: tuple[ApiServer, ApiServer], shop: Shop, stack: StackState
) -> None:
    assert stack.kafka is not None
    api, _ = servers
    prepared = _prepare(api, shop)
    browser.get(f"{prepared['confirm_url']}?lang=en")
    _identify(browser, shop, shop.login, shop.password)
    _settled(browser, "signed_in")
    _click(browser, "confirm")
    _settled(browser, "authorized")
    back = browser.current_url
    assert "/return?assertion=" in back
    decided = end_offsets(stack.kafka.bootstrap_servers, topics.COMMANDS)
    browser.get(back)  # the same assertion again (a reload, a copied link)
    assert _settled(browser, "refused") == {"status": "refused", "reason": "reused"}
    assert _text(browser, "reason") == "identification already used"
    assert end_offsets(stack.kafka.bootstrap_servers, topics.COMMANDS) == decided
