"""A test's own world of reference data: ids of its own, so that its balances and invoices are
its alone on a stack shared with other tests."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

from ledger.core.reference import Reference
from schemas.reference import IspRegistered, PublisherRegistered

T0 = datetime(2006, 3, 1, 9, tzinfo=UTC)


class World:
    """Reference data of one test, with ids of its own so that its balances are its alone."""

    def __init__(self) -> None:
        run = uuid.uuid4().hex[:8]
        self.run = run
        self.isp = IspRegistered(
            isp_id=f"isp-{run}", name="Orange", billing_day=1, commission_bp=1500, occurred_at=T0
        )
        self.vod = PublisherRegistered(
            publisher_id=f"vod-{run}",
            name="Canalplay",
            category="vod",
            revenue_share_bp=6000,
            vat_category="standard",
            occurred_at=T0,
        )
        self.press = PublisherRegistered(
            publisher_id=f"press-{run}",
            name="Le Monde",
            category="press_archive",
            revenue_share_bp=7000,
            vat_category="press_online",
            occurred_at=T0,
        )
        self.shady = PublisherRegistered(
            publisher_id=f"shady-{run}",
            name="Shady",
            category="games",
            revenue_share_bp=5000,
            vat_category="standard",
            occurred_at=T0,
            blocked=True,
        )
        self.records = [self.isp, self.vod, self.press, self.shady]
        self.reference = Reference.of(self.records)

    def account(self, name: str) -> str:
        return f"{name}-{self.run}"
