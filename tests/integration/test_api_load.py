"""The checkout and ISP APIs under load on the real stack (issue 16 part 9, ledger.bench.load):
overloaded, the API sheds with 429 and 503, each with a Retry-After and a JSON error body, and
every confirm it accepted has its command on ledger.commands and its fact on ledger.events;
under a light load nothing is shed."""

from __future__ import annotations

from ledger.api.admission import Limits
from ledger.bench import load
from ledger.settings import load_settings
from ledger.stack.state import StackState


def _run(stack: StackState, clients: int, limits: Limits) -> load.LoadFigures:
    assert stack.kafka is not None and stack.postgres is not None
    return load.run(load_settings(), stack.kafka.bootstrap_servers, stack.postgres.dsn,
                    clients=clients, seconds=8, limits=limits, accounts=4)  # fmt: skip


def _shed_properly(figures: load.LoadFigures) -> None:
    assert figures.shed_without_retry_after == 0 and figures.shed_without_json == 0
    assert not {s for r in figures.routes.values() for s in r.statuses if s.startswith("5")} - {
        "503"
    }, figures.routes  # shed, never a 500
    assert figures.accepted > 0
    assert figures.commands_found == figures.accepted
    assert figures.facts_found == figures.accepted


def test_overload_is_shed_with_retry_after_and_nothing_accepted_is_lost(stack: StackState) -> None:
    # One request at a time with 1 ms of queue, no per-key limit: 30 clients overload
    # the in-flight bound (503). Apart, 5 requests/s for the publisher's key: 10 clients overload
    # the key's rate (429). In one run the 429s' Retry-After thinned the clients out so much
    # that the in-flight bound was never reached (CI, fd3bb70).
    crowded = _run(stack, 30, Limits(max_in_flight=1, queue_wait_seconds=0.001,
                                     key_rate=0))  # fmt: skip
    assert crowded.shed.get("503", 0) > 0, crowded.routes
    _shed_properly(crowded)
    throttled = _run(stack, 10, Limits(key_rate=5, key_burst=2))
    assert throttled.shed.get("429", 0) > 0, throttled.routes
    _shed_properly(throttled)


def test_a_light_load_is_not_shed_and_every_accepted_payment_is_decided(
    stack: StackState,
) -> None:
    figures = _run(stack, 3, Limits())
    assert figures.shed == {"429": 0, "503": 0}, figures.routes
    assert figures.client_errors == {}
    assert figures.accepted > 0 and figures.accepted_pending == 0
    assert figures.commands_found == figures.facts_found == figures.accepted
    assert figures.routes["GET /v1/isps/{id}/periods"].statuses == {
        "200": figures.routes["GET /v1/isps/{id}/periods"].requests
    }
