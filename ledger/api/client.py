"""A client of the checkout with consent (issue 14) that does over plain HTTP what a subscriber's
browser does (the pages need no JavaScript): the publisher prepares a payment, the subscriber
opens its confirm_url, picks their ISP, signs in on the ISP's identity component, confirms, and
comes back to the ledger's page, which shows the decision. Used by the tests, the bench and the
smoke check: one implementation of the flow.

Redirects are followed by hand, so that a caller can keep the assertion the ISP sent back (the
tests send it again: `reused`).
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from html.parser import HTMLParser
from typing import Any
from urllib.parse import parse_qs, urlencode, urljoin, urlsplit

TIMEOUT_SECONDS = 30
REDIRECTS_MAX = 5


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


_OPENER = urllib.request.build_opener(_NoRedirect)


@dataclass
class Form:
    action: str
    method: str
    fields: dict[str, str] = field(default_factory=dict)
    options: dict[str, list[str]] = field(default_factory=dict)  # a select's values
    button: str = ""


class _Page(HTMLParser):
    """The forms of a page and its outcome (ledger.api.page.outcome)."""

    def __init__(self) -> None:
        super().__init__()
        self.forms: list[Form] = []
        self.outcome: dict[str, str] = {}
        self._select: str | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k: v or "" for k, v in attrs}
        if tag == "form":
            self.forms.append(Form(a.get("action", ""), a.get("method", "get").lower()))
        elif tag == "input" and self.forms and a.get("name"):
            self.forms[-1].fields[a["name"]] = a.get("value", "")
        elif tag == "select" and self.forms:
            self._select = a.get("name", "")
            self.forms[-1].options[self._select] = []
        elif tag == "option" and self.forms and self._select is not None:
            self.forms[-1].options[self._select].append(a.get("value", ""))
        elif tag == "button" and self.forms:
            self.forms[-1].button = a.get("id", "")
        elif a.get("id") == "outcome":
            self.outcome = {k[5:]: v for k, v in a.items() if k.startswith("data-")}

    def handle_endtag(self, tag: str) -> None:
        if tag == "select":
            self._select = None


@dataclass(frozen=True)
class Answer:
    status: int
    url: str
    body: bytes
    location: str | None = None

    @property
    def page(self) -> _Page:
        parsed = _Page()
        parsed.feed(self.body.decode("utf-8", "replace"))
        return parsed

    def form(self, button: str) -> Form:
        for form in self.page.forms:
            if form.button == button:
                return form
        raise CheckoutFailed(f"no {button!r} form on {self.url} ({self.status})")

    def json(self) -> dict[str, Any]:
        loaded: dict[str, Any] = json.loads(self.body or b"{}")
        return loaded


class CheckoutFailed(AssertionError):
    """The flow did not go where a browser would have gone."""


def request(
    url: str, method: str = "GET", data: bytes | None = None, headers: dict[str, str] | None = None
) -> Answer:
    req = urllib.request.Request(url, data=data, method=method, headers=headers or {})
    try:
        with _OPENER.open(req, timeout=TIMEOUT_SECONDS) as response:
            return Answer(response.status, url, response.read())
    except urllib.error.HTTPError as error:
        return Answer(error.code, url, error.read(), error.headers.get("Location"))


def browse(url: str, method: str = "GET", form: dict[str, str] | None = None) -> Answer:
    """A browser's request: a form posted as application/x-www-form-urlencoded, 303s followed
    (each recorded in `trail`)."""
    data = urlencode(form or {}).encode() if method == "POST" else None
    headers = {"Content-Type": "application/x-www-form-urlencoded"} if data is not None else {}
    answer = request(url, method, data, headers)
    for _ in range(REDIRECTS_MAX):
        if answer.status not in (301, 302, 303) or answer.location is None:
            return answer
        answer = request(urljoin(answer.url, answer.location))
    raise CheckoutFailed(f"more than {REDIRECTS_MAX} redirects from {url}")


def submit(answer: Answer, button: str, **values: str) -> Answer:
    form = answer.form(button)
    url = urljoin(answer.url, form.action)
    fields = form.fields | {name: options[0] for name, options in form.options.items() if options}
    fields |= values
    if form.method == "get":
        return browse(f"{url}?{urlencode(fields)}" if fields else url)
    return browse(url, "POST", fields)


@dataclass(frozen=True)
class Confirmed:
    """Where the flow ended: the ledger's result page, and the assertion the ISP sent back."""

    page: Answer
    assertion: str
    return_url: str

    @property
    def outcome(self) -> dict[str, str]:
        return self.page.page.outcome


