"""`ledger status` turns what it read into one screen (pure)."""

from __future__ import annotations

import pytest

from ledger.status import LastDecision, OpenHolds, PartitionLag, PeriodState, Status, render


def _status() -> Status:
    return Status(
        read_at="2026-11-26T10:00:00+00:00",
        lags=[
            PartitionLag("workers", "ledger.commands", 0, 120, 100),
            PartitionLag("workers", "ledger.commands", 1, 7, None),
            PartitionLag("projections", "ledger.events", 0, 90, 90),
        ],
        commands_per_second=12.5,
        facts_per_second=11.0,
        last_decision=LastDecision(
            "2026-11-26T09:59:57+00:00", 3.2, "p1", "a1", "vod-01", 266, "velocity_exceeded"
        ),
        dead_letters=2,
        last_dead_letter_reason="malformed_json",
        periods=[
            PeriodState("orange", "2006-01", "closed", 2650, 737_573, 1261),
            PeriodState("orange", "2006-02", "open", 12, 3_192, None),
        ],
        services={"worker-w1": 41},
    )


def test_lag_is_what_is_left_to_read_and_a_partition_never_read_lags_by_all_of_it() -> None:
    lags = _status().lags
    assert [lag.lag for lag in lags] == [20, 7, 0]
    assert _status().as_json()["lags"][1]["lag"] == 7


def test_the_screen_names_lag_totals_dead_letters_the_last_decision_and_periods() -> None:
    screen = render(_status())
    assert "12.5 commands/s in, 11.0 facts/s out" in screen
    assert "purchase p1 2.66 € by a1 at vod-01: velocity_exceeded" in screen
    assert "(3 s ago)" in screen
    assert "dead letters: 2 (last: malformed_json)  <- look at ledger.dlq" in screen
    assert "workers      ledger.commands       1          7          -        7" in screen
    assert "total lag: workers 27, projections 0" in screen
    assert (
        "orange           2006-01  closed      2,650 purchases     7 375.73 € bought, 1261 invoices"
        in screen
    )
    assert "2006-02  open" in screen
    assert "worker-w1 (pid 41)" in screen


def test_the_screen_shows_the_open_holds_of_each_isp() -> None:
    status = _status()
    status.holds = [
        OpenHolds("orange", 3, 4_500, "2026-11-26T09:00:00+00:00", "2026-11-26T10:00:00+00:00")
    ]
    screen = render(status)
    assert "open holds (held payments not captured, voided or expired):" in screen
    assert (
        "orange                  3 holds        45.00 € held, oldest 2026-11-26T09:00:00+00:00,"
        " next expiry 2026-11-26T10:00:00+00:00" in screen
    )
    assert status.as_json()["holds"][0]["held_cents"] == 4_500
    assert "open holds" in render(Status(read_at="now")) and "  none" in render(Status("now"))


def test_an_empty_ledger_says_so_instead_of_failing() -> None:
    screen = render(Status(read_at="now"))
    assert "last decision: none on ledger.events" in screen
    assert "dead letters: 0" in screen and "look at" not in screen
    assert "none yet" in screen


def test_the_demo_progress_is_a_line_now_and_then_when_not_on_a_terminal(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """In a log file the bar is not redrawn twice a second (the half year's log held 1,900 of
    them on one line): a line every PROGRESS_LINE_SECONDS, and the last one once."""
    from ledger import demo

    monkeypatch.setattr(demo, "_progress_lines", {})
    clock = iter([0.0, 1.0, 20.0, 21.0, 22.0, 23.0])
    monkeypatch.setattr(demo.time, "monotonic", lambda: next(clock))
    for done in (10, 20, 30, 40, 100, 100):
        demo._progress(done, 100, 0.0, "decided")
    lines = capsys.readouterr().err.splitlines()
    assert [line.split("]")[1].split(" records")[0].strip() for line in lines] == [
        "10/100", "30/100", "100/100",
    ]  # fmt: skip
    assert all("\r" not in line for line in lines)
