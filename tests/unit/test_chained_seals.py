"""Issue 15, parts 3 and 4, in the pure core: credit notes for refunds of sealed invoices, numbers
without gaps, and the chained period seal, whose bytes are recomputed here from
docs/design/seals.md alone (with the standard library's json and hashlib, not the billing code)
and pinned by a golden digest."""

from __future__ import annotations

import hashlib
import json
from datetime import datetime

from ledger.core import billing
from ledger.core.runner import LocalAuthorizer
from schemas.commands import Command
from schemas.facts import MoneyFact, PurchaseAuthorized, PurchaseRefunded
from tests import builders as b

MARCH = "2006-03"
APRIL = "2006-04"
APRIL_3 = datetime(2006, 4, 3, 9, 30, tzinfo=b.T0.tzinfo)


def _facts() -> list[MoneyFact]:
    """March: two accounts buy; March is closed; April: a purchase, a refund of a March purchase
    (its invoice sealed: a credit note) and a refund of an April purchase (a line)."""
    ledger = LocalAuthorizer(b.REFERENCE)
    commands: list[Command] = [
        b.open_account("home", when=b.T0),
        b.open_account("acme", kind="enterprise", when=b.T0),
        b.authorise("acme", "e1", b.T0),
        b.purchase("home", 500, b.at(5), purchase_id="m1", description="film \u00e9t\u00e9"),
        b.purchase("home", 300, b.at(6), purchase_id="m2", publisher_id="lemonde-archives"),
        b.purchase("acme", 1_000, b.at(7), purchase_id="m3", user_id="e1"),
        b.close("orange", MARCH, APRIL_3.replace(day=1, hour=1)),
        b.purchase("home", 700, APRIL_3, purchase_id="a1"),
        b.refund("home", "m1", 200, b.at(10, base=APRIL_3), refund_id="r-m1"),
        b.refund("acme", "m3", 1_000, b.at(11, base=APRIL_3), refund_id="r-m3"),
        b.refund("home", "a1", 100, b.at(12, base=APRIL_3), refund_id="r-a1"),
    ]
    facts = [f for n, c in enumerate(commands, 1) for f in ledger.handle(c, origin=n)]
    return [f for f in facts if isinstance(f, PurchaseAuthorized | PurchaseRefunded)]


def _of(facts: list[MoneyFact], period: str) -> list[MoneyFact]:
    return [f for f in facts if f.billing_period == period]


def _seal_march_and_april() -> tuple[billing.PeriodBilling, dict[str, int], str,
                                     billing.PeriodBilling, dict[str, int], str]:  # fmt: skip
    facts = _facts()
    march = billing.bill_period("orange", MARCH, _of(facts, MARCH))
    march_numbers = billing.numbered(1, march.invoices, march.credit_notes)
    march_seal = billing.chained_period_seal(
        billing.GENESIS_SEAL, march.summary, march.invoices, march.credit_notes,
        march.statements, march_numbers,
    )  # fmt: skip
    wanted = billing.corrected_purchases(_of(facts, APRIL), {MARCH})
    corrections = billing.corrections_from(
        "orange", wanted, {i.invoice_id: i for i in march.invoices}, march_numbers
    )
    rates = billing.purchase_vat_rates(_of(facts, MARCH))
    april = billing.bill_period("orange", APRIL, _of(facts, APRIL), rates, corrections)
    april_numbers = billing.numbered(1 + len(march_numbers), april.invoices, april.credit_notes)
    april_seal = billing.chained_period_seal(
        march_seal, april.summary, april.invoices, april.credit_notes, april.statements,
        april_numbers,
    )  # fmt: skip
    return march, march_numbers, march_seal, april, april_numbers, april_seal


def test_a_refund_of_a_sealed_invoice_is_a_credit_note_naming_its_invoice_and_line() -> None:
    march, march_numbers, _, april, april_numbers, _ = _seal_march_and_april()
    assert march_numbers == {"orange.2006-03.acme": 1, "orange.2006-03.home": 2}
    # April's invoice keeps its own refund as a line; March's refunds are on credit notes.
    (invoice,) = april.invoices
    assert [(x.kind, x.gross_cents) for x in invoice.lines] == [("purchase", 700), ("refund", -100)]
    notes = {n.credit_note_id: n for n in april.credit_notes}
    assert sorted(notes) == [
        "orange.2006-04.acme.credit.2006-03",
        "orange.2006-04.home.credit.2006-03",
    ]
    home = notes["orange.2006-04.home.credit.2006-03"]
    assert (home.corrects_invoice_id, home.corrects_invoice_number) == ("orange.2006-03.home", 2)
    march_home = next(i for i in march.invoices if i.account_id == "home")
    m1_line = next(n for n, x in enumerate(march_home.lines, 1) if x.purchase_id == "m1")
    assert [(x.refund_id, x.gross_cents, x.corrects_line_no) for x in home.lines] == [
        ("r-m1", -200, m1_line)
    ]
    assert notes["orange.2006-04.acme.credit.2006-03"].gross_cents == -1_000
    # The numbers go on from March's, invoices then credit notes, without a gap.
    assert april_numbers == {
        "orange.2006-04.home": 3,
        "orange.2006-04.acme.credit.2006-03": 4,
        "orange.2006-04.home.credit.2006-03": 5,
    }
    # The totals show the invoices and the credit notes apart; the statements count both.
    s = april.summary
    assert (s.invoices, s.gross_cents) == (1, 600)
    assert (s.credit_notes, s.credit_notes_gross_cents) == (2, -1_200)
    assert sum(st.gross_cents for st in april.statements) == 600 - 1_200
    assert s.owed_to_platform_cents == 600 - 1_200 - s.commission_cents


