"""`ledger api`: the checkout API for publishers and the admin API, over aiohttp.

Every request that changes something becomes a command on ledger.commands and is answered with
the fact the authorizer decided, read back from ledger.events: never by deciding here. A request
that is invalid is a 4xx with a JSON error and changes nothing; a decision that takes longer than
DECISION_TIMEOUT_SECONDS is a 202 "pending" that the client resolves by sending the same request
again (same purchase_id: the same decision). A publisher's purchases are looked up in the recent
facts and in the PostgreSQL projection, and refunded under the refund policy
(ledger.api.purchases).

A publisher alone cannot charge an account (issue 14): `POST /v1/purchases` answers 410 and points
to `/v1/payments`, the checkout with the subscriber's consent (ledger.api.checkout).
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

import msgspec
from aiohttp import web
from prometheus_client import Counter, Gauge, Histogram

from ledger import keys
from ledger.api import isp_secrets as secrets
from ledger.api import purchases
from ledger.api.admission import Admission, AdmissionMetrics, Limits
from ledger.api.bodies import (
    BODY_BYTES_MAX,
    AccountBody,
    BlockBody,
    Body,
    CommandBody,
    CredentialsBody,
    EmployeeBody,
    IspBody,
    IspChangeBody,
    LimitsBody,
    PublisherBody,
    PublisherChangeBody,
    RefundBody,
    read_body,
)
from ledger.api.checkout import PAYMENT_TTL_SECONDS_DEFAULT, checkout_routes
from ledger.api.database import Database
from ledger.api.errors import ApiError
from ledger.api.http import RequestMetrics, bearer, create_app, pending, unauthenticated
from ledger.api.listener import Account, DecisionListener, WaitKey
from ledger.api.openapi import openapi_document
from ledger.api.validation import ID, path_value
from ledger.core.admin import AccountAdminCommand
from ledger.core.authorizer import fingerprint
from ledger.kafka import topics
from ledger.kafka.partitioning import partition_for
from ledger.kafka.reference import ReferenceReader
from ledger.kafka.settings import api_producer_config
from ledger.produce import reference_records, send_holds_expiry_async
from ledger.settings import listen_host
from schemas import codec
from schemas.commands import (
    AccountBlockRequested,
    AccountOpenRequested,
    AccountUnblockRequested,
    Command,
    EmployeeAuthoriseRequested,
    EmployeeRevokeRequested,
    LimitsSetRequested,
    RefundRequested,
)
from schemas.facts import Fact, PurchaseRefunded
from schemas.reference import IspRegistered, PublisherRegistered, ReferenceRecord

log = logging.getLogger("ledger.api")
R = TypeVar("R", IspRegistered, PublisherRegistered)
DECISION_TIMEOUT_SECONDS = 5.0
HOLDS_EXPIRY_SECONDS_DEFAULT = 60.0
HOLDS_EXPIRY_SENT = Counter(
    "ledger_api_holds_expiry_barriers_total", "holds' expiry barriers sent (to every partition)"
)
FUTURE_SKEW_SECONDS = 300  # occurred_at may be ahead of our clock by this much, not more
IDP_TIMEOUT_SECONDS = 10.0
METRICS = RequestMetrics(
    Counter("ledger_api_requests_total", "HTTP requests", ["route", "status"]),
    Histogram(
        "ledger_api_request_latency_seconds", "HTTP request latency", ["route"],
        buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
    ),
)  # fmt: skip


@dataclass
class Api:
    bootstrap_servers: str
    partitions: int
    admin_key_sha256: str
    dsn: str
    idp_url: str = "http://127.0.0.1:18082"
    public_url: str = "http://127.0.0.1:18080"
    payment_ttl_seconds: int = PAYMENT_TTL_SECONDS_DEFAULT
    # How often this process sends the holds' expiry barrier (0: never; another process does).
    holds_expiry_seconds: float = HOLDS_EXPIRY_SECONDS_DEFAULT
    listener: DecisionListener = field(init=False)
    reference: ReferenceReader = field(init=False)
    db: Database = field(init=False)
    producer: Any = None
    http: Any = None  # aiohttp's client, to the identity component
    tasks: list[asyncio.Task[None]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.listener = DecisionListener(self.bootstrap_servers, self.partitions)
        self.reference = ReferenceReader(self.bootstrap_servers)
        self.db = Database(self.dsn)

    async def start(self, _app: web.Application) -> None:
        from aiokafka import AIOKafkaProducer

        self.producer = AIOKafkaProducer(
            **api_producer_config(self.bootstrap_servers, "ledger-api")
        )
        await self.producer.start()
        import aiohttp

        self.http = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=IDP_TIMEOUT_SECONDS))
        self.tasks = [
            asyncio.create_task(self.listener.run(await self._projected())),
            asyncio.create_task(self.reference.run()),
        ]
        if self.holds_expiry_seconds > 0:
            self.tasks.append(asyncio.create_task(self._expire_holds()))
        await asyncio.wait_for(
            asyncio.gather(self.listener.ready.wait(), self.reference.ready.wait()), 60
        )

    async def _expire_holds(self) -> None:
        """The holds' expiry barrier (ledger.produce.send_holds_expiry_async) to every partition,
        at the platform's time, every `holds_expiry_seconds`: a hold expires at most that long
        after its end (a capture after its end is refused in event time anyway). Several API
        processes each sending it is harmless: a hold expires once."""
        while True:
            await asyncio.sleep(self.holds_expiry_seconds)
            try:
                await send_holds_expiry_async(self.producer, self.partitions)
                HOLDS_EXPIRY_SENT.inc()
            except Exception as error:  # the broker away: the next tick tries again
                log.warning("the holds' expiry barrier was not sent (%s): next in %s s",
                            type(error).__name__, self.holds_expiry_seconds)  # fmt: skip

    async def _projected(self) -> dict[int, int]:
        """Where the projection writer resumes each partition of ledger.events: what it has
        stored is in PostgreSQL, and the listener reads from there."""
        try:
            rows = await self.db.query(
                "SELECT partition, next_offset FROM projection_offsets WHERE topic = %s",
                (topics.EVENTS,),
            )
        except ApiError:
            log.warning("the database is unreachable: the listener reads the recent events only")
            return {}
        return {int(row["partition"]): int(row["next_offset"]) for row in rows}

    async def stop(self, _app: web.Application) -> None:
        for task in self.tasks:
            task.cancel()
        if self.producer is not None:
            await self.producer.stop()
        if self.http is not None:
            await self.http.close()
        await self.db.close()

    # --- sending and waiting ----------------------------------------------------------------

    async def _send(self, topic: str, key: str, value: bytes, partition: int) -> int:
        try:
            metadata = await self.producer.send_and_wait(
                topic, key=key.encode(), value=value, partition=partition
            )
        except Exception as error:
            # Any producer failure. After a timeout the outcome is unknown: the command may be on
            # the log. Sending the same request again is safe either way, because a command is
            # decided once per id (the same id again gets the same answer).
            raise ApiError(503, "ledger_unavailable", (
                f"the ledger could not confirm it took the command ({type(error).__name__}); "
                "send the same request again")) from error  # fmt: skip
        return int(metadata.offset)

    async def decide(self, command: Command, wait: WaitKey) -> Fact | None:
        """Put a command on the log and wait for its fact; None when it takes too long."""
        encoded = _checked(codec.encode(command), codec.decode_command)
        future = self.listener.expect(wait)
        try:
            account = command.account_id  # type: ignore[union-attr]
            await self._send(topics.COMMANDS, account, encoded,
                             partition_for(account, self.partitions))  # fmt: skip
            return await asyncio.wait_for(asyncio.shield(future), DECISION_TIMEOUT_SECONDS)
        except TimeoutError:
            return None
        finally:
            self.listener.forget(wait, future)

    async def publish_reference(self, record: ReferenceRecord) -> None:
        """As LedgerProducer.send_reference (issue 15): the change to every partition of
        ledger.commands, each send awaited, then the record to the compacted ledger.reference."""
        _checked(codec.encode(record), codec.decode_reference)
        for topic, partition, key, value in reference_records(record, self.partitions):
            await self._send(topic, (key or b"").decode(), value, partition)
        self.reference.note(record)

    async def account_of(self, account_id: str) -> Account | None:
        """An account's ISP and kind: from the recent facts, else from the projection."""
        known = self.listener.accounts.get(account_id)
        if known is not None:
            return known
        rows = await self.db.query(
            "SELECT isp_id, kind, company_name FROM accounts WHERE account_id = %s", (account_id,)
        )
        return (
            Account(rows[0]["isp_id"], rows[0]["kind"], rows[0]["company_name"]) if rows else None
        )

    # --- authentication ------------------------------------------------------------------------

    def publisher_of(self, request: web.Request) -> PublisherRegistered:
        key = bearer(request)
        for publisher in self.reference.reference.publishers.values():
            if keys.matches(key, publisher.api_key_sha256):
                return publisher
        raise unauthenticated("this API key is not a publisher's key")

    def require_admin(self, request: web.Request) -> None:
        if not keys.matches(bearer(request), self.admin_key_sha256):
            raise unauthenticated("this API key is not the admin key")


