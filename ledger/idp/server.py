"""`ledger idp`: the ISPs' side of the checkout (issue 14), `isp-idp`, one aiohttp process that
serves every simulated ISP (docs/design/checkout.md).

- `POST /admin/credentials` (the admin key; the checkout API's
  `POST /v1/admin/accounts/{account}/credentials` forwards to it): a subscriber's login and a new
  password, returned once; only the scrypt hash is kept (`idp_credentials`).
- `GET /isp/{isp_id}/login?…`: the ISP's sign-in page, for the payment the ledger's page sent
  the subscriber with (payment, publisher, amount, description, nonce).
- `POST /isp/{isp_id}/login`: wrong credentials → 401 and the form again; else the payment shown
  again with "confirm", the sign-in carried by a short-lived token of this process's own key (no
  cookie, no session store).
- `POST /isp/{isp_id}/confirm`: the assertion, signed with the ISP's secret (read from
  `isp_secrets`), and a 303 back to the ledger's `/pay/{payment_id}/return`.

The idp signs what the page asked it to; the ledger checks the bound fields against its prepared
payment, so a tampered link is refused there (`mismatch`).
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import secrets as random
import time
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlencode

import msgspec
from aiohttp import web
from prometheus_client import Counter, Gauge, Histogram

from ledger import keys
from ledger.api import assertion, page
from ledger.api import isp_secrets as secrets
from ledger.api.admission import IDP_MAX_IN_FLIGHT_DEFAULT, Admission, AdmissionMetrics, Limits
from ledger.api.database import Database
from ledger.api.errors import ApiError
from ledger.api.http import RequestMetrics, bearer, create_app, unauthenticated
from ledger.api.page import euros, t
from ledger.api.validation import ID, path_value
from ledger.settings import listen_host
from schemas.types import Id, PositiveCents, Text

log = logging.getLogger("ledger.idp")
BODY_BYTES_MAX = 8 * 1024
# scrypt's cost (RFC 7914's interactive setting): about 50 ms a login on the development machine.
SCRYPT_N, SCRYPT_R, SCRYPT_P, SCRYPT_DKLEN = 2**14, 8, 1, 32
PASSWORD_BYTES = 12
SIGN_IN_SECONDS = 300  # between a sign-in and its confirmation
ASSERTION_SECONDS = 60  # within assertion.LIFETIME_SECONDS_MAX
METRICS = RequestMetrics(
    Counter("ledger_idp_requests_total", "HTTP requests of the identity component",
            ["route", "status"]),
    Histogram("ledger_idp_request_latency_seconds", "HTTP request latency", ["route"],
              buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)),
)  # fmt: skip
SIGN_INS = Counter("ledger_idp_sign_ins_total", "sign-ins of subscribers", ["outcome"])


class CredentialsBody(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    isp_id: Id
    account_id: Id
    user_id: Id


class PaymentShown(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """What the ledger's page sends the subscriber here with, and what is signed of it."""

    payment_id: Id
    publisher_id: Id
    publisher_name: Text
    amount_cents: PositiveCents
    description: Text
    nonce: Id
    isp_name: Text
    lang: str = "fr"


def scrypt(password: str, salt: bytes) -> bytes:
    return hashlib.scrypt(
        password.encode(), salt=salt, n=SCRYPT_N, r=SCRYPT_R, p=SCRYPT_P, dklen=SCRYPT_DKLEN
    )


def login_of(account_id: str, user_id: str) -> str:
    return f"{user_id}@{account_id}"


