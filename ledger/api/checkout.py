"""Checkout with consent (issue 14, docs/design/checkout.md): a publisher prepares a payment, the
subscriber confirms it on the ledger's page after identifying with their ISP, and only then does a
purchase command reach the stream.

- `POST /v1/payments` (publisher key, `Idempotency-Key`): a row of `prepared_payments`, no
  command (it names no account yet). Expires after `payment_ttl_seconds` (15 minutes).
- `GET /v1/payments/{id}` (publisher key, own payments only): its status and the decision.
- `POST /v1/payments/{id}/capture` and `/void` (publisher key, own held payments): capture (all
  or part, once) or void a payment prepared with `capture: "hold"` and confirmed; the commands
  carry the platform's time, and the first one asked for is kept, so that a retry is the same
  command (the same fact).
- `GET /pay/{id}`: the page; `POST /pay/{id}/identify` sends the subscriber to their ISP's
  identity component (`ledger idp`); `POST /pay/{id}/cancel` cancels.
- `GET /pay/{id}/return?assertion=…`: the ISP's assertion checked (forged, expired, mismatch,
  wrong_isp, reused: ledger.api.assertion), the nonce marked used in the statement that marks
  the payment confirmed, then `purchase.requested.v2` with the platform's time and
  `consent` = SHA-256 of the assertion (`payment.hold_requested.v1` for a held payment, with its
  `hold_expires_at`), and the decision shown.

Every refusal is a 4xx (a page for the subscriber, JSON for the publisher) and puts nothing on
the log.
"""

from __future__ import annotations

import hashlib
import secrets as random
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from html import escape
from typing import TYPE_CHECKING, Any
from urllib.parse import urlencode

import msgspec
from aiohttp import web
from prometheus_client import Counter

from ledger.api import assertion, page, purchases
from ledger.api import isp_secrets as secrets
from ledger.api.bodies import CaptureBody, PaymentBody, VoidBody, read_body
from ledger.api.errors import ApiError
from ledger.api.http import pending
from ledger.api.page import euros, t
from ledger.api.validation import ID, path_value
from ledger.core.authorizer import fingerprint
from ledger.core.invariant import InvariantBroken
from schemas import codec
from schemas.commands import (
    PaymentCaptureRequested,
    PaymentHoldRequested,
    PaymentVoidRequested,
    PurchaseRequested,
)
from schemas.facts import (
    Fact,
    PaymentCommandRejected,
    PaymentReserved,
    PaymentVoided,
    PurchaseAuthorized,
    PurchaseRejected,
)

if TYPE_CHECKING:
    from ledger.api.server import Api

PAYMENT_TTL_SECONDS_DEFAULT = 15 * 60  # design notes: a prepared payment expires after 15 min
PREPARED = Counter("ledger_api_payments_prepared_total", "payments prepared by publishers")
CONFIRMED = Counter(
    "ledger_api_payments_confirmed_total", "payments confirmed by their subscriber (sent)"
)
CANCELLED = Counter("ledger_api_payments_cancelled_total", "payments cancelled on their page")
REFUSED = Counter(
    "ledger_api_confirmations_refused_total", "confirmations refused, by reason", ["reason"]
)
# Each refusal's status: 403 the ISP did not vouch for this (forged) or not for this account
# (wrong_isp); 409 the assertion is not this payment's or was used; 410 it or the page is over.
REFUSAL_STATUS = {
    "forged": 403, "wrong_isp": 403, "mismatch": 409, "reused": 409, "payment_cancelled": 409,
    "payment_confirmed": 409, "expired": 410, "payment_expired": 410, "isp_unavailable": 409,
}  # fmt: skip