def _checked(encoded: bytes, decode: Callable[[bytes], object]) -> bytes:
    """What the workers will read, read here first: a command built from the path (an account id
    of control characters, say) is refused now with a 422, instead of being set aside on the
    dead-letter topic while its caller waits for a decision that never comes."""
    try:
        decode(encoded)
    except codec.InvalidMessage as invalid:
        raise ApiError(422, "invalid_request", invalid.detail) from None
    return encoded


def _check_time(occurred_at: datetime) -> None:
    if occurred_at > datetime.now(UTC) + timedelta(seconds=FUTURE_SKEW_SECONDS):
        raise ApiError(422, "occurred_at_in_future", "occurred_at is ahead of the ledger's clock")


def _fact_view(fact: Fact) -> dict[str, Any]:
    return msgspec.to_builtins(fact)  # type: ignore[no-any-return]


def _purchase_routes(api: Api, table: web.RouteTableDef) -> None:
    @table.post("/v1/purchases")
    async def create_purchase(request: web.Request) -> web.Response:
        api.publisher_of(request)
        raise ApiError(410, "gone", (
            "a publisher can no longer charge an account alone: prepare a payment with POST"
            " /v1/payments and send the subscriber to its confirm_url, where they identify with"
            " their ISP and confirm"))  # fmt: skip

    @table.get("/v1/purchases/{purchase_id}")
    async def get_purchase(request: web.Request) -> web.Response:
        publisher = api.publisher_of(request)
        purchase_id = path_value(request, "purchase_id", ID, "purchase")
        found = await purchases.find(api.db, api.listener, publisher.publisher_id, purchase_id)
        if not found.authorized:
            return web.json_response(found.view())
        refunds = await purchases.refunds_of(api.db, api.listener, found)
        return web.json_response(found.view(refunds.refunded_cents))

    @table.post("/v1/purchases/{purchase_id}/refunds")
    async def refund_purchase(request: web.Request) -> web.Response:
        publisher = api.publisher_of(request)
        purchase_id = path_value(request, "purchase_id", ID, "purchase")
        body: RefundBody = await read_body(request, RefundBody)
        purchase = await purchases.find(api.db, api.listener, publisher.publisher_id, purchase_id)
        _check_time(body.occurred_at)
        if purchase.authorized:
            known = await purchases.refunds_of(api.db, api.listener, purchase)
            if body.refund_id not in known.refund_ids:  # a resend is answered whatever the date
                await purchases.check_refund_window(api.db, purchase, datetime.now(UTC))
        command = RefundRequested(
            refund_id=body.refund_id, purchase_id=purchase_id, account_id=purchase.account_id,
            amount_cents=body.amount_cents, reason=body.reason, occurred_at=body.occurred_at,
        )  # fmt: skip
        fact = await api.decide(command, ("refund", command.refund_id, fingerprint(command)))
        if fact is None:
            return pending("refund_id", command.refund_id)
        status = 200 if isinstance(fact, PurchaseRefunded) else 422
        return web.json_response(_fact_view(fact), status=status)


