"""The HTTP plumbing of both APIs (`ledger api`, `ledger isp-api`), written once: the middleware
that turns every failure into the JSON error answer and counts each request, `/metrics`, the
Bearer key a caller must send, and the assembly of an aiohttp application.

The error codes of this plumbing are the same in both APIs (issue 17: they had drifted):
401 `unauthenticated`, 500 `internal_error`, and `http_error` for aiohttp's own answers (no such
route, method not allowed).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from aiohttp import web
from aiohttp.typedefs import Handler, Middleware
from prometheus_client import Counter, Histogram, generate_latest

from ledger.api.admission import Admission, admitted
from ledger.api.errors import ApiError, error_response
from ledger.api.validation import bearer_key

Lifecycle = Callable[[web.Application], Awaitable[None]]

UNAUTHENTICATED = "unauthenticated"
INTERNAL_ERROR = "internal_error"
HTTP_ERROR = "http_error"
BEARER_HINT = "send your API key as 'Authorization: Bearer <key>'"


@dataclass(frozen=True)
class RequestMetrics:
    """The two series of an API, by route (its path template) and status; each API keeps its own
    names (`ledger_api_*`, `ledger_isp_api_*`), which the dashboard and the alerts query."""

    requests: Counter
    latency: Histogram


def errors_and_metrics(
    metrics: RequestMetrics, log: logging.Logger, admission: Admission | None = None
) -> Middleware:
    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        resource = request.match_info.route.resource
        route = resource.canonical if resource else "unmatched"
        started = time.perf_counter()

        async def answer(request: web.Request) -> web.StreamResponse:
            try:
                return await handler(request)
            except ApiError as error:
                return error_response(error.status, error.code, error.message)
            except web.HTTPException as error:  # aiohttp's own: no such route, method not allowed
                return error_response(error.status, HTTP_ERROR, error.reason)
            except Exception:
                log.exception("an unexpected error on %s", route)
                return error_response(
                    500, INTERNAL_ERROR, "an unexpected error; nothing was changed"
                )

        if admission is None:
            response = await answer(request)
        else:  # shed answers are counted by route and status like the others
            response = await admitted(admission, request, answer)
        metrics.requests.labels(route, str(response.status)).inc()
        metrics.latency.labels(route).observe(time.perf_counter() - started)
        return response

    return middleware


def bearer(request: web.Request) -> str:
    """The caller's API key, else a 401 that says how to send one."""
    key = bearer_key(request)
    if key is None:
        raise ApiError(401, UNAUTHENTICATED, BEARER_HINT)
    return key


def pending(kind: str, key: str) -> web.Response:
    """A command not decided within the timeout: the client sends the same request again (the
    same id, the same command: the same decision)."""
    return web.json_response(
        {"status": "pending", kind: key, "message": "not decided yet: send the same request again"},
        status=202,
    )


def unauthenticated(message: str) -> ApiError:
    """A key that was sent but is nobody's (or not the one this route needs)."""
    return ApiError(401, UNAUTHENTICATED, message)


async def metrics_page(_request: web.Request) -> web.Response:
    return web.Response(body=generate_latest(), content_type="text/plain")


def create_app(
    routes: web.RouteTableDef,
    metrics: RequestMetrics,
    log: logging.Logger,
    start: Lifecycle,
    stop: Lifecycle,
    client_max_size: int = 1024**2,  # aiohttp's default
    admission: Admission | None = None,
) -> web.Application:
    app = web.Application(
        middlewares=[errors_and_metrics(metrics, log, admission)], client_max_size=client_max_size
    )
    app.add_routes(routes)
    app.router.add_get("/metrics", metrics_page)
    app.on_startup.append(start)
    app.on_cleanup.append(stop)
    return app