IDEMPOTENCY_HINT = (
    "send an Idempotency-Key header: 1 to 64 letters, digits and ._:@- (the same key again is the"
    " same payment)"
)
_PAYMENT = (
    "SELECT payment_id, publisher_id, idempotency_key, request_sha256, amount_cents, category,"
    " description, content_id, capture, nonce, status, created_at, expires_at, confirmed_at,"
    " cancelled_at, isp_id, account_id, user_id, consent, command, hold_seconds, finish_command"
    " FROM prepared_payments WHERE payment_id = %s"
)
_CONFIRM = (
    "WITH used AS ("
    " INSERT INTO confirmations_used (nonce, payment_id, consent, used_at)"
    " VALUES (%s, %s, %s, %s) ON CONFLICT (nonce) DO NOTHING RETURNING nonce),"
    " marked AS ("
    " UPDATE prepared_payments SET status = 'confirmed', confirmed_at = %s, isp_id = %s,"
    " account_id = %s, user_id = %s, consent = %s, command = %s"
    " WHERE payment_id = %s AND status = 'prepared' AND expires_at > %s"
    " AND EXISTS (SELECT 1 FROM used) RETURNING payment_id)"
    " SELECT (SELECT count(*) FROM used) AS used, (SELECT count(*) FROM marked) AS marked"
)


def status_of(row: dict[str, Any], now: datetime) -> str:
    if row["status"] == "prepared" and row["expires_at"] <= now:
        return "expired"
    return str(row["status"])


class Refusal(Exception):
    """A confirmation refused: a 4xx page with the reason, nothing on the log."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(detail or reason)
        self.reason, self.detail = reason, detail


async def _row(api: Api, payment_id: str) -> dict[str, Any] | None:
    rows = await api.db.query(_PAYMENT, (payment_id,))
    return rows[0] if rows else None


def _prepared_view(api: Api, row: dict[str, Any]) -> dict[str, Any]:
    return {
        "payment_id": row["payment_id"], "confirm_url": f"{api.public_url}/pay/{row['payment_id']}",
        "expires_at": row["expires_at"].isoformat(), "amount_cents": row["amount_cents"],
        "capture": row["capture"], "hold_seconds": row["hold_seconds"],
    }  # fmt: skip


Confirmation = PurchaseRequested | PaymentHoldRequested


@dataclass(frozen=True)
class Outcome:
    """What a confirmed payment came to, for its page: authorized or rejected (a purchase, or a
    hold refused), or a hold's state (reserved, captured, voided, expired)."""

    status: str
    reason: str | None = None


async def _decision(api: Api, row: dict[str, Any]) -> purchases.Purchase | None:
    try:
        return await purchases.find(api.db, api.listener, row["publisher_id"], row["payment_id"])
    except ApiError as error:
        if error.status == 404:
            return None
        raise


async def _held(api: Api, row: dict[str, Any]) -> dict[str, Any] | None:
    """A held payment as the projection has it (None: not projected yet, or its hold refused)."""
    rows = await api.db.query(
        "SELECT status, amount_held_cents, amount_captured_cents, reserved_at, hold_expires_at,"
        " finished_at FROM payments WHERE account_id = %s AND payment_id = %s",
        (row["account_id"], row["payment_id"]),
    )
    if not rows:
        return None
    found = rows[0]
    return {
        "status": found["status"], "amount_held_cents": found["amount_held_cents"],
        "amount_captured_cents": found["amount_captured_cents"],
        "reserved_at": found["reserved_at"].isoformat(),
        "hold_expires_at": found["hold_expires_at"].isoformat(),
        "finished_at": found["finished_at"].isoformat() if found["finished_at"] else None,
    }  # fmt: skip


async def _decision_view(api: Api, row: dict[str, Any]) -> dict[str, Any] | None:
    """The decision of a confirmed payment, for its publisher: a purchase's view, or a held
    payment's state (a refused hold is a rejected purchase)."""
    if row["capture"] == "hold":
        held = await _held(api, row)
        if held is not None:
            return held
    decision = await _decision(api, row)
    return decision.view() if decision is not None else None