def _reference_routes(api: Api, table: web.RouteTableDef) -> None:
    @table.post("/v1/admin/isps")
    async def register_isp(request: web.Request) -> web.Response:
        api.require_admin(request)
        body: IspBody = await read_body(request, IspBody)
        record = _reference_record(body, IspRegistered, {})
        await api.publish_reference(record)
        return web.json_response(msgspec.to_builtins(record), status=201)

    @table.post("/v1/admin/publishers")
    async def register_publisher(request: web.Request) -> web.Response:
        api.require_admin(request)
        body: PublisherBody = await read_body(request, PublisherBody)
        key = keys.new_key("pub")
        record = _reference_record(
            body, PublisherRegistered, {"api_key_sha256": keys.key_hash(key)}
        )
        await api.publish_reference(record)
        view = msgspec.to_builtins(record) | {"api_key": key, "note": "shown once: store it"}
        return web.json_response(view, status=201)

    @table.put("/v1/admin/isps/{isp_id}")
    async def change_isp(request: web.Request) -> web.Response:
        api.require_admin(request)
        isp_id = path_value(request, "isp_id", ID, "ISP")
        body: IspChangeBody = await read_body(request, IspChangeBody)
        current = api.reference.reference.isps.get(isp_id)
        if current is None:
            raise ApiError(404, "not_found", f"no ISP {isp_id!r}: register it first")
        record = _changed_record(current, body)
        await api.publish_reference(record)
        return web.json_response(msgspec.to_builtins(record), status=200)

    @table.put("/v1/admin/publishers/{publisher_id}")
    async def change_publisher(request: web.Request) -> web.Response:
        api.require_admin(request)
        publisher_id = path_value(request, "publisher_id", ID, "publisher")
        body: PublisherChangeBody = await read_body(request, PublisherChangeBody)
        current = api.reference.reference.publishers.get(publisher_id)
        if current is None:
            raise ApiError(404, "not_found", f"no publisher {publisher_id!r}: register it first")
        record = _changed_record(current, body)  # its api_key_sha256 kept: the key still works
        await api.publish_reference(record)
        return web.json_response(msgspec.to_builtins(record), status=200)


