"""`ledger demo` (`make demo`): a simulated month of Internet Plus through the whole ledger.

It brings the stack up, starts a worker, the projection writer and both APIs in the background,
sends a seeded month of traffic (`ledger simulate`), waits for every purchase to be decided and
projected, closes the billing periods of every ISP, and prints what an operator and the ISPs'
billing teams look at. Everything keeps running until `ledger stack down`.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from typing import Any

from ledger import simulate
from ledger.errors import LedgerError
from ledger.kafka import topics
from ledger.kafka.batches import Outgoing
from ledger.kafka.groups import APP_ID
from ledger.kafka.partitions import end_offsets
from ledger.kafka.settings import consumer_config
from ledger.produce import (
    LedgerProducer,
    close_commands,
    command_record,
    send_in_batches,
)
from ledger.stack import services
from ledger.stack.services import Service
from projections import demo as queries
from schemas.commands import PurchaseRequested, RefundRequested
from schemas.reference import IspRegistered

ISP_IDS = [isp[0] for isp in simulate.ISPS]  # the simulated ISPs: the demo closes and sums these
DECIDE_SECONDS_MAX = 900.0
DECIDE_RATE_MIN = 500  # purchases a second: the wait gives up below it (a stuck ledger)
WAIT_POLL_SECONDS = 0.5
SEAL_SECONDS_MAX = 300.0
SEAL_RATE_MIN = 2_000  # purchases sealed a second: the wait gives up below it
SERVICES = (
    Service("worker-w1", ("worker", "--name", "w1", "--metrics-port", "9101"),
            "http://127.0.0.1:9101/metrics"),
    Service("projections-p1", ("project", "--name", "p1", "--metrics-port", "9201"),
            "http://127.0.0.1:9201/metrics"),
    Service("checkout-api", ("api", "--port", "18080", "--idp-url", "http://127.0.0.1:18082"),
            "http://127.0.0.1:18080/v1/openapi.json"),
    # The ISPs' side of the checkout (issue 14): subscribers identify there and confirm.
    Service("isp-idp", ("idp", "--port", "18082", "--platform-url", "http://127.0.0.1:18080"),
            "http://127.0.0.1:18082/"),
    Service("isp-api", ("isp-api", "--port", "18081"),
            "http://127.0.0.1:18081/v1/isps/openapi.json"),
)  # fmt: skip


def _send(bootstrap: str, partitions: int, workload: simulate.Workload) -> tuple[int, int]:
    """Send the workload; returns (commands sent, malformed messages sent)."""
    sent = malformed = 0
    with LedgerProducer(bootstrap, partitions, client_id="ledger-simulate") as producer:
        for record in workload.reference:
            producer.send_reference(record)
        producer.flush()

    def records() -> Iterator[Outgoing]:
        nonlocal sent, malformed
        for command in workload.setup:
            yield command_record(command, partitions)
            sent += 1
        for month in workload.months:
            for item in month:
                if isinstance(item, bytes):
                    yield topics.COMMANDS, 0, b"simulated-garbage", item
                    malformed += 1
                else:
                    yield command_record(item, partitions)
                    sent += 1

    send_in_batches(bootstrap, records(), "ledger-simulate")
    return sent, malformed


# Not on a terminal (a log file, CI), the progress is a line every this many seconds rather
# than a bar redrawn twice a second.
PROGRESS_LINE_SECONDS = 15.0
_progress_lines: dict[str, float] = {}


def _progress(done: int, total: int, started: float, what: str) -> None:
    now = time.monotonic()
    text = f"{what:>9} [{'#' * (40 * done // max(1, total)):.<40}] {done:,}/{total:,} records" \
           f"  {now - started:,.0f} s "  # fmt: skip
    if sys.stderr.isatty():
        sys.stderr.write(f"\r{text}")
    else:
        last, final = _progress_lines.get(what), done >= total
        if last == float("inf"):  # its last line is written
            return
        if final or last is None or now - last >= PROGRESS_LINE_SECONDS:
            sys.stderr.write(f"{text}\n")
            _progress_lines[what] = float("inf") if final else now
    sys.stderr.flush()


def _check_services(home: Any) -> None:
    alive = services.running(home)
    for service in SERVICES:
        if service.name not in alive:
            sys.stderr.write("\n")
            raise LedgerError(
                f"the {service.name} service stopped: see {home / 'logs' / service.name}.log"
            )


def _wait_decided(
    home: Any, dsn: str, bootstrap: str, purchases: list[str], refunds: list[str]
) -> float:
    """Until every command sent is decided (the workers' group has committed all of
    ledger.commands: a worker acknowledges a batch once its facts and states are written) and
    projected (the writer's stored offsets reach the end of ledger.events as it was then); then
    every purchase and refund is looked up once. Offsets are a few rows to read: looking the ids
    up at every poll (3.5 million of them at scale 1) took a core from the ledger it waited for."""
    from kafka import KafkaConsumer

    started = time.monotonic()
    deadline = started + max(DECIDE_SECONDS_MAX, len(purchases) / DECIDE_RATE_MIN)
    consumer = KafkaConsumer(**consumer_config(bootstrap, "ledger-demo-wait", APP_ID))
    try:
        sent = end_offsets(consumer, topics.COMMANDS)
        facts: dict[int, int] | None = None  # ledger.events' end once every command is decided
        with queries.open_demo_db(dsn) as db:
            while time.monotonic() < deadline:
                decided = {tp.partition: consumer.committed(tp) or 0 for tp in sent}
                if facts is None and all(decided[tp.partition] >= end for tp, end in sent.items()):
                    facts = {tp.partition: end for tp, end in
                             end_offsets(consumer, topics.EVENTS).items()}  # fmt: skip
                stored = queries.stored_offsets(db, topics.EVENTS)
                _progress(sum(decided.values()), sum(sent.values()), started, "decided")
                if facts is not None:
                    _progress(sum(min(stored.get(p, 0), e) for p, e in facts.items()),
                              sum(facts.values()), started, "projected")  # fmt: skip
                    if all(stored.get(p, 0) >= end for p, end in facts.items()):
                        sys.stderr.write("\n")
                        return _all_projected(db, purchases, refunds, started)
                _check_services(home)
                time.sleep(WAIT_POLL_SECONDS)
    finally:
        consumer.close()
    raise LedgerError("the purchases were not all decided in time: see .ledger/logs/")


def _all_projected(db: Any, purchases: list[str], refunds: list[str], started: float) -> float:
    done = queries.projected_count(db, purchases, refunds)
    if done != len(purchases) + len(refunds):
        raise LedgerError(
            f"every command is decided and every fact projected, but {done:,} of the"
            f" {len(purchases) + len(refunds):,} purchases and refunds sent are in the"
            " projection: see .ledger/logs/ and run ledger reconcile"
        )
    return time.monotonic() - started


def _close_all(dsn: str, bootstrap: str, partitions: int, purchases: int) -> list[tuple[str, str]]:
    with queries.open_demo_db(dsn) as db:
        open_periods = queries.unsealed_periods(db, ISP_IDS)
    with LedgerProducer(bootstrap, partitions, client_id="ledger-demo-close") as producer:
        from datetime import UTC, datetime

        for isp_id, period in open_periods:
            command_id = f"demo-close-{isp_id}-{period}-{int(time.time())}"
            for command in close_commands(isp_id, period, partitions, command_id,
                                          datetime.now(UTC)):  # fmt: skip
                producer.send_command(command)
        producer.flush()
    # Sealing reads every money fact of a period and writes its invoices: at scale 1, the half
    # year's 35 periods took ~6.7 minutes in one writer batch (issue 13).
    deadline = time.monotonic() + max(SEAL_SECONDS_MAX, purchases / SEAL_RATE_MIN)
    with queries.open_demo_db(dsn) as db:
        while time.monotonic() < deadline:
            if queries.sealed_count(db, open_periods) == len(open_periods):
                return open_periods
            time.sleep(0.5)
    raise LedgerError("the periods were not all sealed in time: see .ledger/logs/")


def _euros(cents: Any) -> str:
    return f"{int(cents or 0) / 100:>14,.2f} EUR"


def summary(dsn: str) -> str:
    publishers = [r.publisher_id for r in simulate.reference() if hasattr(r, "publisher_id")]
    read = queries.figures(dsn, ISP_IDS, publishers)
    revenue, authorized = read.revenue_cents, read.authorized
    lines = [
        f"transactions decided   {read.decided:>14,}",
        f"authorized             {authorized:>14,}",
        f"revenue incl. VAT      {_euros(revenue)}  (refunded {read.refunded_cents / 100:,.2f})",
        f"average basket         {_euros((revenue or 0) / max(1, authorized))}",
        "", "rejections by reason",
    ]  # fmt: skip
    for reason, count in read.rejections:
        lines.append(f"  {reason:28} {count:>8,}")
    lines += ["", "invoices per ISP (sealed periods)",
              f"  {'isp':14} {'period':8} {'invoices':>9} {'excl. VAT':>14} {'VAT':>12}"
              f" {'incl. VAT':>14} {'commission':>12}"]  # fmt: skip
    for isp, period, invoices, net, vat, gross, commission in read.invoices:
        money = f"{net / 100:>14,.2f} {vat / 100:>12,.2f} {gross / 100:>14,.2f}"
        lines.append(f"  {isp:14} {period:8} {invoices:>9,} {money} {commission / 100:>12,.2f}")
    lines += ["", "top publishers (owed, all periods)"]
    for publisher, purchases, owed in read.top_publishers:
        lines.append(f"  {publisher:28} {purchases:>8,} purchases {_euros(owed)}")
    return "\n".join(lines)


CHECKOUT_URL = "http://127.0.0.1:18080"
CHECKOUT_READY_SECONDS = 60.0


def _checkout_with_consent(workload: simulate.Workload, admin_key: str) -> list[str]:
    """One payment through the checkout with consent (issue 14), as a subscriber's browser does it
    (ledger.api.client), and a second one left prepared for the reader to confirm in a browser:
    each ISP gets its signing secret, a demo publisher its key, one subscriber credentials."""
    from ledger.api.client import Checkout, CheckoutFailed
    from schemas.commands import AccountOpenRequested

    checkout = Checkout(CHECKOUT_URL)

    def admin(path: str, body: dict[str, Any]) -> dict[str, Any]:
        deadline = time.monotonic() + CHECKOUT_READY_SECONDS
        while True:
            try:
                status, answer = checkout.call("POST", path, body, admin_key)
            except OSError:
                status, answer = 0, {}
            if status == 201:
                return answer
            if time.monotonic() > deadline:
                raise LedgerError(f"the checkout API answered {status} to {path}: {answer}")
            time.sleep(0.5)

    for isp in sorted(r.isp_id for r in workload.reference if isinstance(r, IspRegistered)):
        admin(f"/v1/admin/isps/{isp}/secret", {})
    publisher = admin("/v1/admin/publishers", {
        "publisher_id": "demo-vod", "name": "Démo VOD", "category": "vod",
        "revenue_share_bp": 6000, "vat_category": "standard"})  # fmt: skip
    opened = next(c for c in workload.setup
                  if isinstance(c, AccountOpenRequested) and c.kind == "consumer")  # fmt: skip
    login = admin(f"/v1/admin/accounts/{opened.account_id}/credentials", {"user_id": "u1"})
    payment = {"amount_cents": 299, "category": "vod", "description": "La Haine (1995)"}
    try:
        bought = checkout.buy(publisher["api_key"], payment, opened.isp_id, login["login"],
                              login["password"], "demo-1", wait_seconds=60)  # fmt: skip
    except CheckoutFailed as failed:
        raise LedgerError(f"the checkout with consent failed: {failed}") from None
    held = _held_and_captured(checkout, publisher["api_key"], opened.isp_id, login)
    status, left = checkout.prepare(publisher["api_key"], payment, "demo-2")
    decision = bought["decision"]
    return [
        "checkout with consent (prepare, the page, the ISP's sign-in, confirm):",
        f"  {bought['payment_id']} of {opened.account_id} at {opened.isp_id}:"
        f" {decision['status']} {decision.get('reason') or ''}".rstrip(),
        f"  a held payment: {held}",
        f"  try one in a browser: {left.get('confirm_url', status)}",
        f"  pick {opened.isp_id}, sign in as {login['login']} / {login['password']}",
    ]


def _held_and_captured(checkout: Any, key: str, isp_id: str, login: dict[str, Any]) -> str:
    """A payment held at confirmation (5.00 EUR for an hour), then captured in part (3.00 EUR):
    only the captured part is billed, the rest is released."""
    from ledger.api.client import CheckoutFailed

    body = {"amount_cents": 500, "category": "vod", "description": "Location 48 h",
            "capture": "hold", "hold_seconds": 3600}  # fmt: skip
    status, prepared = checkout.prepare(key, body, "demo-hold")
    if status != 201:
        raise LedgerError(f"preparing a held payment answered {status}: {prepared}")
    try:
        confirmed = checkout.confirm(prepared["confirm_url"], isp_id, login["login"],
                                     login["password"])  # fmt: skip
    except CheckoutFailed as failed:
        raise LedgerError(f"the held payment's confirmation failed: {failed}") from None
    deadline = time.monotonic() + CHECKOUT_READY_SECONDS
    while True:  # 202 while the hold is not decided yet: the same capture again
        status, captured = checkout.capture(key, prepared["payment_id"], 300)
        if status != 202 or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    if status != 200:
        raise LedgerError(f"capturing the held payment answered {status}: {captured}")
    amount = int(captured["purchase"]["amount_cents"])
    return (f"{prepared['payment_id']} {confirmed.outcome.get('status')} 5.00 EUR, captured"
            f" {amount / 100:.2f} EUR (the rest released)")  # fmt: skip


def run(
    bootstrap: str, dsn: str, partitions: int, home: Any, shape: simulate.Scale,
    admin_key: str | None = None,
) -> None:  # fmt: skip
    for service in SERVICES:
        pid = services.start(home, service)
        print(f"started {service.name:16} pid {pid}")
    workload = simulate.generate(shape)
    purchases = sorted({c.purchase_id for m in workload.months for c in m
                        if isinstance(c, PurchaseRequested)})  # fmt: skip
    refunds = sorted({c.refund_id for m in workload.months for c in m
                      if isinstance(c, RefundRequested)})  # fmt: skip
    started = time.monotonic()
    sent, malformed = _send(bootstrap, partitions, workload)
    print(f"simulated {shape.months} month(s) at scale {shape.scale} (seed {shape.seed}):"
          f" {sent:,} commands and {malformed} malformed messages sent in"
          f" {time.monotonic() - started:.1f} s")  # fmt: skip
    seconds = _wait_decided(home, dsn, bootstrap, purchases, refunds)
    print(f"{len(purchases) + len(refunds):,} purchases and refunds decided and projected in"
          f" {seconds:.1f} s")  # fmt: skip
    closed = _close_all(dsn, bootstrap, partitions, len(purchases))
    print(f"sealed {len(closed)} billing periods: "
          + ", ".join(f"{isp} {period}" for isp, period in closed))  # fmt: skip
    print()
    print(summary(dsn))
    print()
    if admin_key is not None:
        print("\n".join(_checkout_with_consent(workload, admin_key)))
        print()
    for service in SERVICES:
        print(f"{service.name:16} {service.url}")
    print("ISP credentials:  .venv/bin/ledger isp-access --isp orange")
    print("books:            .venv/bin/ledger reconcile")
    print("stop everything:  .venv/bin/ledger stack down")