async def _outcome(api: Api, row: dict[str, Any]) -> Outcome | None:
    view = await _decision_view(api, row)
    if view is None:
        return None
    return Outcome(str(view["status"]), view.get("reason"))


async def _decide(api: Api, command: Confirmation) -> Outcome | None:
    key = command.purchase_id if isinstance(command, PurchaseRequested) else command.payment_id
    fact = await api.decide(command, ("purchase", key, fingerprint(command)))
    if fact is None:
        return None
    if isinstance(fact, PaymentReserved):
        return Outcome("reserved")
    if isinstance(fact, PurchaseRejected):
        return Outcome("rejected", fact.reason)
    if isinstance(fact, PurchaseAuthorized):
        return Outcome("authorized")
    raise InvariantBroken(f"a confirmation decided as {type(fact).__name__}")


def _isp_name(api: Api, isp_id: str | None) -> str:
    isp = api.reference.reference.isps.get(isp_id or "")
    return isp.name if isp is not None else (isp_id or "")


def _publisher_name(api: Api, publisher_id: str) -> str:
    publisher = api.reference.reference.publishers.get(publisher_id)
    return publisher.name if publisher is not None else publisher_id


def _payment_details(api: Api, row: dict[str, Any], lang: str) -> list[tuple[str, str, str]]:
    return [
        ("price", t("price", lang), euros(int(row["amount_cents"]), lang)),
        ("publisher", t("publisher", lang), _publisher_name(api, row["publisher_id"])),
        ("description", t("description", lang), row["description"]),
    ]


async def _result_page(
    api: Api, row: dict[str, Any], decision: Outcome | None, lang: str
) -> web.Response:
    """A confirmed payment: its decision (or pending), with who confirmed it."""
    rows = _payment_details(api, row, lang)
    rows.append(("isp", t("isp", lang), _isp_name(api, row["isp_id"])))
    account = await api.account_of(row["account_id"]) if row["account_id"] else None
    if account is not None and account.kind == "enterprise":
        rows.append(("company", t("company", lang), account.company_name or row["account_id"]))
        rows.append(("employee", t("employee", lang), row["user_id"]))
    if decision is None:
        body = page.outcome("pending", payment_id=row["payment_id"])
        body += f"<p>{t('pending', lang)}</p>{page.details(rows)}"
        return page.document(t("title", lang), body, lang, 202)
    status = decision.status
    body = page.outcome(status, decision.reason or "", payment_id=row["payment_id"])
    if decision.reason:
        body += (
            f'<p class="error">{t("reason", lang)}: '
            f'<span id="reason">{page.reason_text(decision.reason, lang)}</span></p>'
        )
    if status == "reserved":
        body += f"<p>{t('held', lang)}</p>"
    title = t("hold_expired" if status == "expired" else status, lang)
    return page.document(title, body + page.details(rows), lang)


def _refused_page(reason: str, detail: str, lang: str) -> web.Response:
    REFUSED.labels(reason).inc()
    return page.message_page("refused", lang, REFUSAL_STATUS.get(reason, 400), reason, detail)


def _state_refusal(state: str) -> Refusal | None:
    if state == "cancelled":
        return Refusal("payment_cancelled", "this payment was cancelled")
    if state == "expired":
        return Refusal("payment_expired", "this payment expired: ask the publisher for a new one")
    if state == "confirmed":
        return Refusal("payment_confirmed", "this payment was confirmed already")
    return None


def checkout_routes(api: Api, table: web.RouteTableDef) -> None:
    _publisher_routes(api, table)
    _page_routes(api, table)
    _subscriber_actions(api, table)