def _changed_record(current: R, body: IspChangeBody | PublisherChangeBody) -> R:
    """The current record with the body's fields, at now, effective at `effective_at` (now when
    absent; refused in the past: a decision already taken would have decided otherwise)."""
    now = datetime.now(UTC)
    effective = body.effective_at
    if effective is not None and effective < now:
        raise ApiError(422, "invalid_body", (
            f"effective_at {effective.isoformat()} is in the past: a change takes effect now or "
            "later")) from None  # fmt: skip
    changes = {
        name: getattr(body, name)
        for name in body.__struct_fields__
        if name != "effective_at" and getattr(body, name) is not msgspec.UNSET
    }
    fields = msgspec.structs.asdict(current) | changes
    fields |= {"occurred_at": now, "effective_at": effective}
    try:
        return msgspec.convert(fields, type(current))
    except msgspec.ValidationError as error:
        raise ApiError(422, "invalid_body", str(error)) from None


def _consent_admin_routes(api: Api, table: web.RouteTableDef) -> None:
    """The operators' side of consent (issue 14): ISP secrets and subscriber credentials."""

    @table.post("/v1/admin/isps/{isp_id}/secret")
    async def rotate_secret(request: web.Request) -> web.Response:
        api.require_admin(request)
        isp_id = path_value(request, "isp_id", ID, "ISP")
        if isp_id not in api.reference.reference.isps:
            raise ApiError(404, "not_found", f"no ISP {isp_id!r}: register it first")
        rows = await api.db.query(secrets.ROTATE, secrets.rotate_params(isp_id, datetime.now(UTC)))
        return web.json_response(secrets.view(rows[0]), status=201)

    @table.post("/v1/admin/accounts/{account_id}/credentials")
    async def issue_credentials(request: web.Request) -> web.Response:
        api.require_admin(request)
        account_id = path_value(request, "account_id", ID, "account")
        body: CredentialsBody = await read_body(request, CredentialsBody)
        account = await api.account_of(account_id)
        if account is None:
            raise ApiError(404, "not_found", f"no account {account_id!r} (opened and decided)")
        forwarded = {"isp_id": account.isp_id, "account_id": account_id, "user_id": body.user_id}
        try:
            async with api.http.post(
                f"{api.idp_url}/admin/credentials", json=forwarded,
                headers={"Authorization": request.headers["Authorization"]},
            ) as answer:  # fmt: skip
                issued = await answer.json()
                status = answer.status
        except Exception as error:  # the idp unreachable, or an answer that is not JSON
            raise ApiError(503, "idp_unavailable", (
                f"the ISP's identity component did not answer ({type(error).__name__}); try"
                " again")) from error  # fmt: skip
        if status != 201:
            raise ApiError(503, "idp_unavailable", f"the identity component answered {status}")
        return web.json_response(issued, status=201)


def _reference_record(body: Body, kind: type[R], extra: dict[str, Any]) -> R:
    try:
        return msgspec.convert(
            {**msgspec.structs.asdict(body), "occurred_at": datetime.now(UTC), **extra}, kind
        )
    except msgspec.ValidationError as error:
        raise ApiError(422, "invalid_body", str(error)) from None


# --- account administration: one table, one handler ------------------------------------------


@dataclass(frozen=True)
class AdminRoute:
    """An admin route that becomes one command: its method and path, its body, and the command
    built from the body, the path's ids (by name), the command id and the time it took effect."""

    method: str
    path: str
    body: type[Body]
    build: Callable[[Any, dict[str, str], str, datetime], AccountAdminCommand]