def test_without_a_sealed_invoice_a_refund_stays_a_line_as_before() -> None:
    facts = _facts()
    rates = billing.purchase_vat_rates(_of(facts, MARCH))
    april = billing.bill_period("orange", APRIL, _of(facts, APRIL), rates)
    assert april.credit_notes == [] and april.summary.credit_notes == 0
    assert sorted(x.gross_cents for i in april.invoices for x in i.lines) == [
        -1_000,
        -200,
        -100,
        700,
    ]


# --- the documented bytes (docs/design/seals.md), without the billing code ----------------------


def _j(value: object) -> bytes:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode()


def _sha(header: list[object], records: list[object]) -> str:
    data = _j(header) + b"".join(b"\n" + _j(r) for r in records)
    return hashlib.sha256(data).hexdigest()


def _line(x: billing.InvoiceLine | billing.CreditNoteLine) -> dict[str, object]:
    keys = ["event_id", "kind", "purchase_id", "refund_id", "user_id", "publisher_id",
            "description", "occurred_at", "vat_rate_bp", "net_cents", "vat_cents", "gross_cents",
            "late_for_period"]  # fmt: skip
    if isinstance(x, billing.CreditNoteLine):
        keys = ["event_id", "refund_id", "purchase_id", *keys[4:], "corrects_line_no"]
    return {k: getattr(x, k) for k in keys}


def test_every_seal_is_the_documented_bytes() -> None:
    march, march_numbers, march_seal, april, april_numbers, april_seal = _seal_march_and_april()
    for invoice in april.invoices + march.invoices:
        assert invoice.seal == _sha(
            [invoice.isp_id, invoice.period, invoice.account_id],
            [_line(x) for x in invoice.lines],
        )
    for note in april.credit_notes:
        assert note.seal == _sha(
            ["credit_note", note.credit_note_id, note.corrects_invoice_id,
             str(note.corrects_invoice_number)],
            [_line(x) for x in note.lines],
        )  # fmt: skip
    for billed, numbers, prev, sealed in (
        (march, march_numbers, "0" * 64, march_seal),
        (april, april_numbers, march_seal, april_seal),
    ):
        s = billed.summary
        header = ["ledger.period_seal.v2", prev, s.isp_id, s.period] + [
            str(v) for v in (s.invoices, s.net_cents, s.vat_cents, s.gross_cents, s.credit_notes,
                             s.credit_notes_net_cents, s.credit_notes_vat_cents,
                             s.credit_notes_gross_cents, s.commission_cents,
                             s.owed_to_platform_cents)
        ]  # fmt: skip
        parts: list[object] = [
            ["invoice", i.invoice_id, numbers[i.invoice_id], i.seal]
            for i in sorted(billed.invoices, key=lambda i: i.invoice_id)
        ]
        parts += [
            ["credit_note", n.credit_note_id, numbers[n.credit_note_id], n.seal]
            for n in sorted(billed.credit_notes, key=lambda n: n.credit_note_id)
        ]
        parts += [["statement", st.statement_id, None, st.seal]
                  for st in sorted(billed.statements, key=lambda st: st.statement_id)]  # fmt: skip
        assert sealed == _sha(header, parts)


# The seals of the example above, as docs/design/seals.md gives them: a change that moves one
# byte of what is hashed fails here.
GOLDEN_MARCH = "a26771ccfae326fbfd1860763a041eb049068d1b33924b753c065376f3cdc974"
GOLDEN_APRIL = "8e58377cbbb586c11620459abab3aa1ca48129b0f52d5c9b2ff87ecec49e1f22"


def test_the_chain_is_pinned() -> None:
    _, _, march_seal, _, _, april_seal = _seal_march_and_april()
    assert (march_seal, april_seal) == (GOLDEN_MARCH, GOLDEN_APRIL)


def test_a_changed_cent_or_previous_seal_changes_the_seal() -> None:
    march, numbers, march_seal, *_ = _seal_march_and_april()
    s = march.summary
    forged = billing.IspSummary(**{**s.__dict__, "gross_cents": s.gross_cents + 1})
    args = (march.invoices, march.credit_notes, march.statements, numbers)
    assert billing.chained_period_seal(billing.GENESIS_SEAL, forged, *args) != march_seal
    assert billing.chained_period_seal("1" * 64, s, *args) != march_seal
    renumbered = {k: v + 1 for k, v in numbers.items()}
    assert (
        billing.chained_period_seal(
            billing.GENESIS_SEAL,
            s,
            march.invoices,
            march.credit_notes,
            march.statements,
            renumbered,
        )
        != march_seal
    )