def _publisher_routes(api: Api, table: web.RouteTableDef) -> None:
    @table.post("/v1/payments")
    async def prepare(request: web.Request) -> web.Response:
        publisher = api.publisher_of(request)
        key = request.headers.get("Idempotency-Key", "")
        if not ID.fullmatch(key):
            raise ApiError(400, "bad_request", IDEMPOTENCY_HINT)
        body: PaymentBody = await read_body(request, PaymentBody)
        request_sha = hashlib.sha256(msgspec.json.encode(body)).hexdigest()
        now = datetime.now(UTC)
        rows = await api.db.query(
            "INSERT INTO prepared_payments (payment_id, publisher_id, idempotency_key,"
            " request_sha256, amount_cents, category, description, content_id, capture, nonce,"
            " status, created_at, expires_at, hold_seconds) VALUES (%s, %s, %s, %s, %s, %s, %s,"
            " %s, %s, %s, 'prepared', %s, %s, %s) ON CONFLICT (publisher_id, idempotency_key)"
            " DO NOTHING RETURNING payment_id",
            (f"pay-{uuid.uuid4().hex}", publisher.publisher_id, key, request_sha,
             body.amount_cents, body.category, body.description, body.content_id, body.capture,
             random.token_hex(16), now, now + timedelta(seconds=api.payment_ttl_seconds),
             body.hold_for),
        )  # fmt: skip
        if rows:
            PREPARED.inc()
            payment_id = rows[0]["payment_id"]
        else:
            found = await api.db.query(
                "SELECT payment_id, request_sha256 FROM prepared_payments"
                " WHERE publisher_id = %s AND idempotency_key = %s",
                (publisher.publisher_id, key),
            )
            if found[0]["request_sha256"] != request_sha:
                raise ApiError(409, "idempotency_key_reused", f"Idempotency-Key {key!r} was used"
                               " for another request: use a new key for a new payment")  # fmt: skip
            payment_id = found[0]["payment_id"]
        row = await _row(api, payment_id)
        assert row is not None
        return web.json_response(_prepared_view(api, row), status=201)

    @table.get("/v1/payments/{payment_id}")
    async def get_payment(request: web.Request) -> web.Response:
        publisher = api.publisher_of(request)
        payment_id = path_value(request, "payment_id", ID, "payment")
        row = await _row(api, payment_id)
        if row is None or row["publisher_id"] != publisher.publisher_id:
            raise ApiError(404, "not_found", f"no payment {payment_id!r} of yours")
        decision = await _decision_view(api, row) if row["status"] == "confirmed" else None
        view = _prepared_view(api, row) | {
            "status": status_of(row, datetime.now(UTC)), "description": row["description"],
            "category": row["category"], "content_id": row["content_id"],
            "account_id": row["account_id"], "user_id": row["user_id"],
            "confirmed_at": row["confirmed_at"].isoformat() if row["confirmed_at"] else None,
            "decision": decision,
        }  # fmt: skip
        return web.json_response(view)

    @table.post("/v1/payments/{payment_id}/capture")
    async def capture(request: web.Request) -> web.Response:
        publisher = api.publisher_of(request)
        payment_id = path_value(request, "payment_id", ID, "payment")
        body: CaptureBody = await read_body(request, CaptureBody)
        row = await _held_payment(api, publisher.publisher_id, payment_id)
        command = PaymentCaptureRequested(
            payment_id=payment_id, account_id=row["account_id"],
            publisher_id=publisher.publisher_id,
            amount_cents=body.amount_cents or int(row["amount_cents"]),
            occurred_at=datetime.now(UTC),
        )  # fmt: skip
        return await _finish(api, row, command)

    @table.post("/v1/payments/{payment_id}/void")
    async def void(request: web.Request) -> web.Response:
        publisher = api.publisher_of(request)
        payment_id = path_value(request, "payment_id", ID, "payment")
        await read_body(request, VoidBody)
        row = await _held_payment(api, publisher.publisher_id, payment_id)
        command = PaymentVoidRequested(
            payment_id=payment_id, account_id=row["account_id"],
            publisher_id=publisher.publisher_id, occurred_at=datetime.now(UTC),
        )  # fmt: skip
        return await _finish(api, row, command)


