"""The load client of `ledger bench load`, a process of its own (so that its CPU is not the
server's): `python -m ledger.bench.load_client CONFIG.json RESULT.json`.

`clients` asyncio tasks, for `seconds`, each doing in a loop what a subscriber's browser and a
publisher do (ledger.api.client, over aiohttp): prepare a payment (publisher key,
Idempotency-Key), open its page, pick the ISP, sign in at the ISP's identity component, confirm,
and come back to the ledger's page, which shows the decision; or, one time in `isp_every`, an
ISP's reads (its periods, a page of its invoices). Every answer is counted by route and status
with its latency; a 429 or 503 is checked for its Retry-After and its JSON body, and the client
then waits what it says (at most 1 s) and starts a new payment. A confirm answered 200 with a
decision, or 202 pending, is *accepted*: its payment id is kept for the check of the log.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urljoin

import aiohttp

from ledger.api.client import Answer

SHED = (429, 503)
RETRY_AFTER_CAP_SECONDS = 1.0


@dataclass
class Tally:
    latencies: dict[str, list[float]] = field(default_factory=dict)
    statuses: dict[str, dict[str, int]] = field(default_factory=dict)
    shed_without_retry_after: int = 0
    shed_without_json: int = 0
    errors: dict[str, int] = field(default_factory=dict)  # no answer at all, by exception
    accepted: dict[str, str] = field(default_factory=dict)  # payment id → outcome
    flows: int = 0

    def note(self, route: str, status: int, seconds: float) -> None:
        self.latencies.setdefault(route, []).append(seconds)
        by_status = self.statuses.setdefault(route, {})
        by_status[str(status)] = by_status.get(str(status), 0) + 1


class Shed(Exception):
    def __init__(self, wait: float) -> None:
        self.wait = wait


class Failed(Exception):
    pass


@dataclass
class Client:
    session: aiohttp.ClientSession
    config: dict[str, Any]
    tally: Tally

    async def call(
        self, route: str, method: str, url: str, *, json_body: Any = None,
        form: dict[str, str] | None = None, headers: dict[str, str] | None = None,
    ) -> Answer:  # fmt: skip
        started = time.perf_counter()
        try:
            async with self.session.request(
                method, url, json=json_body, data=form, headers=headers, allow_redirects=False
            ) as response:
                body = await response.read()
                status, location = response.status, response.headers.get("Location")
                retry_after = response.headers.get("Retry-After")
        except (aiohttp.ClientError, TimeoutError) as error:
            name = type(error).__name__
            self.tally.errors[name] = self.tally.errors.get(name, 0) + 1
            self.tally.note(route, 0, time.perf_counter() - started)
            raise Failed(name) from error
        self.tally.note(route, status, time.perf_counter() - started)
        if status in SHED:
            self._check_shed(body, retry_after)
            raise Shed(min(float(retry_after or 1), RETRY_AFTER_CAP_SECONDS))
        return Answer(status, url, body, urljoin(url, location) if location else None)

    def _check_shed(self, body: bytes, retry_after: str | None) -> None:
        if retry_after is None or not retry_after.isdigit():
            self.tally.shed_without_retry_after += 1
        try:
            error = json.loads(body)["error"]
            if not isinstance(error["code"], str) or not isinstance(error["message"], str):
                raise ValueError
        except (ValueError, KeyError, TypeError):
            self.tally.shed_without_json += 1

    async def checkout(self, n: int) -> None:
        c = self.config
        prepared = await self.call(
            "POST /v1/payments", "POST", f"{c['api']}/v1/payments",
            json_body={"amount_cents": 99, "category": "vod", "description": "episode"},
            headers={"Authorization": f"Bearer {c['publisher_key']}",
                     "Idempotency-Key": f"load-{c['run']}-{n}"},
        )  # fmt: skip
        if prepared.status != 201:
            raise Failed(f"prepare {prepared.status}")
        payment = prepared.json()
        shown = await self.call("GET /pay/{id}", "GET", f"{payment['confirm_url']}?lang=en")
        form = shown.form("identify")
        to_isp = await self.call(
            "POST /pay/{id}/identify", "POST", urljoin(shown.url, form.action),
            form=form.fields | {"isp_id": c["isp_id"]},
        )  # fmt: skip
        if to_isp.location is None:
            raise Failed(f"identify {to_isp.status}")
        sign_in = await self.call("idp GET /isp/{isp}/login", "GET", to_isp.location)
        login = c["logins"][n % len(c["logins"])]
        form = sign_in.form("sign-in")
        signed_in = await self.call(
            "idp POST /isp/{isp}/login", "POST", urljoin(sign_in.url, form.action),
            form=form.fields | {"login": login["login"], "password": login["password"]},
        )  # fmt: skip
        form = signed_in.form("confirm")
        redirected = await self.call(
            "idp POST /isp/{isp}/confirm", "POST", urljoin(signed_in.url, form.action),
            form=form.fields,
        )  # fmt: skip
        if redirected.location is None:
            raise Failed(f"confirm {redirected.status}")
        back = await self.call("GET /pay/{id}/return", "GET", redirected.location)
        if back.status == 200 and back.page.outcome.get("status"):
            self.tally.accepted[payment["payment_id"]] = back.page.outcome["status"]
        elif back.status == 202:
            self.tally.accepted[payment["payment_id"]] = "pending"

    async def isp_reads(self) -> None:
        c = self.config
        headers = {"Authorization": f"Bearer {c['isp_key']}"}
        base = f"{c['isp_api']}/v1/isps/{c['isp_id']}"
        await self.call("GET /v1/isps/{id}/periods", "GET", f"{base}/periods", headers=headers)
        await self.call("GET /v1/isps/{id}/invoices", "GET",
                        f"{base}/invoices?period={c['period']}", headers=headers)  # fmt: skip

    async def loop(self, number: int, deadline: float) -> None:
        flow = 0
        while time.monotonic() < deadline:
            flow += 1
            try:
                if flow % self.config["isp_every"] == 0:
                    await self.isp_reads()
                else:
                    await self.checkout(number * 1_000_000 + flow)
                self.tally.flows += 1
            except Shed as shed:
                await asyncio.sleep(shed.wait)
            except Failed:
                await asyncio.sleep(0.1)
            except Exception as error:  # a page not as expected: counted, the client goes on
                name = type(error).__name__
                self.tally.errors[name] = self.tally.errors.get(name, 0) + 1
                await asyncio.sleep(0.1)


async def run(config: dict[str, Any]) -> dict[str, Any]:
    tally = Tally()
    connector = aiohttp.TCPConnector(limit=0)
    timeout = aiohttp.ClientTimeout(total=config["request_timeout_seconds"])
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        # Each client keeps its own cookie-less flow; the same session shares connections.
        started = time.monotonic()
        deadline = started + config["seconds"]
        await asyncio.gather(
            *(Client(session, config, tally).loop(n, deadline) for n in range(config["clients"]))
        )
        elapsed = time.monotonic() - started
    return {
        "elapsed_seconds": elapsed, "flows": tally.flows, "errors": tally.errors,
        "shed_without_retry_after": tally.shed_without_retry_after,
        "shed_without_json": tally.shed_without_json,
        "accepted": tally.accepted, "latencies": tally.latencies, "statuses": tally.statuses,
    }  # fmt: skip


def main() -> None:
    config_path, result_path = sys.argv[1:3]
    with open(config_path) as source:
        config = json.load(source)
    result = asyncio.run(run(config))
    with open(result_path, "w") as out:
        json.dump(result, out)


if __name__ == "__main__":
    main()