class Idp:
    def __init__(self, dsn: str, admin_key_sha256: str, platform_url: str) -> None:
        self.db = Database(dsn)
        self.admin_key_sha256 = admin_key_sha256
        self.platform_url = platform_url.rstrip("/")
        self.session_key = random.token_bytes(32)  # sign-ins do not outlive the process

    async def start(self, _app: web.Application) -> None:
        return None

    async def stop(self, _app: web.Application) -> None:
        await self.db.close()

    def session(self, isp_id: str, shown: PaymentShown, account: str, user: str, until: int) -> str:
        text = msgspec.json.encode([isp_id, msgspec.to_builtins(shown), account, user, until])
        return hmac.new(self.session_key, text, hashlib.sha256).hexdigest()

    async def issue(self, body: CredentialsBody) -> dict[str, str]:
        password = random.token_urlsafe(PASSWORD_BYTES)
        salt = random.token_bytes(16)
        hashed = await asyncio.to_thread(scrypt, password, salt)
        login = login_of(body.account_id, body.user_id)
        await self.db.query(
            "INSERT INTO idp_credentials (isp_id, login, account_id, user_id, scrypt_salt,"
            " scrypt_hash, issued_at) VALUES (%s, %s, %s, %s, %s, %s, %s)"
            " ON CONFLICT (isp_id, login) DO UPDATE SET scrypt_salt = EXCLUDED.scrypt_salt,"
            " scrypt_hash = EXCLUDED.scrypt_hash, issued_at = EXCLUDED.issued_at RETURNING login",
            (body.isp_id, login, body.account_id, body.user_id, salt, hashed, datetime.now(UTC)),
        )  # fmt: skip
        return {"isp_id": body.isp_id, "account_id": body.account_id, "user_id": body.user_id,
                "login": login, "password": password,
                "note": "shown once: the platform keeps only a hash"}  # fmt: skip

    async def sign_in(self, isp_id: str, login: str, password: str) -> tuple[str, str] | None:
        """(account, user) of good credentials, else None."""
        if not (0 < len(login) <= 200 and 0 < len(password) <= 200):
            return None
        rows = await self.db.query(
            "SELECT account_id, user_id, scrypt_salt, scrypt_hash FROM idp_credentials"
            " WHERE isp_id = %s AND login = %s",
            (isp_id, login),
        )
        salt = bytes(rows[0]["scrypt_salt"]) if rows else b"no such login, same cost"
        hashed = await asyncio.to_thread(scrypt, password, salt)
        if rows and hmac.compare_digest(hashed, bytes(rows[0]["scrypt_hash"])):
            return rows[0]["account_id"], rows[0]["user_id"]
        return None


def _shown(fields: Any) -> PaymentShown:
    try:
        shown = msgspec.convert(
            {name: fields.get(name) for name in PaymentShown.__struct_fields__ if name in fields},
            PaymentShown, strict=False,
        )  # fmt: skip
    except msgspec.ValidationError as error:
        raise ApiError(400, "bad_request", str(error)) from None
    if shown.lang not in page.LANGS:
        raise ApiError(400, "bad_request", "lang is fr or en")
    return shown


def _payment_rows(shown: PaymentShown, lang: str) -> str:
    return page.details([
        ("price", t("price", lang), euros(shown.amount_cents, lang)),
        ("publisher", t("publisher", lang), shown.publisher_name),
        ("description", t("description", lang), shown.description),
    ])  # fmt: skip


def _login_form(isp_id: str, shown: PaymentShown, error: bool) -> str:
    lang = shown.lang
    fields = {k: str(v) for k, v in msgspec.to_builtins(shown).items()}
    problem = f'<p class="error" id="error">{t("wrong_credentials", lang)}</p>' if error else ""
    return (
        f"{problem}{_payment_rows(shown, lang)}"
        f'<form method="post" action="/isp/{isp_id}/login">{page.hidden(fields)}'
        f'<label for="login">{t("login", lang)}</label>'
        '<input id="login" name="login" autocomplete="username" required>'
        f'<label for="password">{t("password", lang)}</label>'
        '<input id="password" name="password" type="password" autocomplete="current-password"'
        " required>"
        f'<button class="primary" id="sign-in" type="submit">{t("sign_in", lang)}</button></form>'
    )


def _confirm_form(idp: Idp, isp_id: str, shown: PaymentShown, account: str, user: str) -> str:
    """The payment shown again to the signed-in subscriber, with "confirm"; the sign-in is carried
    by a token of this process's key over everything the confirmation will sign."""
    lang = shown.lang
    until = int(time.time()) + SIGN_IN_SECONDS
    fields = {k: str(v) for k, v in msgspec.to_builtins(shown).items()}
    fields |= {"account_id": account, "user_id": user, "until": str(until),
               "session": idp.session(isp_id, shown, account, user, until)}  # fmt: skip
    who = [("account", t("account", lang), account), ("user", t("employee", lang), user)]
    return (
        page.outcome("signed_in", account=account, user=user)
        + f"<p>{t('confirm_intro', lang)}</p>{_payment_rows(shown, lang)}{page.details(who)}"
        + f'<form method="post" action="/isp/{isp_id}/confirm">{page.hidden(fields)}'
        f'<button class="primary" id="confirm" type="submit">{t("confirm", lang)}</button>'
        f'</form><form method="get" action="{idp.platform_url}/pay/{shown.payment_id}">'
        f"{page.hidden({'lang': lang})}"
        f'<button class="secondary" id="back" type="submit">{t("cancel", lang)}</button></form>'
    )


def see_other(url: str) -> web.Response:
    """A 303 returned, not raised: the error middleware answers a raised HTTPException as an
    error."""
    return web.Response(status=303, headers={"Location": url})