Finish = PaymentCaptureRequested | PaymentVoidRequested
# A capture or void refused, by reason: 409 the payment is in another state; 422 the amount.
FINISH_REFUSAL_STATUS = {"capture_exceeds_hold": 422}


async def _held_payment(api: Api, publisher_id: str, payment_id: str) -> dict[str, Any]:
    """The publisher's held payment, confirmed: else a 404 (not its own) or 409 (not held, or
    not confirmed yet)."""
    row = await _row(api, payment_id)
    if row is None or row["publisher_id"] != publisher_id:
        raise ApiError(404, "not_found", f"no payment {payment_id!r} of yours")
    if row["capture"] != "hold":
        raise ApiError(409, "not_held", "this payment was captured at confirmation: refund it"
                       " instead (POST /v1/purchases/{id}/refunds)")  # fmt: skip
    state = status_of(row, datetime.now(UTC))
    if state != "confirmed":
        raise ApiError(409, f"payment_{state}", f"this payment is {state}, not confirmed: there"
                       " is no hold to capture or void")  # fmt: skip
    return row


async def _finish(api: Api, row: dict[str, Any], command: Finish) -> web.Response:
    """Send the capture or void; the first one asked for is kept, and a request equal to it
    (the same action, for a capture the same amount) sends it again: a retry after a timeout is
    the same command, answered with the same fact. Anything else is decided against the hold's
    state (refused once the hold is finished)."""
    kept = await api.db.query(
        "UPDATE prepared_payments SET finish_command = %s WHERE payment_id = %s"
        " AND finish_command IS NULL RETURNING finish_command",
        (codec.encode(command), row["payment_id"]),
    )
    if not kept:
        first = await _row(api, row["payment_id"])
        assert first is not None and first["finish_command"] is not None
        earlier = codec.decode_command(bytes(first["finish_command"]))
        if _same_request(earlier, command):
            command = earlier  # type: ignore[assignment]
    fact = await api.decide(command, ("purchase", command.payment_id, fingerprint(command)))
    if fact is None:
        return pending("payment_id", command.payment_id)
    return _finish_answer(fact)


def _same_request(earlier: object, command: Finish) -> bool:
    if isinstance(command, PaymentCaptureRequested):
        return (
            isinstance(earlier, PaymentCaptureRequested)
            and earlier.amount_cents == command.amount_cents
        )
    return isinstance(earlier, PaymentVoidRequested)


def _finish_answer(fact: Fact) -> web.Response:
    if isinstance(fact, PurchaseAuthorized):
        view = purchases.Purchase.of_fact(fact).view()
        return web.json_response({"status": "captured", "purchase": view})
    if isinstance(fact, PaymentVoided):
        return web.json_response({"status": "voided", "released_cents": fact.amount_cents})
    if isinstance(fact, PaymentCommandRejected):
        return web.json_response(
            {"status": "refused", "action": fact.action, "reason": fact.reason,
             "payment_id": fact.payment_id},
            status=FINISH_REFUSAL_STATUS.get(fact.reason, 409),
        )  # fmt: skip
    raise InvariantBroken(f"a capture or void decided as {type(fact).__name__}")


