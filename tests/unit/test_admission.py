"""Admission control (ledger.api.admission) on a real aiohttp server: beyond the in-flight bound a
request waits at most the queue wait, then is a 503 with Retry-After and a JSON body; beyond a
key's rate a 429 with the seconds until a token is back; under the bounds nothing is shed."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from ledger.api.admission import Admission, AdmissionMetrics, Limits, TokenBucket
from ledger.api.errors import ApiError
from ledger.api.http import RequestMetrics, create_app


def _metrics() -> tuple[RequestMetrics, AdmissionMetrics]:
    registry = CollectorRegistry()
    return (
        RequestMetrics(
            Counter("t_requests_total", "", ["route", "status"], registry=registry),
            Histogram("t_latency_seconds", "", ["route"], registry=registry),
        ),
        AdmissionMetrics(
            Counter("t_shed_total", "", ["reason"], registry=registry),
            Gauge("t_in_flight", "", registry=registry),
        ),
    )


async def _serve(limits: Limits, release: asyncio.Event) -> tuple[TestServer, AdmissionMetrics]:
    table = web.RouteTableDef()

    @table.get("/slow")
    async def slow(_request: web.Request) -> web.Response:
        await release.wait()
        return web.json_response({"ok": True})

    @table.get("/fast")
    async def fast(_request: web.Request) -> web.Response:
        return web.json_response({"ok": True})

    @table.get("/down")
    async def down(_request: web.Request) -> web.Response:
        raise ApiError(503, "ledger_unavailable", "the broker is away")

    async def nothing(_app: web.Application) -> None:
        return None

    requests, admission_metrics = _metrics()
    app = create_app(table, requests, logging.getLogger("t"), nothing, nothing,
                     admission=Admission(limits, admission_metrics))  # fmt: skip
    server = TestServer(app)
    await server.start_server()
    return server, admission_metrics


async def _get(
    session: aiohttp.ClientSession, url: str, key: str | None = None
) -> tuple[int, dict[str, Any], str | None]:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    async with session.get(url, headers=headers) as answer:
        return answer.status, await answer.json(), answer.headers.get("Retry-After")


def test_in_flight_bound_sheds_with_503_and_retry_after() -> None:
    async def scenario() -> None:
        release = asyncio.Event()
        server, metrics = await _serve(Limits(max_in_flight=2, queue_wait_seconds=0.1), release)
        try:
            async with aiohttp.ClientSession() as session:
                held = [asyncio.create_task(_get(session, str(server.make_url("/slow"))))
                        for _ in range(2)]  # fmt: skip
                await asyncio.sleep(0.2)
                assert metrics.in_flight._value.get() == 2
                status, body, after = await _get(session, str(server.make_url("/fast")))
                assert (status, after) == (503, "1")
                assert body["error"]["code"] == "overloaded"
                assert body["error"]["retry_after_seconds"] == 1
                release.set()
                assert [s for s, _, _ in await asyncio.gather(*held)] == [200, 200]
                assert (await _get(session, str(server.make_url("/fast"))))[0] == 200
                # A handler's own 503 (the broker away) says when to come back too.
                status, body, after = await _get(session, str(server.make_url("/down")))
                assert (status, after, body["error"]["code"]) == (503, "1", "ledger_unavailable")
                metrics_page = await session.get(str(server.make_url("/metrics")))
                assert metrics_page.status == 200
            assert metrics.shed.labels("overloaded")._value.get() == 1
            assert metrics.in_flight._value.get() == 0
        finally:
            await server.close()

    asyncio.run(scenario())


def test_a_waiting_request_gets_the_place_that_frees_within_the_queue_wait() -> None:
    async def scenario() -> None:
        release = asyncio.Event()
        server, metrics = await _serve(Limits(max_in_flight=1, queue_wait_seconds=2.0), release)
        try:
            async with aiohttp.ClientSession() as session:
                held = asyncio.create_task(_get(session, str(server.make_url("/slow"))))
                await asyncio.sleep(0.1)
                waiting = asyncio.create_task(_get(session, str(server.make_url("/fast"))))
                await asyncio.sleep(0.2)
                release.set()
                assert (await held)[0] == 200 and (await waiting)[0] == 200
            assert metrics.shed.labels("overloaded")._value.get() == 0
        finally:
            await server.close()

    asyncio.run(scenario())


def test_per_key_rate_sheds_with_429_and_leaves_other_keys_alone() -> None:
    async def scenario() -> None:
        server, metrics = await _serve(Limits(key_rate=0.5, key_burst=3), asyncio.Event())
        try:
            url = str(server.make_url("/fast"))
            async with aiohttp.ClientSession() as session:
                first = [(await _get(session, url, "pub_a"))[0] for _ in range(3)]
                status, body, after = await _get(session, url, "pub_a")
                other = await _get(session, url, "pub_b")
                pages = [(await _get(session, url))[0] for _ in range(5)]  # no key: no bucket
            assert first == [200, 200, 200]
            assert status == 429 and body["error"]["code"] == "rate_limited"
            assert after is not None and 1 <= int(after) <= 2  # a token every 2 s
            assert other[0] == 200 and pages == [200] * 5
            assert metrics.shed.labels("rate_limited")._value.get() == 1
        finally:
            await server.close()

    asyncio.run(scenario())


def test_token_bucket_refills_at_its_rate_up_to_its_burst() -> None:
    bucket = TokenBucket(rate=10.0, burst=2)
    start = bucket.at
    assert bucket.take(start) == 0 and bucket.take(start) == 0
    assert bucket.take(start) == pytest.approx(0.1)
    assert bucket.take(start + 0.11) == 0
    assert bucket.take(start + 10.0) == 0 and bucket.take(start + 10.0) == 0  # burst, not 100
    assert bucket.take(start + 10.0) > 0


def test_limits_refuse_nonsense() -> None:
    with pytest.raises(ValueError):
        Limits(max_in_flight=0)
    with pytest.raises(ValueError):
        Limits(key_rate=-1)