# What a path id of the admin routes names, for its 404.
ADMIN_PATH_NOUNS = {"account_id": "account", "user_id": "employee"}
ACCOUNT = "/v1/admin/accounts/{account_id}"
ADMIN_ROUTES = (
    AdminRoute("POST", "/v1/admin/accounts", AccountBody, lambda body, _ids, cid, at:
               AccountOpenRequested(command_id=cid, account_id=body.account_id,
                                    isp_id=body.isp_id, kind=body.kind, occurred_at=at,
                                    company_name=body.company_name)),
    AdminRoute("POST", f"{ACCOUNT}/block", BlockBody, lambda body, ids, cid, at:
               AccountBlockRequested(command_id=cid, account_id=ids["account_id"],
                                     reason=body.reason, occurred_at=at)),
    AdminRoute("POST", f"{ACCOUNT}/unblock", CommandBody, lambda _body, ids, cid, at:
               AccountUnblockRequested(command_id=cid, account_id=ids["account_id"],
                                       occurred_at=at)),
    AdminRoute("PUT", f"{ACCOUNT}/limits", LimitsBody, lambda body, ids, cid, at:
               LimitsSetRequested(command_id=cid, account_id=ids["account_id"],
                                  limits=body.limits, occurred_at=at)),
    AdminRoute("POST", f"{ACCOUNT}/employees", EmployeeBody, lambda body, ids, cid, at:
               EmployeeAuthoriseRequested(command_id=cid, account_id=ids["account_id"],
                                          user_id=body.user_id, occurred_at=at,
                                          budget_cents=body.budget_cents)),
    # A body is optional: without one the revocation takes effect now, under a new id.
    AdminRoute("DELETE", f"{ACCOUNT}/employees/{{user_id}}", CommandBody, lambda _body, ids, cid,
               at: EmployeeRevokeRequested(command_id=cid, account_id=ids["account_id"],
                                           user_id=ids["user_id"], occurred_at=at)),
)  # fmt: skip


def _admin_handler(api: Api, route: AdminRoute) -> Callable[[web.Request], Awaitable[web.Response]]:
    async def handle(request: web.Request) -> web.Response:
        api.require_admin(request)  # before reading the body: 401 before 422
        body = await read_body(request, route.body)
        ids = {
            name: path_value(request, name, ID, noun)
            for name, noun in ADMIN_PATH_NOUNS.items()
            if name in request.match_info
        }
        occurred_at = body.occurred_at or datetime.now(UTC)
        _check_time(occurred_at)
        command = route.build(body, ids, body.command_id or f"api-{uuid.uuid4().hex}", occurred_at)
        fact = await api.decide(command, ("command", command.command_id, ""))
        if fact is None:
            return pending("command_id", command.command_id)
        rejected = type(fact).__name__ == "CommandRejected"
        return web.json_response(_fact_view(fact), status=422 if rejected else 200)

    return handle


def routes(api: Api) -> web.RouteTableDef:
    table = web.RouteTableDef()
    _purchase_routes(api, table)
    checkout_routes(api, table)
    _reference_routes(api, table)
    _consent_admin_routes(api, table)
    for route in ADMIN_ROUTES:
        table.route(route.method, route.path)(_admin_handler(api, route))

    @table.get("/v1/openapi.json")
    async def openapi(_request: web.Request) -> web.Response:
        return web.json_response(openapi_document())

    return table


ADMISSION = AdmissionMetrics(
    Counter("ledger_api_shed_total", "requests shed (429/503 with Retry-After)", ["reason"]),
    Gauge("ledger_api_in_flight", "requests being handled"),
)


def create_web_app(api: Api, limits: Limits | None = None) -> web.Application:
    admission = Admission(limits or Limits(), ADMISSION)
    return create_app(routes(api), METRICS, log, api.start, api.stop, BODY_BYTES_MAX, admission)


def run_api(
    bootstrap_servers: str, partitions: int, admin_key_sha256: str, dsn: str, port: int,
    idp_url: str, public_url: str, payment_ttl_seconds: int = PAYMENT_TTL_SECONDS_DEFAULT,
    holds_expiry_seconds: float = HOLDS_EXPIRY_SECONDS_DEFAULT, limits: Limits | None = None,
) -> None:  # fmt: skip
    logging.basicConfig(level="WARNING", format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    api = Api(bootstrap_servers, partitions, admin_key_sha256, dsn, idp_url.rstrip("/"),
              public_url.rstrip("/"), payment_ttl_seconds, holds_expiry_seconds)  # fmt: skip
    web.run_app(create_web_app(api, limits), host=listen_host(), port=port, print=None)