def _page_routes(api: Api, table: web.RouteTableDef) -> None:
    @table.get("/pay/{payment_id}")
    async def pay_page(request: web.Request) -> web.Response:
        lang = page.lang_of(request)
        payment_id = request.match_info["payment_id"]
        row = await _row(api, payment_id) if ID.fullmatch(payment_id) else None
        if row is None:
            return page.message_page("not_found", lang, 404, detail=payment_id[:64])
        state = status_of(row, datetime.now(UTC))
        if state == "confirmed":
            decision = await _outcome(api, row)
            if decision is None and row["command"] is not None:
                # Marked confirmed but its command may not have reached the log (a failure
                # after the commit): the same command again is the same purchase.
                command = codec.decode_command(bytes(row["command"]))
                assert isinstance(command, PurchaseRequested | PaymentHoldRequested)
                decision = await _decide(api, command)
            return await _result_page(api, row, decision, lang)
        if state == "cancelled":
            body = page.outcome("cancelled") + page.details(_payment_details(api, row, lang))
            return page.document(t("cancelled", lang), body, lang)
        if state == "expired":
            return page.message_page("expired", lang, 410, "payment_expired")
        isps = sorted(
            (_isp_name(api, isp), isp)
            for isp in await secrets.registered(api.db)
            if isp in api.reference.reference.isps
        )
        body = page.outcome("prepared", payment_id=payment_id)
        body += page.details(_payment_details(api, row, lang))
        if isps:
            options = "".join(f'<option value="{i}">{escape(n)}</option>' for n, i in isps)
            body += (
                f'<form method="post" action="/pay/{payment_id}/identify">'
                f'{page.hidden({"lang": lang})}<label for="isp_id">{t("isp", lang)}</label>'
                f'<select id="isp_id" name="isp_id">{options}</select>'
                f'<button class="primary" id="identify" type="submit">{t("identify", lang)}'
                "</button></form>"
            )
        else:
            body += f'<p class="error">{t("no_isp", lang)}</p>'
        body += (
            f'<form method="post" action="/pay/{payment_id}/cancel">{page.hidden({"lang": lang})}'
            f'<button class="secondary" id="cancel" type="submit">{t("cancel", lang)}</button>'
            f"</form><p>{t('billed', lang)}</p>"
        )
        return page.document(t("title", lang), body, lang)


async def _posted(api: Api, request: web.Request) -> tuple[Any, page.Lang, dict[str, Any] | None]:
    """A form the page posted: its fields, the page's language, and the payment it names (None:
    no such payment)."""
    form = await request.post()
    chosen = form.get("lang")
    lang: page.Lang = str(chosen) if chosen in page.LANGS else page.lang_of(request)
    payment_id = request.match_info["payment_id"]
    row = await _row(api, payment_id) if ID.fullmatch(payment_id) else None
    return form, lang, row


def _subscriber_actions(api: Api, table: web.RouteTableDef) -> None:
    @table.post("/pay/{payment_id}/identify")
    async def identify(request: web.Request) -> web.Response:
        form, lang, row = await _posted(api, request)
        if row is None:
            return page.message_page("not_found", lang, 404)
        payment_id = row["payment_id"]
        refusal = _state_refusal(status_of(row, datetime.now(UTC)))
        if refusal is not None:
            return page.message_page("refused", lang, REFUSAL_STATUS[refusal.reason],
                                     refusal.reason, refusal.detail)  # fmt: skip
        isp_id = str(form.get("isp_id", ""))
        known = ID.fullmatch(isp_id) and isp_id in api.reference.reference.isps
        if not known or isp_id not in await secrets.registered(api.db):
            return page.message_page("refused", lang, 400, "isp_unavailable")
        query = urlencode({
            "payment_id": payment_id, "publisher_id": row["publisher_id"],
            "publisher_name": _publisher_name(api, row["publisher_id"]),
            "amount_cents": row["amount_cents"], "description": row["description"],
            "nonce": row["nonce"], "isp_name": _isp_name(api, isp_id), "lang": lang,
        })  # fmt: skip
        return web.Response(
            status=303, headers={"Location": f"{api.idp_url}/isp/{isp_id}/login?{query}"}
        )

    @table.post("/pay/{payment_id}/cancel")
    async def cancel(request: web.Request) -> web.Response:
        _form, lang, row = await _posted(api, request)
        if row is None:
            return page.message_page("not_found", lang, 404)
        payment_id = row["payment_id"]
        now = datetime.now(UTC)
        done = await api.db.query(
            "UPDATE prepared_payments SET status = 'cancelled', cancelled_at = %s"
            " WHERE payment_id = %s AND status = 'prepared' AND expires_at > %s"
            " RETURNING payment_id",
            (now, payment_id, now),
        )
        if done:
            CANCELLED.inc()
        elif (state := status_of(row, now)) != "cancelled":
            refusal = _state_refusal(state)
            assert refusal is not None
            return page.message_page("refused", lang, REFUSAL_STATUS[refusal.reason],
                                     refusal.reason, refusal.detail)  # fmt: skip
        body = page.outcome("cancelled") + page.details(_payment_details(api, row, lang))
        return page.document(t("cancelled", lang), body, lang)

    @table.get("/pay/{payment_id}/return")
    async def back_from_isp(request: web.Request) -> web.Response:
        lang = page.lang_of(request)
        payment_id = request.match_info["payment_id"]
        row = await _row(api, payment_id) if ID.fullmatch(payment_id) else None
        if row is None:
            return page.message_page("not_found", lang, 404)
        try:
            command = await _verified(api, row, request.query.get("assertion", ""))
        except assertion.Refused as refused:
            return _refused_page(refused.reason, refused.message, lang)
        except Refusal as refusal:
            return _refused_page(refusal.reason, refusal.detail, lang)
        CONFIRMED.inc()
        row = await _row(api, payment_id)
        assert row is not None
        return await _result_page(api, row, await _decide(api, command), lang)