def routes(idp: Idp) -> web.RouteTableDef:
    table = web.RouteTableDef()

    def html_errors(handler: Any) -> Any:
        """The subscriber's pages answer a bad request with a page, not JSON."""

        async def handle(request: web.Request) -> web.StreamResponse:
            try:
                return await handler(request)  # type: ignore[no-any-return]
            except ApiError as error:
                lang = page.lang_of(request)
                return page.message_page("bad_request", lang, error.status, detail=error.message)

        return handle

    @table.get("/")
    async def root(_request: web.Request) -> web.Response:
        return web.json_response({"service": "isp-idp"})

    @table.post("/admin/credentials")
    async def credentials(request: web.Request) -> web.Response:
        if not keys.matches(bearer(request), idp.admin_key_sha256):
            raise unauthenticated("this API key is not the admin key")
        raw = await request.read()
        try:
            body = msgspec.json.decode(raw or b"{}", type=CredentialsBody)
        except msgspec.DecodeError as error:
            raise ApiError(422, "invalid_body", str(error)) from None
        return web.json_response(await idp.issue(body), status=201)

    @table.get("/isp/{isp_id}/login")
    @html_errors
    async def login_page(request: web.Request) -> web.Response:
        isp_id = path_value(request, "isp_id", ID, "ISP")
        shown = _shown(request.query)
        return page.document(shown.isp_name, _login_form(isp_id, shown, False), shown.lang)

    @table.post("/isp/{isp_id}/login")
    @html_errors
    async def login(request: web.Request) -> web.Response:
        isp_id = path_value(request, "isp_id", ID, "ISP")
        form = await request.post()
        shown = _shown(form)
        lang = shown.lang
        who = await idp.sign_in(isp_id, str(form.get("login", "")), str(form.get("password", "")))
        if who is None:
            SIGN_INS.labels("wrong_credentials").inc()
            body = page.outcome("refused", "wrong_credentials") + _login_form(isp_id, shown, True)
            return page.document(shown.isp_name, body, lang, 401)
        SIGN_INS.labels("signed_in").inc()
        body = _confirm_form(idp, isp_id, shown, *who)
        return page.document(shown.isp_name, body, lang)

    @table.post("/isp/{isp_id}/confirm")
    @html_errors
    async def confirm(request: web.Request) -> web.StreamResponse:
        isp_id = path_value(request, "isp_id", ID, "ISP")
        form = await request.post()
        shown = _shown(form)
        account, user = str(form.get("account_id", "")), str(form.get("user_id", ""))
        until_text = str(form.get("until", ""))
        until = int(until_text) if until_text.isdigit() and len(until_text) < 12 else 0
        expected = idp.session(isp_id, shown, account, user, until)
        if not hmac.compare_digest(expected, str(form.get("session", ""))) or until < time.time():
            raise ApiError(401, "unauthenticated", "sign in again")
        now = datetime.now(UTC)
        keys_of_isp = await secrets.active(idp.db, isp_id, now)
        if not keys_of_isp:
            raise ApiError(503, "isp_unavailable", f"{isp_id} has no signing secret")
        issued = int(now.timestamp())
        claims = assertion.Claims(
            isp_id=isp_id, account_id=account, user_id=user, payment_id=shown.payment_id,
            publisher_id=shown.publisher_id, amount_cents=shown.amount_cents, nonce=shown.nonce,
            issued_at=issued, expires_at=issued + ASSERTION_SECONDS,
        )  # fmt: skip
        signed = assertion.sign(claims, keys_of_isp[0])
        query = urlencode({"assertion": signed, "lang": shown.lang})
        return see_other(f"{idp.platform_url}/pay/{shown.payment_id}/return?{query}")

    return table


ADMISSION = AdmissionMetrics(
    Counter("ledger_idp_shed_total", "requests shed (429/503 with Retry-After)", ["reason"]),
    Gauge("ledger_idp_in_flight", "requests being handled"),
)
IDP_LIMITS = Limits(max_in_flight=IDP_MAX_IN_FLIGHT_DEFAULT)


def create_idp_app(idp: Idp, limits: Limits = IDP_LIMITS) -> web.Application:
    return create_app(routes(idp), METRICS, log, idp.start, idp.stop, BODY_BYTES_MAX,
                      Admission(limits, ADMISSION))  # fmt: skip


def run_idp(
    dsn: str, admin_key_sha256: str, platform_url: str, port: int, limits: Limits = IDP_LIMITS
) -> None:
    logging.basicConfig(level="WARNING", format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    app = create_idp_app(Idp(dsn, admin_key_sha256, platform_url), limits)
    web.run_app(app, host=listen_host(), port=port, print=None)