@dataclass
class Checkout:
    """The checkout API at `base` (e.g. http://127.0.0.1:18080)."""

    base: str

    def call(
        self, method: str, path: str, body: Any = None, key: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> tuple[int, dict[str, Any]]:  # fmt: skip
        data = None if body is None else json.dumps(body).encode()
        sent = {"Content-Type": "application/json", **(headers or {})}
        if key:
            sent["Authorization"] = f"Bearer {key}"
        answer = request(f"{self.base}{path}", method, data, sent)
        return answer.status, answer.json()

    def prepare(
        self, key: str, body: dict[str, Any], idempotency_key: str
    ) -> tuple[int, dict[str, Any]]:
        return self.call("POST", "/v1/payments", body, key, {"Idempotency-Key": idempotency_key})

    def payment(self, key: str, payment_id: str) -> tuple[int, dict[str, Any]]:
        return self.call("GET", f"/v1/payments/{payment_id}", key=key)

    def confirm(
        self, confirm_url: str, isp_id: str, login: str, password: str, lang: str = "en"
    ) -> Confirmed:
        """The subscriber's side: the page, their ISP, sign in, confirm, back to the ledger."""
        shown = browse(f"{confirm_url}?lang={lang}")
        if shown.status != 200:
            raise CheckoutFailed(f"the payment page answered {shown.status}: {shown.body[:300]!r}")
        form = shown.form("identify")
        if isp_id not in form.options.get("isp_id", []):
            raise CheckoutFailed(f"{isp_id} is not offered on the page: {form.options}")
        sign_in = submit(shown, "identify", isp_id=isp_id)
        if sign_in.status != 200:
            raise CheckoutFailed(f"the ISP's page answered {sign_in.status}")
        signed_in = submit(sign_in, "sign-in", login=login, password=password)
        if signed_in.status != 200:
            raise CheckoutFailed(f"signing in answered {signed_in.status}: "
                                 f"{signed_in.page.outcome}")  # fmt: skip
        form = signed_in.form("confirm")
        redirected = request(urljoin(signed_in.url, form.action), "POST",
                             urlencode(form.fields).encode(),
                             {"Content-Type": "application/x-www-form-urlencoded"})  # fmt: skip
        if redirected.status != 303 or redirected.location is None:
            raise CheckoutFailed(f"the ISP's confirmation answered {redirected.status}")
        back = urljoin(redirected.url, redirected.location)
        token = parse_qs(urlsplit(back).query).get("assertion", [""])[0]
        return Confirmed(browse(back), token, back)

    def capture(
        self, key: str, payment_id: str, amount_cents: int | None = None
    ) -> tuple[int, dict[str, Any]]:
        body = {} if amount_cents is None else {"amount_cents": amount_cents}
        return self.call("POST", f"/v1/payments/{payment_id}/capture", body, key)

    def void(self, key: str, payment_id: str) -> tuple[int, dict[str, Any]]:
        return self.call("POST", f"/v1/payments/{payment_id}/void", {}, key)

    def cancel(self, confirm_url: str) -> Answer:
        return submit(browse(confirm_url), "cancel")

    def buy(
        self, key: str, body: dict[str, Any], isp_id: str, login: str, password: str,
        idempotency_key: str, wait_seconds: float = 30.0,
    ) -> dict[str, Any]:  # fmt: skip
        """Prepare, confirm and read the decision back (GET /v1/payments/{id}): the payment's
        view, with its `decision` (a purchase's view: status authorized or rejected)."""
        deadline = time.monotonic() + wait_seconds
        while True:  # a publisher just registered is known to the API a moment later (401)
            status, prepared = self.prepare(key, body, idempotency_key)
            if status != 401 or time.monotonic() > deadline:
                break
            time.sleep(0.25)
        if status != 201:
            raise CheckoutFailed(f"prepare answered {status}: {prepared}")
        confirmed = self.confirm(prepared["confirm_url"], isp_id, login, password)
        while True:
            status, view = self.payment(key, prepared["payment_id"])
            if (status == 200 and view.get("decision")) or time.monotonic() > deadline:
                break
            if confirmed.page.status == 202:  # pending: a browser's reload sends it again
                browse(prepared["confirm_url"])
            time.sleep(0.25)
        if status != 200 or not view.get("decision"):
            raise CheckoutFailed(
                f"no decision for {prepared['payment_id']}: {status} {view}"
                f" (page {confirmed.page.status} {confirmed.outcome})"
            )
        return view