async def _verified(api: Api, row: dict[str, Any], token: str) -> Confirmation:
    """The checks of the design notes in their order; the last marks the nonce used and the
    payment confirmed in one statement. Returns the command to send."""
    now = datetime.now(UTC)
    claimed = assertion.unverified_claims(token)
    keys_of_isp = await secrets.active(api.db, claimed.isp_id, now)
    claims = assertion.verify(token, keys_of_isp, int(now.timestamp()))
    assertion.check_bound(claims, assertion.Expected(
        payment_id=row["payment_id"], publisher_id=row["publisher_id"],
        amount_cents=int(row["amount_cents"]), nonce=row["nonce"],
    ))  # fmt: skip
    account = await api.account_of(claims.account_id)
    assertion.check_isp(claims, account.isp_id if account is not None else None)
    state = status_of(row, now)
    if state in ("cancelled", "expired"):
        refusal = _state_refusal(state)
        assert refusal is not None
        raise refusal
    consent = assertion.digest(token)
    command: Confirmation
    if row["capture"] == "hold":
        command = PaymentHoldRequested(
            payment_id=row["payment_id"], account_id=claims.account_id, user_id=claims.user_id,
            publisher_id=row["publisher_id"], amount_cents=int(row["amount_cents"]),
            category=row["category"], description=row["description"], occurred_at=now,
            hold_expires_at=now + timedelta(seconds=int(row["hold_seconds"])),
            content_id=row["content_id"], consent=consent,
        )  # fmt: skip
    else:
        command = PurchaseRequested(
            purchase_id=row["payment_id"], account_id=claims.account_id, user_id=claims.user_id,
            publisher_id=row["publisher_id"], amount_cents=int(row["amount_cents"]),
            category=row["category"], description=row["description"], occurred_at=now,
            content_id=row["content_id"], consent=consent,
        )  # fmt: skip
    encoded = codec.encode(command)
    try:
        codec.decode_command(encoded)  # what the workers will read, read here first
    except codec.InvalidMessage as invalid:
        raise Refusal("mismatch", invalid.detail) from None
    marked = await api.db.query(_CONFIRM, (
        claims.nonce, row["payment_id"], consent, now,
        now, claims.isp_id, claims.account_id, claims.user_id, consent, encoded,
        row["payment_id"], now,
    ))  # fmt: skip
    if not marked[0]["marked"]:
        if not marked[0]["used"]:
            raise assertion.Refused("reused", "this identification was used already")
        raise Refusal("payment_expired", "this payment expired meanwhile")
    return command
